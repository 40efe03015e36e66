"""benchmarks/gpu_check.py is run once, on a lent GPU, with minutes to spare: a broken step there
costs a whole GPU session. Its CPU ``--quick`` mode runs the same code paths at toy sizes; this
checks that the training, train and evaluate steps run to the end and report every row (no
timing)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_training_train_and_evaluate_steps_run_on_the_cpu(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "OMP_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
        "RBMRG_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("OUT", None)
    command = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick", "--no-save"]
    done = subprocess.run(
        [*command, "--steps", "training", "train", "evaluate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "failed" not in output, output
    for replicas in (1, 2):
        for loop in ("bare", "lightning"):
            assert f"| CD-3 updates/s, {loop} loop, {replicas} replica(s) | " in output, output
    assert "x the time of one filter |" in output, output
    assert "| train.py, whole process | " in output and "last epoch measured: 3 |" in output, output
    assert "| evaluate.py, 2000 configurations, whole process | " in output, output
