"""Resuming a killed run gives exactly the run that was never killed, and a bad resume fails early.

``kill -9`` mid-epoch, then ``ckpt_path=<run>/checkpoints/last.ckpt`` with the same ``hydra.run.dir``:
the final filter equals, weight by weight (``torch.equal``), that of an uninterrupted run with the same
seed, and every logger holds the whole history once (csv rows, TensorBoard scalars, one wandb run id).
A checkpoint that is missing, truncated, not a training checkpoint, or trained with other settings is
refused with an error naming ``ckpt_path`` before any Monte Carlo sampling.
"""

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf, open_dict
from test_train import TINY, compose_train

from rbmrg import runs
from rbmrg.checkpoint import load_rbm, save_filter
from rbmrg.training import run as training
from rbmrg.training.persistence import WANDB_ID_FILE

ROOT = Path(__file__).resolve().parents[1]
#: Three epochs of 20 updates, last.ckpt every 7 updates, step metrics every 5 updates (so the killed
#: runs below log rows after their last checkpoint, which the resumed run logs again).
RESUMABLE = [*TINY, "trainer.max_epochs=3", "callbacks.step_checkpoint.every_n_train_steps=7"]


class SigkillAt(pl.Callback):
    """``kill -9`` of its own process at the start of update ``at_step`` (nothing runs after it)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if pl_module.updates == self.at_step:  # CD updates, several per training step
            os.kill(os.getpid(), signal.SIGKILL)


class KillAtEpochEnd(pl.Callback):
    """Stops the run with an error in the end of epoch ``epoch`` (1-based), before its checkpoint."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 == self.epoch:
            raise RuntimeError(f"killed at the end of epoch {self.epoch}")


def weights(run: Path) -> dict[str, torch.Tensor]:
    """The filter and Adam's moments in ``run``'s last.ckpt."""
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    (adam,) = checkpoint["optimizer_states"]
    moments = adam["state"][0]
    return {
        "rbm.weight": checkpoint["state_dict"]["rbm.weight"],
        "exp_avg": moments["exp_avg"],
        "exp_avg_sq": moments["exp_avg_sq"],
        "global_step": torch.tensor(checkpoint["global_step"]),
        "updates": torch.tensor(checkpoint["cd_updates"]),
    }


def assert_identical(run: Path, reference: Path) -> None:
    got, want = weights(run), weights(reference)
    for name in want:
        assert torch.equal(got[name], want[name]), name
    history = (run / "mcrg_history.csv").read_text()
    assert history == (reference / "mcrg_history.csv").read_text()


def read_rows(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def train_py(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        WANDB_MODE="offline",
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )
    command = [sys.executable, str(ROOT / "train.py"), *overrides, f"data.data_dir={tmp_path}/data"]
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.parametrize("updates_per_step, saved_at", [(1, 42), (4, 44)])
def test_kill_9_mid_epoch_then_resume_in_place_is_bit_identical(
    tmp_path, updates_per_step, saved_at
):
    """With one update per training step, and with chunks of 4 (then last.ckpt is written at the end
    of the chunk that passes update 42)."""
    overrides = [*RESUMABLE, "logger=csv", f"data.updates_per_step={updates_per_step}"]
    reference, run = tmp_path / "reference", tmp_path / "run"
    uninterrupted = train_py(tmp_path, *overrides, f"hydra.run.dir={reference}")
    killed = train_py(
        tmp_path,
        *overrides,
        f"hydra.run.dir={run}",
        f"+callbacks.kill._target_={__name__}.SigkillAt",
        "+callbacks.kill.at_step=48",  # mid epoch 3; last.ckpt holds update 42
    )
    for process in (uninterrupted, killed):
        process.communicate(timeout=600)
    assert uninterrupted.returncode == 0
    assert killed.returncode == -signal.SIGKILL
    assert int(weights(run)["updates"]) == saved_at
    config_before = (run / ".hydra" / "config.yaml").read_bytes()

    resumed = train_py(
        tmp_path, *overrides, f"hydra.run.dir={run}", f"ckpt_path={run}/checkpoints/last.ckpt"
    )
    _, stderr = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, stderr[-3000:]
    assert_identical(run, reference)  # filter, Adam's moments, update count, MCRG history
    assert read_rows(run / "csv" / "metrics.csv") == read_rows(reference / "csv" / "metrics.csv")
    # The first start's config is kept; the resume's own is beside it.
    assert (run / ".hydra" / "config.yaml").read_bytes() == config_before
    resume_overrides = OmegaConf.load(run / ".hydra" / "resume-1" / "overrides.yaml")
    assert f"ckpt_path={run}/checkpoints/last.ckpt" in resume_overrides
    events = [json.loads(line)["event"] for line in (run / runs.MARKER).open()]
    assert events == ["start", "resume"]


def crash_and_resume_in_place(
    tmp_path: Path, overrides: list[str], kill: dict | None = None, last_step: int = 21
) -> tuple[Path, Path]:
    """An uninterrupted run, and one that crashes (by default at update 28) and is resumed in place
    from its last.ckpt, which holds ``last_step`` updates."""
    kill = kill or {"_target_": "test_train.Kill", "at_step": 27}
    cfg = compose_train(tmp_path, overrides, run="reference")
    training.train(cfg)
    cfg = compose_train(tmp_path, overrides, run="run")
    with open_dict(cfg):
        cfg.callbacks.kill = kill
    with pytest.raises(RuntimeError, match="killed at"):
        training.train(cfg)
    assert int(weights(tmp_path / "run")["global_step"]) == last_step
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    training.train(compose_train(tmp_path, [*overrides, f"ckpt_path={ckpt}"], run="run"))
    return tmp_path / "run", tmp_path / "reference"


@pytest.mark.parametrize(
    "every, kill, last_step",
    [
        # last.ckpt is the epoch-1 checkpoint: the resumed epoch 2 must shuffle as epoch 2.
        (50, {"_target_": "test_train.Kill", "at_step": 27}, 20),
        # Killed in epoch 2's end (MCRG), before its checkpoint: last.ckpt must be a step one
        # from inside the epoch (35), not the one after its last update, which Lightning would
        # resume as a finished epoch.
        (5, {"_target_": f"{__name__}.KillAtEpochEnd", "epoch": 2}, 35),
    ],
    ids=["after_an_epoch_checkpoint", "during_an_epoch_end"],
)
def test_resume_in_place_is_bit_identical_wherever_the_run_died(tmp_path, every, kill, last_step):
    overrides = [*RESUMABLE, "logger=csv", f"callbacks.step_checkpoint.every_n_train_steps={every}"]
    run, reference = crash_and_resume_in_place(tmp_path, overrides, kill, last_step)
    assert_identical(run, reference)
    assert read_rows(run / "csv" / "metrics.csv") == read_rows(reference / "csv" / "metrics.csv")


def test_resume_in_place_keeps_the_csv_rows_torch_backend_with_persistent_chains(tmp_path):
    overrides = [*RESUMABLE, "logger=csv", "model.backend=torch", "model.persistent=true"]
    run, reference = crash_and_resume_in_place(tmp_path, overrides)
    assert_identical(run, reference)
    rows = read_rows(run / "csv" / "metrics.csv")
    assert rows == read_rows(reference / "csv" / "metrics.csv")  # no row lost, none twice
    assert [int(r["step"]) for r in rows if r["train/lr"]] == list(range(4, 60, 5))
    assert not (run / "csv" / "metrics.csv.before-resume").exists()


@pytest.mark.parametrize("backend", ["torch", "numba"])
def test_resume_of_two_replicas_with_persistent_chains_is_bit_identical(tmp_path, backend):
    """model.n_replicas=2: both filters, their Adam moments, their persistent chains' updates and
    the per-replica MCRG history continue bit for bit (grouped torch path; numba once per replica)."""
    overrides = [
        *RESUMABLE,
        "logger=csv",
        "model.n_replicas=2",
        f"model.backend={backend}",
        "model.persistent=true",
    ]
    run, reference = crash_and_resume_in_place(tmp_path, overrides)
    assert_identical(run, reference)
    assert weights(run)["rbm.weight"].shape == (2, 4, 4)
    assert "replica" in (run / "mcrg_history.csv").read_text().splitlines()[0]


def test_resume_in_place_continues_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, reference = crash_and_resume_in_place(tmp_path, [*RESUMABLE, "logger=tensorboard"])
    assert_identical(run, reference)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # appended

    def scalars(directory: Path) -> list[tuple[int, float]]:
        events = EventAccumulator(str(directory / "tensorboard"))  # reads every event file
        events.Reload()
        return [(e.step, e.value) for e in events.Scalars("train/free_energy_gap")]

    # The crashed run's update 25 (after its checkpoint) is hidden: each step appears once.
    assert scalars(run) == scalars(reference)


def test_resume_in_place_continues_the_wandb_run(tmp_path):
    run, reference = crash_and_resume_in_place(tmp_path, [*RESUMABLE, "logger=wandb"])
    assert_identical(run, reference)
    run_id = (run / WANDB_ID_FILE).read_text().strip()
    pieces = sorted((run / "wandb").glob("offline-run-*"))
    assert len(pieces) == 2 and all(p.name.endswith(f"-{run_id}") for p in pieces)
    history = pieces[-1] / "files" / "mcrg_history.csv"
    assert history.read_text() == (reference / "mcrg_history.csv").read_text()
    assert (reference / WANDB_ID_FILE).read_text().strip() != run_id  # a new run, a new id


# -------------------------------------------------------------------------------------------------
# Resumes that must fail before sampling


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("trained")
    training.train(compose_train(tmp_path, [*TINY, "logger=none", "trainer.max_epochs=1"]))
    return tmp_path / "run" / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(
    "case, overrides, message",
    [
        ("missing", [], "no such file"),
        ("truncated", [], "damaged torch checkpoint"),
        ("filter", [], "not a Lightning training checkpoint"),
        ("fits", ["model.filter_size=2"], r"model.filter_size=2 here, 4 in the checkpoint"),
        ("fits", ["data.n_train=400"], r"data.n_train=400 here, 200 in the checkpoint"),
    ],
)
def test_a_bad_resume_fails_before_sampling(tmp_path, checkpoint, case, overrides, message):
    path = {"missing": tmp_path / "nothing.ckpt", "fits": checkpoint}.get(case)
    if case == "truncated":
        path = tmp_path / "truncated.ckpt"
        path.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    if case == "filter":
        path = save_filter(tmp_path / "filter.pt", load_rbm(checkpoint))
    cfg = compose_train(tmp_path, [*TINY, "logger=none", *overrides, f"ckpt_path={path}"])
    with pytest.raises((ValueError, FileNotFoundError), match=message) as error:
        training.train(cfg)
    assert f"ckpt_path={path}" in str(error.value)
    assert not (tmp_path / "data").exists()  # no Monte Carlo sampling was started
