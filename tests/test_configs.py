"""Every Hydra config composes and its objects instantiate (without sampling or training)."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import open_dict

from rbmrg.training.callbacks import MCRGCallback
from rbmrg.training.data import IsingDataModule
from rbmrg.training.module import RBMModule
from rbmrg.training.schedules import Schedule

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def compose_train(overrides, tmp_path, cwd=None):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
        cfg.hydra.runtime.cwd = str(cwd or tmp_path)
    HydraConfig.instance().set_config(cfg)
    return cfg


def build(cfg):
    """What train.py builds before fitting."""
    model = instantiate(cfg.model, schedule=instantiate(cfg.schedule))
    model.check_lattice(cfg.data.L)
    data = instantiate(cfg.data)
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
    if cfg.get("mcrg"):
        callbacks.append(instantiate(cfg.mcrg))
    logger = instantiate(cfg.logger) if cfg.get("logger") else False
    trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    return model, data, callbacks, logger, trainer


def test_there_are_experiments():
    assert {"paper", "smoke", "sweep_filter_schedule"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    cfg = compose_train([f"experiment={experiment}"], tmp_path)
    model, data, callbacks, _, trainer = build(cfg)
    assert isinstance(model, RBMModule) and isinstance(model.schedule, Schedule)
    assert isinstance(data, IsingDataModule) and data.train_set is None  # nothing sampled yet
    assert any(isinstance(c, MCRGCallback) for c in callbacks)
    assert isinstance(trainer, pl.Trainer)


def test_defaults_are_the_paper(tmp_path):
    defaults = compose_train([], tmp_path)
    paper = compose_train(["experiment=paper"], tmp_path)
    for key in ("data", "model", "schedule", "mcrg", "trainer"):
        assert defaults[key] == paper[key], key
    assert (defaults.data.L, defaults.data.n_train, defaults.data.n_val) == (32, 10_000, 50_000)
    assert (defaults.model.filter_size, defaults.model.cd_k, defaults.data.batch_size) == (8, 3, 10)
    assert (defaults.schedule.lr, defaults.schedule.lr_final) == (1e-3, 1e-4)
    assert defaults.schedule.decay_epochs == 25 and defaults.trainer.max_epochs == 50


def test_sweep_experiment_is_a_multirun_over_filter_size_and_schedule(tmp_path):
    cfg = compose_train(["experiment=sweep_filter_schedule"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = cfg.hydra.sweeper.params
    assert set(params) == {"model.filter_size", "schedule"}
    assert params.schedule == "sqrt_interp,sqrt_decay"


@pytest.mark.parametrize(
    "group, option",
    [
        ("schedule", "constant"),
        ("schedule", "sqrt_decay"),
        ("schedule", "sqrt_interp"),
        ("schedule", "exponential"),
        ("logger", "wandb"),
        ("logger", "csv"),
        ("logger", "tensorboard"),
        ("logger", "none"),
        ("trainer", "cpu"),
        ("trainer", "ddp"),
        ("callbacks", "none"),
        ("mcrg", "none"),
    ]
    + ([("trainer", "gpu")] if torch.cuda.is_available() else []),
)
def test_group_options_instantiate(group, option, tmp_path):
    cfg = compose_train(["experiment=smoke", f"{group}={option}"], tmp_path)
    build(cfg)


@pytest.mark.parametrize("launcher", ["parallel", "slurm", "joblib", "submitit_slurm"])
def test_launcher_configs_compose(launcher, tmp_path):
    cfg = compose_train([f"hydra/launcher={launcher}"], tmp_path)
    assert "Launcher" in cfg.hydra.launcher._target_
    if launcher == "parallel":
        assert cfg.hydra.launcher.n_jobs == 2


def test_data_cache_is_shared_outside_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("RBMRG_DATA_DIR", raising=False)
    cfg = compose_train([], tmp_path / "outputs" / "run", cwd=tmp_path)
    assert cfg.data.data_dir == str(tmp_path / "data")
    monkeypatch.setenv("RBMRG_DATA_DIR", "/scratch/ising")
    assert cfg.data.data_dir == "/scratch/ising"
    assert cfg.hydra.job.chdir is False
