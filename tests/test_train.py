"""Training end to end on a tiny lattice: wandb offline, multirun sweep, resume, bad settings.

``rbmrg.training.run.train`` is called directly with a composed config (what ``python train.py`` runs);
the sweep test starts ``train.py`` itself. Every run writes under tmp_path (outputs, wandb, sample
cache), never into the repository. Resuming after a kill: tests/test_resume.py.
"""

import csv
import math
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

from rbmrg import runs
from rbmrg.checkpoint import load_rbm
from rbmrg.training import run as training

ROOT = Path(__file__).resolve().parents[1]

#: 8x8 lattice, 200 + 400 configurations, 4x4 filter, 2 epochs of 20 updates: a few seconds.
TINY = [
    "experiment=smoke",
    "data.L=8",
    "data.n_train=200",
    "data.n_val=400",
    "data.n_chains=20",
    "data.n_thermalize=20",
    "data.progress=false",
    "model.filter_size=4",
    "mcrg.n_blocks=20",
    "mcrg.n_rg_steps=1",  # 8 -> 4: a second step would leave a 2x2 level (refused)
    "data.updates_per_step=1",  # one update per training step: kills and checks at any update
    "trainer.max_epochs=2",
    "trainer.log_every_n_steps=5",
    "optimized_metric=mcrg/y_t/nr1_nc3",  # N_c > 3 do not fit the 4x4 block lattice
]


#: TINY for mcrg=none, which leaves no mcrg.n_rg_steps to set (nor a metric to optimise).
NO_MCRG = [o for o in TINY if not o.startswith(("optimized_metric", "mcrg.n_rg_steps"))]


def compose_train(tmp_path: Path, overrides: list[str], run: str = "run", hydra_settings=None):
    """The composed train config as `python train.py <overrides>` would see it, rooted in tmp_path."""
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / run)
        cfg.hydra.runtime.cwd = str(tmp_path)
        cfg.hydra.job.num = 0
        for key, value in (hydra_settings or {}).items():
            OmegaConf.update(cfg.hydra, key, value)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        cfg.output_dir = str(tmp_path / run)
        cfg.data.data_dir = str(tmp_path / "data")
        del cfg.hydra
    return cfg


def last_checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)


def read_history(path: Path) -> list[dict]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_short_run_with_wandb_offline_writes_history_figures_and_checkpoints(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "logger=wandb"])
    metrics, objects = training.train(cfg)
    y_t = metrics["mcrg/y_t/nr1_nc3"]
    assert 0.5 < y_t < 1.5  # y_t at N_r = 1, N_c = 3 after 40 updates: rough, but physical
    # The sweeper minimises the distance from the exact value, not y_t itself.
    assert training.get_metric_value(metrics, cfg.optimized_metric, 1.0) == abs(y_t - 1.0)
    assert isinstance(objects["trainer"], pl.Trainer)
    run = tmp_path / "run"
    (offline,) = (run / "wandb").glob("offline-run-*")
    history = read_history(offline / "files" / "mcrg_history.csv")
    assert sorted({int(row["epoch"]) for row in history}) == [1, 2]
    assert all(math.isfinite(float(row["y_t"])) for row in history if row["n_c"] in "123")
    images = offline / "files" / "media" / "images"
    assert len(list((images / "filters").glob("*.png"))) == 2  # one filter image per epoch
    assert len(list((images / "figures").glob("*.png"))) == 2  # Fig. 1 panel, Fig. 2
    for name in ("fig1_filters.png", "fig2_yt_vs_step.png", "filters/epoch_002.png"):
        assert (run / name).stat().st_size > 1000
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["epoch_000.ckpt", "epoch_001.ckpt", "last.ckpt"]
    rbm = load_rbm(run / "checkpoints" / "last.ckpt")
    assert rbm.filter_size == 4 and rbm.stride == 2


@pytest.mark.parametrize("logger", ["csv", "tensorboard", "none"])
def test_other_loggers(tmp_path, logger):
    cfg = compose_train(tmp_path, [*TINY, f"logger={logger}", "trainer.max_epochs=1"])
    training.train(cfg)
    run = tmp_path / "run"
    assert (run / "mcrg_history.csv").exists()
    if logger == "csv":
        metrics = read_history(run / "csv" / "metrics.csv")
        keys = set(metrics[0])
        assert {"train/free_energy_gap", "train/lr", "mcrg/y_t/nr1_nc1"} <= keys
    if logger == "tensorboard":
        assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_multirun_sweep_gives_each_job_its_directory_and_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    env = dict(
        os.environ,
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        RBMRG_DATA_DIR=str(tmp_path / "data"),
        OMP_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
    )
    overrides = [o for o in TINY if not o.startswith("trainer.max_epochs")]
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        *overrides,
        "data.data_dir=" + str(tmp_path / "data"),
        "trainer.max_epochs=1",
        "model.filter_size=2,4",
        "logger=wandb",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    for job, filter_size in ((0, 2), (1, 4)):
        history = read_history(sweep / str(job) / "mcrg_history.csv")
        assert [row["epoch"] for row in history if row["n_c"] == "1"] == ["1"]
        assert len(list((sweep / str(job) / "wandb").glob("offline-run-*"))) == 1
        ckpt = last_checkpoint(sweep / str(job))
        assert ckpt["hyper_parameters"]["filter_size"] == filter_size
    assert (tmp_path / "data").is_dir()  # the jobs shared one sample cache


def test_multirun_names_and_groups_wandb_runs_by_sweep(tmp_path):
    settings = {
        "mode": "MULTIRUN",
        "runtime.output_dir": str(tmp_path / "my_sweep" / "0"),
        "job.override_dirname": "model.filter_size=4",
    }
    cfg = compose_train(tmp_path, [*TINY, "logger=wandb"], hydra_settings=settings)
    logger = training.tracking_config(cfg.logger)
    assert logger.group == "my_sweep"
    assert logger.name == "model.filter_size=4"
    assert logger.offline is True


class Kill(pl.Callback):
    """Stops the run with an error at the start of update ``at_step`` (a crash mid-epoch)."""

    def __init__(self, at_step: int):
        self.at_step = at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            raise RuntimeError(f"killed at step {self.at_step}")


class RecordBatches(pl.Callback):
    """Appends a fingerprint of every minibatch that completed an update to a text file."""

    def __init__(self, path: str):
        self.path = path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        weights = torch.arange(1, batch[0].numel() + 1, dtype=torch.float64).view_as(batch[0])
        fingerprint = float((batch[0].double() * weights).sum())
        with open(self.path, "a") as handle:
            handle.write(f"{fingerprint}\n")


def test_resume_after_a_crash_mid_epoch_keeps_step_count_and_history(tmp_path):
    overrides = [
        *TINY,
        "mcrg.background=false",  # epoch 1 measured before the crash (test_background: otherwise)
        "logger=csv",
        "trainer.max_epochs=3",
        "callbacks.step_checkpoint.every_n_train_steps=5",
    ]
    record = {"_target_": f"{__name__}.RecordBatches", "path": str(tmp_path / "batches.txt")}
    # The reference: the same run, uninterrupted.
    cfg = compose_train(tmp_path, overrides, run="reference")
    with open_dict(cfg):
        cfg.callbacks.record = {**record, "path": str(tmp_path / "reference_batches.txt")}
    training.train(cfg)
    # 20 updates an epoch; the run dies at the start of update 35 (mid epoch 2, after the step-35
    # checkpoint of last.ckpt), then resumes from last.ckpt in a new directory.
    cfg = compose_train(tmp_path, overrides, run="crashed")
    with open_dict(cfg):
        cfg.callbacks.kill = {"_target_": f"{__name__}.Kill", "at_step": 35}
        cfg.callbacks.record = record
    with pytest.raises(RuntimeError, match="killed at step 35"):
        training.train(cfg)
    crashed = last_checkpoint(tmp_path / "crashed")
    assert crashed["global_step"] == 35
    assert [row["epoch"] for row in crashed["callbacks"]["MCRGCallback"]["history"]][-1] == 1

    cfg = compose_train(
        tmp_path, [*overrides, f"ckpt_path={tmp_path / 'crashed/checkpoints/last.ckpt'}"], "resumed"
    )
    with open_dict(cfg):
        cfg.callbacks.record = record
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*dataloader is not resumable.*")
        training.train(cfg)
    # The resumed run continues the interrupted epoch's shuffle exactly where it stopped: the
    # minibatches of crashed + resumed are those of the uninterrupted run, in the same order.
    assert (tmp_path / "batches.txt").read_text() == (
        tmp_path / "reference_batches.txt"
    ).read_text()
    resumed = last_checkpoint(tmp_path / "resumed")
    assert resumed["global_step"] == 3 * 20  # the same number of updates as an uninterrupted run
    history = read_history(tmp_path / "resumed" / "mcrg_history.csv")
    epochs = [int(row["epoch"]) for row in history if row["n_r"] == "1" and row["n_c"] == "1"]
    assert epochs == [1, 2, 3]
    steps = [int(row["step"]) for row in history if row["n_r"] == "1" and row["n_c"] == "1"]
    assert steps == [20, 40, 60]
    before = read_history(tmp_path / "crashed" / "mcrg_history.csv")
    assert history[: len(before)] == before  # epoch 1 carried over, not recomputed


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.filter_size=16", r"filter_size=16 is larger than the lattice (data\.)?L=8"),
        ("model.stride=3", r"L=8 is not divisible by (the stride |model\.stride=)3"),
        ("model.cd_k=0", "cd_k=0"),
        ("schedule.lr=0", "schedule.lr=0"),
        ("schedule.lr=-1e-3", "schedule.lr=-0.001"),
    ],
)
def test_bad_settings_fail_before_sampling(tmp_path, override, message):
    cfg = compose_train(tmp_path, [*TINY, override, "logger=none"])
    with pytest.raises(Exception, match=message):
        training.train(cfg)
    assert not (tmp_path / "data").exists()  # no Monte Carlo sampling was started


def test_a_fresh_run_does_not_overwrite_an_earlier_run(tmp_path):
    cfg = compose_train(tmp_path, [*TINY, "logger=csv", "trainer.max_epochs=1"])
    training.train(cfg)
    run = tmp_path / "run"
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    cfg = compose_train(tmp_path, [*TINY, "logger=csv", "trainer.max_epochs=1", "seed=5"])
    with pytest.raises(runs.RunDirError, match=r"hydra.run.dir=.*run already holds a run started"):
        training.train(cfg)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_callbacks_none_runs_with_experiment_settings_for_them(tmp_path):
    """experiment=smoke sets callbacks.step_checkpoint.* even when callbacks=none switches them off."""
    cfg = compose_train(tmp_path, [*TINY, "logger=none", "callbacks=none", "trainer.max_epochs=1"])
    assert "_target_" not in cfg.callbacks.step_checkpoint  # what used to reach the Trainer
    metrics, objects = training.train(cfg)
    assert math.isfinite(metrics["mcrg/y_t/nr1_nc3"])
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "mcrg_history.csv").exists()


def test_mcrg_none_returns_nothing_to_a_sweeper(tmp_path):
    cfg = compose_train(tmp_path, [*NO_MCRG, "logger=none", "mcrg=none", "trainer.max_epochs=1"])
    metrics, _ = training.train(cfg)
    assert cfg.optimized_metric is None
    assert training.get_metric_value(metrics, cfg.optimized_metric, cfg.optimized_target) is None
    assert not (tmp_path / "run" / "mcrg_history.csv").exists()


def test_metric_value_for_a_sweeper():
    metrics = {"mcrg/y_t/nr1_nc7": 0.97, "train/free_energy_gap_epoch": -2.0}
    assert training.get_metric_value(metrics, "mcrg/y_t/nr1_nc7", 1.0) == pytest.approx(0.03)
    assert training.get_metric_value(metrics, "mcrg/y_t/nr1_nc7", None) == 0.97
    assert training.get_metric_value(metrics, None, 1.0) is None
    assert math.isnan(
        training.get_metric_value(metrics, "mcrg/y_t/nr2_nc7", 1.0)
    )  # NaN: not logged
    with pytest.raises(KeyError, match="optimized_metric=train/nothing was not logged"):
        training.get_metric_value(metrics, "train/nothing", 1.0)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optimized_metric=mcrg/yt/nr1_nc7"], "optimized_metric=mcrg/yt/nr1_nc7: MCRG logs"),
        (["optimized_metric=mcrg/y_t/nr3_nc7"], "N_c must be 1..7 and N_r 1..mcrg.n_rg_steps=1"),
        (["mcrg=none", "optimized_metric=mcrg/y_t/nr1_nc7"], "needs MCRG, which mcrg=none"),
    ],
)
def test_a_sweeper_metric_that_cannot_come_fails_before_sampling(tmp_path, overrides, message):
    tiny = NO_MCRG if "mcrg=none" in overrides else TINY
    cfg = compose_train(tmp_path, [*tiny, "logger=none", *overrides])
    with pytest.raises(ValueError, match=message):
        training.train(cfg)
    assert not (tmp_path / "data").exists()
