"""Train the RG weight factor of Chung & Kao by CD-k and follow y_t by MCRG (Hydra entry point).

    python train.py                                   # the paper's setup (conf/train.yaml)
    python train.py experiment=smoke                  # end to end in under a minute
    python train.py -m model.filter_size=4,8 schedule=constant,sqrt_decay   # a sweep
    python train.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt  # resume

Returns ``optimized_metric`` (y_t at N_r = 1, N_c = 7 by default) for Hydra sweepers.
See docs/training.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
import wandb
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict


def train(cfg: DictConfig) -> float | None:
    """Seed, build everything from ``cfg``, check it, fit; return ``cfg.optimized_metric``."""
    try:
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        pl.seed_everything(cfg.seed, workers=True)
        # Bad settings fail here, naming the setting, before any Monte Carlo sampling starts.
        _refuse_to_overwrite(cfg)
        datamodule = instantiate(
            cfg.data
        )  # checks the lattice and sampler settings, samples nothing
        model = instantiate(cfg.model, schedule=instantiate(cfg.schedule))
        model.check_lattice(cfg.data.L)
        callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values()]
        if cfg.get("mcrg"):
            callbacks.append(instantiate(cfg.mcrg))
        logger = instantiate(_tracking(cfg.logger)) if cfg.get("logger") else False
        trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
        if logger:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
        value = trainer.callback_metrics.get(cfg.get("optimized_metric"))
        return None if value is None else float(value)
    finally:
        wandb.finish()  # every multirun job is its own wandb run, even after an error


def _refuse_to_overwrite(cfg: DictConfig) -> None:
    """A fresh run must not write its checkpoints over those of an earlier run in the same directory."""
    checkpoints = Path(cfg.output_dir) / "checkpoints"
    if not cfg.get("ckpt_path") and checkpoints.is_dir() and any(checkpoints.glob("*.ckpt")):
        raise FileExistsError(
            f"output_dir={cfg.output_dir} already holds checkpoints of an earlier run: choose another "
            "hydra.run.dir, or resume that run with ckpt_path=<its last.ckpt>"
        )


def _tracking(logger: DictConfig) -> DictConfig:
    """wandb: offline unless asked otherwise; in a multirun, group by sweep and name by overrides."""
    if not str(logger.get("_target_", "")).endswith("WandbLogger"):
        return logger
    logger = logger.copy()
    with open_dict(logger):
        if os.environ.get("WANDB_MODE") == "online":
            logger.offline = False  # an explicit WANDB_MODE=online wins over the offline default
        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            job = HydraConfig.get().job
            logger.group = logger.group or Path(HydraConfig.get().sweep.dir).name
            logger.name = logger.name or job.override_dirname or f"job{job.num}"
    return logger


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    return train(cfg)


if __name__ == "__main__":
    main()
