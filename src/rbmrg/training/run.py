"""Training as an importable function: ``train(cfg) -> (metric_dict, object_dict)``.

``train.py`` is only the Hydra wrapper around :func:`train`; tests and notebooks call it directly with
a composed config. The order of work is what makes a run safe to start:

1. hold the output directory (:func:`rbmrg.runs.hold_output_dir`): a directory that holds another run
   is refused, unless this run resumes it in place;
2. check every setting and the checkpoint to resume from, so a bad setting or a checkpoint that does
   not fit fails with a ValueError naming it (``model.persistent='maybe'``) *before* any Monte Carlo
   sampling: :func:`check_settings` (the settings no constructor owns), :func:`check_checkpoint`,
   :func:`check_optimized_metric`, the constructors of data module, model and callbacks (each checks
   its own settings), the MCRG plan against the data (:meth:`MCRGCallback.plan`) and the memory the
   sample sets need (:func:`check_memory`);
3. seed, build data module, model, callbacks, logger and trainer with ``hydra.utils.instantiate``
   (a setting refused by a constructor comes out as that constructor's ValueError, not Hydra's
   wrapper);
4. fit, and hand back the trainer's final metrics.

:func:`task_wrapper` closes the loggers whatever happens (``wandb.finish()``, so every multirun job is
its own wandb run, also after an error). :func:`get_metric_value` turns the metrics into the number a
sweeper minimises: the distance of ``optimized_metric`` from its exact value ``optimized_target``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from rbmrg import checks, runs
from rbmrg.checkpoint import read_checkpoint
from rbmrg.training.callbacks import MCRGCallback
from rbmrg.training.persistence import (
    AtomicCheckpointIO,
    FlushLoggersAtCheckpoint,
    wandb_run_id,
)

log = logging.getLogger(__name__)

#: Data settings that may differ on a resume: they change where or how visibly samples are made,
#: not which samples the run trains on.
DATA_SETTINGS_FREE_ON_RESUME = frozenset({"data_dir", "progress", "device"})
_MCRG_KEY = re.compile(r"mcrg/(y_t|y_h|y_t_err|y_h_err)/nr(\d+)_nc(\d+)$")


def task_wrapper(task: Callable[[DictConfig], Any]) -> Callable[[DictConfig], Any]:
    """Run ``task(cfg)`` and always close the loggers afterwards, marking wandb runs that failed."""

    @functools.wraps(task)
    def wrapped(cfg: DictConfig) -> Any:
        failed = True
        try:
            result = task(cfg)
            failed = False
            return result
        finally:
            wandb = sys.modules.get("wandb")  # imported only where a wandb logger was built
            if wandb is not None and getattr(wandb, "run", None) is not None:
                wandb.finish(exit_code=1 if failed else 0)

    return wrapped


@task_wrapper
def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit the RBM described by ``cfg`` (conf/train.yaml); return (final metrics, built objects).

    ``cfg.output_dir`` is this run's directory and ``cfg.ckpt_path`` an optional checkpoint to resume
    from; a checkpoint inside ``output_dir`` resumes the run in place (its loggers continue).
    """
    output_dir = Path(cfg.output_dir)
    ckpt_path = cfg.get("ckpt_path")
    claim = runs.hold_output_dir(output_dir, resume_from=ckpt_path, setting=_dir_setting())
    try:
        # Everything below up to `fit` samples nothing: bad settings fail here, naming the setting.
        check_settings(cfg)
        if cfg.get("threads") is not None:
            torch.set_num_threads(int(cfg.threads))
        checkpoint = check_checkpoint(cfg)
        check_optimized_metric(cfg)
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = build(cfg.data)  # checks the lattice, sampler and cache settings
        model = build(cfg.model, schedule=build(cfg.schedule))
        model.check_lattice(cfg.data.L, cfg.data.dim)
        callbacks = [*instantiate_callbacks(cfg), FlushLoggersAtCheckpoint()]
        for callback in callbacks:
            if isinstance(callback, MCRGCallback):  # N_r, jackknife blocks, n_samples vs the data
                callback.plan(model.rbm, cfg.data.L, cfg.data.n_val, cfg.data.n_chains)
        logger = instantiate_logger(cfg, checkpoint, continue_run=claim.resumed)
        trainer = build(
            cfg.trainer,
            callbacks=callbacks,
            logger=logger or False,
            plugins=[AtomicCheckpointIO()],
        )
        check_backend(cfg.model, cfg.data.dim, trainer.strategy.root_device)
        check_memory(cfg.data, trainer.strategy.root_device, trainer.num_devices)
        if logger:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        metric_dict = {name: float(value) for name, value in trainer.callback_metrics.items()}
        object_dict = {
            "cfg": cfg,
            "datamodule": datamodule,
            "model": model,
            "callbacks": callbacks,
            "logger": logger,
            "trainer": trainer,
        }
        return metric_dict, object_dict
    finally:
        runs.release(claim)


def get_metric_value(
    metric_dict: Mapping[str, float], metric_name: str | None, target: float | None = None
) -> float | None:
    """What a sweeper minimises: ``|metric - target|`` (the metric itself if ``target`` is None).

    None if ``metric_name`` is None. An MCRG exponent that could not be measured (NaN, so not
    logged: e.g. N_c = 7 on a tiny lattice) gives NaN; any other missing metric is an error.
    """
    if not metric_name:
        return None
    if metric_name not in metric_dict:
        if _MCRG_KEY.match(metric_name):
            log.warning(f"optimized_metric={metric_name} could not be measured: returning NaN")
            return math.nan
        raise KeyError(
            f"optimized_metric={metric_name} was not logged; logged: {sorted(metric_dict)}"
        )
    value = float(metric_dict[metric_name])
    return value if target is None else abs(value - float(target))


# -------------------------------------------------------------------------------------------------
# Checks made before any sampling


def check_settings(cfg: DictConfig) -> None:
    """The settings that no constructor checks: ``seed``, ``threads``, ``trainer.max_epochs``, and
    the model's ``persistent`` flag and Adam ``betas`` (checked here, before the model is built)."""
    checks.integer("seed", cfg.get("seed"), 0, 2**32 - 1)  # what numpy's seed accepts
    if cfg.get("threads") is not None:
        checks.integer("threads", cfg.threads, 1)
    # Lightning reads -1 as "forever" and 0 as "no training": neither is a run.
    checks.integer("trainer.max_epochs", cfg.trainer.get("max_epochs"), 1)
    checks.flag("model.persistent", cfg.model.get("persistent", False))
    betas = cfg.model.get("betas", (0.9, 0.999))
    values = list(betas) if isinstance(betas, ListConfig | list | tuple) else [betas]
    if len(values) != 2 or not all(
        isinstance(beta, int | float) and not isinstance(beta, bool) and 0 <= beta < 1
        for beta in values
    ):
        raise ValueError(
            f"model.betas={values if len(values) > 1 else betas!r}: Adam's (beta1, beta2) must be "
            "two numbers in [0, 1)"
        )


def check_backend(model: DictConfig, dim: int, training_device: torch.device) -> None:
    """``model.backend=numba`` (the fused CD kernel) needs a 2D lattice and CPU training: refused
    here, not at the first update after sampling (``auto`` picks torch where numba cannot run)."""
    backend = model.get("backend", "torch")
    if backend == "numba" and (int(dim) != 2 or training_device.type != "cpu"):
        raise ValueError(
            f"model.backend={backend!r}: the fused CD kernel runs on 2D lattices on the CPU only, "
            f"here data.dim={dim} on {training_device}; use model.backend=auto or torch"
        )


def sample_set_bytes(data: DictConfig, training_device: torch.device) -> dict[str, int]:
    """Bytes the sample sets of ``data`` hold, by where they lie: ``{"host": ..., "device": ...}``.

    Both sets are kept as int8 spins, ``(n_train + n_val) L^d`` bytes, and the training set is
    copied once more as float32 onto the training device, ``4 n_train L^d`` bytes (on the host when
    training on the CPU). A lower bound: loading a cached set checks it with short-lived copies.
    """
    sites = int(data.L) ** int(data.dim)
    spins = (int(data.n_train) + int(data.n_val)) * sites
    copy = 4 * int(data.n_train) * sites
    if training_device.type == "cpu":
        return {"host": spins + copy, "device": 0}
    return {"host": spins, "device": copy}


def available_memory() -> int | None:
    """Bytes of memory this process can still get: MemAvailable (``/proc/meminfo``, else
    ``os.sysconf``), lowered to the free part of a cgroup v2 limit (a SLURM job's, a container's);
    None where the platform tells neither."""
    available = None
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            available = min(available, int(limit) - used)
    except (OSError, ValueError):
        pass
    return available


def check_memory(data: DictConfig, training_device: torch.device, processes: int = 1) -> None:
    """Refuse, naming ``data.L`` and the figure, sample sets that cannot fit in memory.

    ``processes`` is the number of training processes on this machine (DDP: each holds both sets).
    Skipped, with a note, where the platform does not tell the available memory.
    """
    need = sample_set_bytes(data, training_device)
    host = need["host"] * max(1, int(processes))
    what = (
        f"(data.n_train={data.n_train} + data.n_val={data.n_val}) x {data.L}^{data.dim} int8 "
        f"spins plus a float32 copy of the training set on {training_device}"
    )
    available = available_memory()
    if available is None:
        log.info(f"memory check skipped (the platform does not tell available memory): {what}")
    elif host > available:
        raise ValueError(
            f"data.L={data.L}: the sample sets need at least {_gib(host)} of memory, {what}"
            f"{f' in each of {processes} processes' if processes > 1 else ''}, more than the "
            f"{_gib(available)} available on this machine; lower data.L, data.n_train or data.n_val"
        )
    if need["device"] and training_device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(training_device)
        if need["device"] > free:
            raise ValueError(
                f"data.L={data.L}: the float32 training set needs {_gib(need['device'])} on "
                f"{training_device}, more than its {_gib(free)} free; lower data.L or data.n_train"
            )


def _gib(n_bytes: int) -> str:
    return f"{n_bytes / 2**30:.1f} GiB"


def check_checkpoint(cfg: DictConfig) -> dict[str, Any] | None:
    """Read ``cfg.ckpt_path`` and check it fits ``cfg``; None without a checkpoint.

    Raises FileNotFoundError or ValueError naming ``ckpt_path`` (and the mismatching settings) for a
    missing, truncated or foreign file, or one trained with other model or data settings, which
    would otherwise fail or silently mix two setups after the data had been sampled.
    """
    path = cfg.get("ckpt_path")
    if not path:
        return None
    try:
        content = read_checkpoint(path)  # safe loading; missing, empty, truncated: ValueError
    except FileNotFoundError as error:
        raise FileNotFoundError(f"ckpt_path={path}: {error}") from None
    except ValueError as error:
        raise ValueError(f"ckpt_path={path}: {error}") from None
    if not isinstance(content, Mapping) or "state_dict" not in content or "loops" not in content:
        raise ValueError(
            f"ckpt_path={path}: not a Lightning training checkpoint (a plain filter file cannot "
            "resume training; evaluate it with evaluate.py)"
        )
    mismatches = [
        # A checkpoint from before model.n_replicas existed holds one filter.
        *_mismatches(
            "model", cfg.model, {"n_replicas": 1, **(content.get("hyper_parameters") or {})}, ()
        ),
        *_mismatches(
            "data",
            cfg.data,
            content.get("datamodule_hyper_parameters") or {},
            DATA_SETTINGS_FREE_ON_RESUME,
        ),
    ]
    if mismatches:
        raise ValueError(
            f"ckpt_path={path} was trained with other settings than this run asks for: "
            f"{'; '.join(mismatches)}. Resume with the checkpoint's settings, or start a new run"
        )
    return content


def _mismatches(
    group: str, settings: DictConfig, saved: Mapping[str, Any], free: frozenset[str]
) -> list[str]:
    found = []
    for name, wanted in OmegaConf.to_container(settings, resolve=True).items():
        if name.startswith("_") or name in free or name not in saved:
            continue
        if _plain(wanted) != _plain(saved[name]):
            found.append(f"{group}.{name}={wanted!r} here, {saved[name]!r} in the checkpoint")
    return found


def _plain(value: Any) -> Any:
    """Compare lists and tuples, ints and floats by value."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def check_optimized_metric(cfg: DictConfig) -> None:
    """An MCRG ``optimized_metric`` needs MCRG, and an (N_r, N_c) it can measure."""
    name = cfg.get("optimized_metric")
    if not name or not str(name).startswith("mcrg/"):
        return
    match = _MCRG_KEY.match(name)
    if match is None:
        raise ValueError(
            f"optimized_metric={name}: MCRG logs mcrg/<y_t|y_h|y_t_err|y_h_err>/nr<N_r>_nc<N_c>"
        )
    if not _enabled(cfg.get("mcrg")):
        raise ValueError(
            f"optimized_metric={name} needs MCRG, which mcrg=none switches off: set "
            "optimized_metric=null (nothing is returned to a sweeper) or keep MCRG on"
        )
    n_r, n_c = int(match.group(2)), int(match.group(3))
    if not 1 <= n_c <= 7 or not 1 <= n_r <= int(cfg.mcrg.get("n_rg_steps", 1)):
        raise ValueError(
            f"optimized_metric={name}: N_c must be 1..7 and N_r 1..mcrg.n_rg_steps="
            f"{cfg.mcrg.get('n_rg_steps')}"
        )


# -------------------------------------------------------------------------------------------------
# Building


def _enabled(node: Any) -> bool:
    """A config group entry that is switched on: a node with a ``_target_``."""
    return isinstance(node, Mapping | DictConfig) and "_target_" in node


def build(node: Any, **kwargs: Any) -> Any:
    """``instantiate(node, **kwargs)``; a constructor's own error (a ValueError naming the setting)
    comes out as it was raised, not inside Hydra's InstantiationException."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ValueError):
            raise error.__cause__ from None
        raise


def instantiate_callbacks(cfg: DictConfig) -> list[pl.Callback]:
    """``cfg.callbacks`` (each entry with a ``_target_``) plus the MCRG callback ``cfg.mcrg``.

    An entry without ``_target_`` is a group that was switched off (``callbacks=none``,
    ``mcrg=none``) while an experiment still sets some of its fields: it is skipped, with a note.
    """
    callbacks = []
    entries = [(f"callbacks.{name}", node) for name, node in (cfg.get("callbacks") or {}).items()]
    for name, node in [*entries, ("mcrg", cfg.get("mcrg"))]:
        if node is None:
            continue
        if not _enabled(node):
            log.info(f"{name} has no _target_ (its group is switched off): skipped")
            continue
        callbacks.append(build(node))
    return callbacks


def instantiate_logger(
    cfg: DictConfig, checkpoint: Mapping[str, Any] | None, continue_run: bool
) -> pl.loggers.Logger | None:
    """The logger of ``cfg.logger``; ``continue_run``: the run is resumed in place, continue its logs.

    csv keeps the earlier rows of ``metrics.csv``; tensorboard appends to the same directory and hides
    the killed run's events after the checkpoint (``purge_step``); wandb reuses the run id kept in
    ``<output_dir>/wandb_run_id`` with ``resume="allow"``.
    """
    node = cfg.get("logger")
    if not _enabled(node):
        return None
    node = tracking_config(node)
    target = str(node._target_)
    extra: dict[str, Any] = {}
    if target.endswith("WandbLogger"):
        if not node.get("id"):
            extra["id"] = wandb_run_id(cfg.output_dir, continue_run)
        if continue_run:
            extra["resume"] = "allow"
    elif target.endswith("TensorBoardLogger") and continue_run and checkpoint is not None:
        extra["purge_step"] = int(checkpoint["global_step"])
    elif target.endswith("ResumableCSVLogger"):
        extra["continue_run"] = continue_run
    return instantiate(node, **extra)


def tracking_config(logger: DictConfig) -> DictConfig:
    """wandb: offline unless WANDB_MODE=online; in a multirun, group by sweep and name by overrides."""
    if not str(logger.get("_target_", "")).endswith("WandbLogger"):
        return logger
    logger = logger.copy()
    with open_dict(logger):
        if os.environ.get("WANDB_MODE") == "online":
            logger.offline = False  # an explicit WANDB_MODE=online wins over the offline default
        if _multirun():
            hydra_cfg = HydraConfig.get()
            # The job directory is <sweep dir>/<job>: its parent names the sweep (reading
            # hydra.sweep.dir itself would resolve its ${rbmrg.new_dir:...} once more).
            sweep = Path(str(hydra_cfg.runtime.output_dir)).parent.name
            logger.group = logger.group or sweep
            logger.name = logger.name or hydra_cfg.job.override_dirname or f"job{hydra_cfg.job.num}"
    return logger


def _multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _dir_setting() -> str:
    return "hydra.sweep.dir" if _multirun() else "hydra.run.dir"
