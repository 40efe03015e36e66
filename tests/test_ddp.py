"""trainer=ddp really runs: 2 CPU processes (gloo), smoke-sized, launched as a user would.

Every rank trains on its own shard of the minibatches, the gradients are averaged at every CD update,
so the filters stay identical across ranks; MCRG, checkpoints and figures happen once (rank 0); and
the run resumes from its checkpoint.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from rbmrg.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMOKE_DDP = [
    "experiment=smoke",
    "trainer=ddp",
    "trainer.devices=2",
    "trainer.accelerator=cpu",
    "logger=csv",
    "data.progress=false",
    "data.L=8",
    "data.n_train=400",
    "data.n_val=400",
    "model.filter_size=4",
    "trainer.max_epochs=2",
    "mcrg.n_rg_steps=1",
    "optimized_metric=mcrg/y_t/nr1_nc3",
    "+callbacks.ranks._target_=test_ddp.SaveRankWeights",
]


class SaveRankWeights(pl.Callback):
    """Each rank writes its filter, update count and shard fingerprint at the end of every epoch."""

    def on_train_epoch_end(self, trainer, pl_module):
        path = (
            Path(trainer.default_root_dir)
            / f"rank{trainer.global_rank}_epoch{trainer.current_epoch}.pt"
        )
        torch.save(
            {"weight": pl_module.rbm.weight.detach().clone(), "updates": pl_module.updates}, path
        )


def run(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *SMOKE_DDP, *overrides],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_ddp_on_two_cpu_processes_trains_one_filter_and_resumes(tmp_path):
    out = tmp_path / "run"
    done = run(tmp_path, f"hydra.run.dir={out}")
    assert done.returncode == 0, done.stderr[-3000:]
    for epoch in (0, 1):
        ranks = [torch.load(out / f"rank{r}_epoch{epoch}.pt") for r in (0, 1)]
        # 400 configurations / 2 ranks / minibatch 10 = 20 updates an epoch on each rank.
        assert [r["updates"] for r in ranks] == [20 * (epoch + 1)] * 2
        assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    # Rank 0 alone measured and wrote: one history with the 2 epochs, checkpoints of both epochs.
    history = (out / "mcrg_history.csv").read_text().splitlines()
    assert {line.split(",")[0] for line in history[1:]} == {"1", "2"}
    assert {p.name for p in (out / "checkpoints").glob("epoch_*.ckpt")} == {
        "epoch_000.ckpt",
        "epoch_001.ckpt",
    }
    last = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert torch.equal(last["state_dict"]["rbm.weight"], ranks[0]["weight"])

    # Resume in place for a third epoch: the ranks continue from the same filter, in step.
    resumed = run(
        tmp_path,
        f"hydra.run.dir={out}",
        f"ckpt_path={out}/checkpoints/last.ckpt",
        "trainer.max_epochs=3",
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}_epoch2.pt") for r in (0, 1)]
    assert [r["updates"] for r in ranks] == [60, 60]
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    assert not torch.equal(ranks[0]["weight"], last["state_dict"]["rbm.weight"])
