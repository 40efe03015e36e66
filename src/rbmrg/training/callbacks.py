"""Lightning callbacks that watch the physics while the RBM trains.

:class:`MCRGCallback` runs Monte Carlo RG (:func:`rbmrg.rg.mcrg.run_mcrg`) with the current filter on the
data module's held-out configurations (``trainer.datamodule.val_set``, independent of the training
set) after every epoch, logs y_t and y_h with jackknife errors under keys

    mcrg/y_t/nr{N_r}_nc{N_c},  mcrg/y_t_err/nr{N_r}_nc{N_c},  mcrg/y_h/...,  mcrg/y_h_err/...

(plotted against ``mcrg/epoch`` on wandb), keeps the whole history in its state so it survives a
resume, writes it to ``<output_dir>/mcrg_history.csv`` and draws the figures of :mod:`rbmrg.plots`:
the filter every epoch (Fig. 1) and, at the end, y_t against the training step (Fig. 2). A fresh run
(not resumed from a checkpoint) refuses to start in a directory that holds these files of another run.

With R > 1 filters trained side by side (``model.n_replicas``), every filter is measured on the same
held-out configurations with the same random block-spin draws (each replica its own generator,
seeded with ``mcrg.seed``: the filters differ, nothing else), in one pass
(:func:`rbmrg.rg.mcrg.run_mcrg_replicas`). Each replica r is logged as ``mcrg/replica{r}/y_t/...``
(and ``y_t_err``, ``y_h``, ``y_h_err``, its jackknife errors); ``mcrg/y_t/...`` then holds the mean
over replicas, ``mcrg/y_t_spread/...`` their standard deviation (the filter-to-filter spread) and
``mcrg/y_t_err/...`` the standard error of the mean, spread / sqrt(R) (the same for y_h).
``mcrg_history.csv`` gets a ``replica`` column: 0..R-1, and ``mean`` for the rows of the mean (whose
``y_t_err`` is that standard error). The filter image of an epoch shows all R filters side by side;
Fig. 1 and Fig. 2 show replica 0's filters and the mean y_t.

With ``background`` (``mcrg.background``; ``auto``: on for one process training on a GPU)
the measurement runs beside training (:mod:`rbmrg.training.background`): at the end of an epoch
the filter is copied and measured by a worker thread while the next epoch trains, and recorded when
that epoch ends (or training does); it is logged at the logger step of its snapshot (``mcrg/epoch``
names the epoch, as always), and the history and figures are those of an in-line measurement.
Checkpoints hold the snapshot not yet recorded, which a resumed run measures again.

The rules for the ``mcrg.*`` settings are stated once, in :meth:`MCRGCallback.plan`, which
``rbmrg.training.run.train`` calls before any sampling and :meth:`MCRGCallback.measure` calls again
on the set it measures: the jackknife blocks follow :func:`rbmrg.rg.mcrg.check_blocks` and the RG
levels :func:`rbmrg.rg.transforms.level_sizes`, the rules ``evaluate.py`` applies too. An ``N_r`` the
lattice cannot take is refused, never cut.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from rbmrg import checks, plots
from rbmrg.rg.interactions_3d import default_sets
from rbmrg.rg.mcrg import (
    MCRGResult,
    UnfitInteractionsWarning,
    chain_major_batches,
    check_blocks,
    level0_values,
    run_mcrg,
    run_mcrg_replicas,
)
from rbmrg.rg.rbm import ConvRBM, ReplicaRBM
from rbmrg.rg.transforms import RGTransform, level_sizes
from rbmrg.training.background import Background, resolve_background

HISTORY_FIELDS = ("epoch", "step", "n_r", "n_c", "y_t", "y_t_err", "y_h", "y_h_err")
#: The columns with R > 1 replicas: ``replica`` is 0..R-1, or ``mean`` (y_t_err: s.e. over
#: replicas; y_t_spread: their standard deviation, only on the mean rows).
REPLICA_HISTORY_FIELDS = (
    "epoch",
    "step",
    "replica",
    *HISTORY_FIELDS[2:],
    "y_t_spread",
    "y_h_spread",
)
EXPONENTS = ("y_t", "y_h")
#: What this callback writes into its run directory (a fresh run refuses to start over them).
OUTPUTS = ("mcrg_history.csv", "fig1_filters.png", "fig2_yt_vs_step.png", "filters")


class MCRGPlan(NamedTuple):
    """What one MCRG measurement takes from the held-out set: its first ``n_rows`` configurations,
    the whole chains ``n_chains``, and the RG transformation of the current filter."""

    n_chains: int
    n_rows: int
    transform: RGTransform


class MCRGCallback(pl.Callback):
    """Measure y_t and y_h by MCRG with the current filter after every ``every_n_epochs`` epochs.

    Args:
        every_n_epochs: MCRG interval in epochs (the last epoch is always measured).
        n_rg_steps: N_r (paper: 1 and 2); every level must take the filter (refused otherwise).
        n_blocks: jackknife blocks of whole independent chains, ``MIN_BLOCKS`` <= n_blocks <= the
            set's n_chains (:func:`rbmrg.rg.mcrg.check_blocks`).
        n_samples: use only the first ``n_samples`` held-out configurations, a whole number of
            chains and at least ``n_blocks`` of them; None, or at least the set's size, = all.
        batch_size: configurations per MCRG pass (memory only, not the result).
        seed: seed of the RBM's random block spins; the same every epoch so that the epoch-to-epoch
            changes of y_t come from the filter, not from the draw.
        output_dir: run directory for ``mcrg_history.csv`` and the PNG figures (None: the trainer's
            ``default_root_dir``).
        n_cs: N_c values drawn in the Fig. 2 plot (paper: 7).
        panel_epochs: epochs of the Fig. 1 panel; the last epoch is added.
        filter_images: save (and log) the filter as an image every epoch.
        background: measure beside training (true, false, or ``"auto"``; see the module doc).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        n_rg_steps: int = 2,
        n_blocks: int = 20,
        n_samples: int | None = None,
        batch_size: int = 4096,
        seed: int = 1234,
        output_dir: str | None = None,
        n_cs: Sequence[int] = (7,),
        panel_epochs: Sequence[int] = (1, 3, 5),
        filter_images: bool = True,
        background: bool | str = "auto",
    ):
        super().__init__()
        self.every_n_epochs = checks.integer("mcrg.every_n_epochs", every_n_epochs, 1)
        self.n_rg_steps = checks.integer("mcrg.n_rg_steps", n_rg_steps, 1)
        self.n_blocks = checks.integer("mcrg.n_blocks", n_blocks, 1)  # and check_blocks in plan()
        self.n_samples = (
            None if n_samples is None else checks.integer("mcrg.n_samples", n_samples, 1)
        )
        self.batch_size = checks.integer("mcrg.batch_size", batch_size, 1)
        self.seed = checks.integer("mcrg.seed", seed, 0)
        self.output_dir = output_dir
        self.n_cs = tuple(checks.integer("mcrg.n_cs", n, 1) for n in n_cs)
        self.panel_epochs = tuple(checks.integer("mcrg.panel_epochs", e, 1) for e in panel_epochs)
        self.filter_images = checks.flag("mcrg.filter_images", filter_images)
        resolve_background(background, torch.device("cpu"), 1)  # checks the value
        self.background = background
        self._worker: Background | None = None
        #: Snapshots saved in a checkpoint before they were measured (measured after a resume).
        self._unmeasured: list[dict[str, Any]] = []
        self.history: list[dict[str, float]] = []
        self.filters: dict[int, torch.Tensor] = {}  # epoch -> filter (cpu), for the Fig. 1 panel
        # Level-0 interactions of the held-out set: the same every epoch, so measured once per fit
        # (keyed by the set object itself, which the entry keeps alive).
        self._level0: tuple[Any, torch.Tensor] | None = None

    # ---------------------------------------------------------------------------------------------
    # State: the history survives a resume from a checkpoint.

    @property
    def state_key(self) -> str:
        return "MCRGCallback"

    def state_dict(self) -> dict[str, Any]:
        unmeasured = [dict(p.where) for p in self._worker.pending] if self._worker else []
        return {
            "history": [dict(row) for row in self.history],
            "filters": dict(self.filters),
            "unmeasured": unmeasured,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]
        self.filters = {int(k): v for k, v in state_dict.get("filters", {}).items()}
        self._unmeasured = [dict(where) for where in state_dict.get("unmeasured", [])]

    # ---------------------------------------------------------------------------------------------

    def run_dir(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output_dir or trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._level0 = None  # a new fit measures its held-out set afresh
        if trainer.is_global_zero and trainer.ckpt_path is None:
            self._refuse_earlier_outputs(Path(self.output_dir or trainer.default_root_dir))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                # Plot the MCRG curves against the epoch, not against the optimizer step.
                logger.experiment.define_metric("mcrg/epoch")
                logger.experiment.define_metric("mcrg/*", step_metric="mcrg/epoch")
        unmeasured, self._unmeasured = self._unmeasured, []
        for where in unmeasured:  # snapshots a checkpoint saved before they were measured
            self._measure_at(trainer, pl_module, where, in_epoch_end=False)

    def plan(self, rbm: ConvRBM | ReplicaRBM, L: int, n_configs: int, n_chains: int) -> MCRGPlan:
        """Check the ``mcrg.*`` settings against a held-out set of ``n_configs`` configurations from
        ``n_chains`` chains of an L^d lattice and the filter ``rbm``; a ValueError names the setting.

        The one statement of these rules: :func:`rbmrg.training.run.train` calls it with the
        ``data.*`` settings before anything is sampled, :meth:`measure` with the set it measures.
        """
        check_blocks(self.n_blocks, n_chains, ("mcrg.n_blocks", "data.n_chains"))
        per_chain = n_configs // n_chains
        used = n_chains
        if self.n_samples is not None and self.n_samples < n_configs:
            if self.n_samples % per_chain or self.n_samples // per_chain < self.n_blocks:
                raise ValueError(
                    f"mcrg.n_samples={self.n_samples}: MCRG takes whole chains of the held-out "
                    f"set, {per_chain} configurations each (data.n_val={n_configs} / "
                    f"data.n_chains={n_chains}), and at least mcrg.n_blocks={self.n_blocks} of "
                    f"them: use a multiple of {per_chain} from {per_chain * self.n_blocks} up, or "
                    f"null for all {n_configs}"
                )
            used = self.n_samples // per_chain
        # The current filter is reapplied on every level, as in the paper and in evaluate.py.
        # (Replicas share their geometry: the plan is that of replica 0.)
        one = rbm.replica(0) if isinstance(rbm, ReplicaRBM) else rbm
        transform = RGTransform("rbm", one.stride, filters=(one,))
        level_sizes(L, transform, self.n_rg_steps)  # refuses an N_r the lattice cannot take
        return MCRGPlan(used, used * per_chain, transform)

    def measure(self, rbm: ConvRBM, val_set: Any, device: torch.device) -> MCRGResult:
        """MCRG with the filter ``rbm`` (which lives on ``device``) on the chain-major held-out
        set ``val_set``, by the one MCRG driver :func:`rbmrg.rg.mcrg.run_mcrg`."""
        return self.measure_replicas([rbm], val_set, device)[0]

    def measure_replicas(
        self, filters: Sequence[ConvRBM], val_set: Any, device: torch.device
    ) -> list[MCRGResult]:
        """:meth:`measure` for each of ``filters`` on the same configurations, in one pass, each
        with its own generator seeded with ``mcrg.seed`` (the same draws for every filter)."""
        rbm = filters[0]
        spins = val_set.spins
        plan = self.plan(rbm, spins.shape[-1], spins.shape[0], int(val_set.n_chains))
        spins = spins[: plan.n_rows]
        generators = [torch.Generator(device=device).manual_seed(self.seed) for _ in filters]
        replicas = [
            plan.transform.steps(device)
            if index == 0
            else RGTransform("rbm", f.stride, filters=(f,)).steps(device)
            for index, f in enumerate(filters)
        ]
        sets = default_sets(spins.ndim - 1)  # the lattice's own interactions, 2D or 3D
        if self._level0 is None or self._level0[0] is not val_set:
            self._level0 = (val_set, level0_values(spins.to(device), sets, self.batch_size))
        level0 = self._level0[1]

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            start = 0
            chunks = chain_major_batches(spins, plan.n_chains, self.n_blocks, self.batch_size)
            for rows, blocks in chunks:
                cached = level0[start : start + rows.shape[0]]
                start += rows.shape[0]
                yield rows.to(device), blocks.to(device), cached

        with warnings.catch_warnings():
            # Interactions that do not fit the small levels come back as NaN: the same news every
            # epoch, so that one warning is hidden (singular matrices and empty blocks still show).
            warnings.simplefilter("ignore", UnfitInteractionsWarning)
            if len(filters) == 1:
                result = run_mcrg(
                    batches(),
                    replicas[0],
                    self.n_rg_steps,
                    float(plan.transform.scale),
                    n_blocks=self.n_blocks,
                    sets=sets,
                    generator=generators[0],
                )
                return [result]
            return run_mcrg_replicas(
                batches(),
                replicas,
                self.n_rg_steps,
                float(plan.transform.scale),
                n_blocks=self.n_blocks,
                sets=sets,
                generators=generators,
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1  # epochs completed, as in the paper's "epoch 1, 3, 5"
        rbm: ConvRBM | ReplicaRBM = pl_module.rbm
        # All ranks hold the same filter: rank zero measures, logs and writes for everybody.
        if not trainer.is_global_zero:
            return
        self.filters[epoch] = rbm.weight.detach().cpu().clone()
        run_dir = self.run_dir(trainer)
        if self.filter_images:
            self._log_filter(trainer, run_dir, epoch, isinstance(rbm, ReplicaRBM))
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        # CD updates (RBMModule counts them; several per Lightning training step).
        step = int(getattr(pl_module, "updates", trainer.global_step))
        # Lightning logs an epoch's end at the logger step of its last training step.
        where = {"epoch": epoch, "step": step, "log_step": max(trainer.global_step - 1, 0)}
        self._measure_at(trainer, pl_module, {**where, "weight": self.filters[epoch]}, True)

    def _measure_at(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, where: dict, in_epoch_end: bool
    ) -> None:
        """MCRG of the filter ``where["weight"]`` (a snapshot) on the held-out set, now or in the
        worker; recorded as taken at ``where`` (epoch, CD updates, Lightning's step)."""
        val_set = getattr(trainer.datamodule, "val_set", None)
        if val_set is None:
            rank_zero_warn("MCRGCallback: the data module has no val_set; skipping MCRG")
            return
        snapshot = copy.deepcopy(pl_module.rbm)
        with torch.no_grad():
            snapshot.weight.copy_(where["weight"].to(snapshot.weight.device))
        filters = snapshot.replicas() if isinstance(snapshot, ReplicaRBM) else [snapshot]
        if self._worker is None and resolve_background(
            self.background, pl_module.device, trainer.world_size
        ):  # started at the first measurement, stopped when the fit ends
            self._worker = Background(pl_module.device)
        if self._worker is None:
            results = self.measure_replicas(filters, val_set, pl_module.device)
            self._record(trainer, where, results, isinstance(snapshot, ReplicaRBM), in_epoch_end)
            return
        where = {**where, "replicated": isinstance(snapshot, ReplicaRBM)}
        self._worker.submit(where, self.measure_replicas, filters, val_set, pl_module.device)
        # The one before was measured while this epoch trained: recorded now, at a fixed point of
        # the run, so that logs and checkpoints do not depend on how fast the worker was.
        self._record_finished(trainer, keep=1)

    def _record_finished(self, trainer: pl.Trainer, keep: int) -> None:
        for where, results in self._worker.finished(keep):
            self._record(trainer, where, results, where["replicated"], now=False)

    def _record(
        self,
        trainer: pl.Trainer,
        where: dict[str, Any],
        results: Sequence[MCRGResult],
        replicated: bool,
        now: bool,
    ) -> None:
        """History, logs and files of one measurement: logged through the module while the epoch
        ends (``now``), else (from the worker, or after a resume) straight to the loggers at the
        step of its snapshot."""
        epoch, step = int(where["epoch"]), int(where["step"])
        metrics = {"mcrg/epoch": float(epoch)}
        for n_r in range(1, results[0].y["even"].shape[0] + 1):
            for n_c in range(1, results[0].y["even"].shape[1] + 1):
                at = {"epoch": epoch, "step": step, "n_r": n_r, "n_c": n_c}
                rows = [{**at, **_exponents(result, n_r, n_c)} for result in results]
                if not replicated:
                    self.history.append(rows[0])
                    _add_metrics(metrics, "mcrg", rows[0], n_r, n_c)
                    continue
                for index, row in enumerate(rows):
                    self.history.append({**row, "replica": index})
                    _add_metrics(metrics, f"mcrg/replica{index}", row, n_r, n_c)
                summary = _replica_summary(rows)
                self.history.append({**at, "replica": "mean", **summary})
                _add_metrics(metrics, "mcrg", summary, n_r, n_c)
        if now:
            with warnings.catch_warnings():
                # Under DDP only rank zero measures; Lightning's advice to sync is moot.
                warnings.simplefilter("ignore", PossibleUserWarning)
                trainer.lightning_module.log_dict(
                    metrics, on_step=False, on_epoch=True, rank_zero_only=True
                )
        else:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=int(where["log_step"]))
            # Where the values logged through the module land, for monitors and sweepers.
            trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        self._write_history(trainer, self.run_dir(trainer))
        best = [r for r in self._mean_rows() if r["epoch"] == epoch and r["n_r"] == 1]
        if best:
            shown = ", ".join(f"N_c={r['n_c']}: {r['y_t']:.4f}" for r in best if r["n_c"] in (1, 7))
            rank_zero_info(f"epoch {epoch}: y_t (N_r=1) {shown}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._worker is not None:  # the measurements still running, then the figures
            self._record_finished(trainer, keep=0)
            self._close_worker()
        if not trainer.is_global_zero or not self.filters:
            return
        run_dir = self.run_dir(trainer)
        last = max(self.filters)
        # With replicas, Fig. 1 shows replica 0 and Fig. 2 the mean over replicas.
        first = (lambda w: w[0]) if isinstance(pl_module.rbm, ReplicaRBM) else (lambda w: w)
        panel = {e: first(self.filters[e]) for e in (*self.panel_epochs, last) if e in self.filters}
        figures = {"fig1_filters": plots.filter_panel(panel)}
        if self.history:
            figures["fig2_yt_vs_step"] = plots.yt_history_figure(
                self._mean_rows(), 1, self.n_cs, dim=pl_module.rbm.dim
            )
        for name, fig in figures.items():
            path = run_dir / f"{name}.png"
            fig.savefig(path)
            self._log_image(trainer, f"figures/{name}", path, fig, caption=name)

    def on_exception(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._close_worker()

    def teardown(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        self._close_worker()

    def _close_worker(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _refuse_earlier_outputs(run_dir: Path) -> None:
        """A fresh run (not a resume) must not write over the history or figures of another run."""
        found = [name for name in OUTPUTS if (run_dir / name).exists()]
        if found:
            raise FileExistsError(
                f"mcrg.output_dir={run_dir} already holds {', '.join(found)} of another run: a new "
                "run never overwrites them (choose another directory, or resume that run with "
                "ckpt_path=...)"
            )

    def _mean_rows(self) -> list[dict[str, Any]]:
        """The history of one filter, or of the mean over replicas."""
        return [row for row in self.history if row.get("replica", "mean") == "mean"]

    def _write_history(self, trainer: pl.Trainer, run_dir: Path) -> None:
        # The whole history is rewritten each time: write it aside and rename it into place, so a
        # kill mid-write leaves the previous complete file, never a truncated one.
        path = run_dir / "mcrg_history.csv"
        partial = run_dir / f".mcrg_history.csv.partial-{os.getpid()}"
        with partial.open("w", newline="") as handle:
            replicated = any("replica" in row for row in self.history)
            fields = REPLICA_HISTORY_FIELDS if replicated else HISTORY_FIELDS
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(partial, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Files in the run's own directory travel with it (`wandb sync` uploads them).
                shutil.copy(path, Path(logger.experiment.dir) / path.name)

    def _log_filter(
        self, trainer: pl.Trainer, run_dir: Path, epoch: int, replicated: bool = False
    ) -> None:
        weight = self.filters[epoch]
        if replicated:  # all R filters side by side, each its own colour scale
            fig = plots.filter_panel(dict(enumerate(weight)), label="replica")
        else:
            fig = plots.filter_figure(weight, f"filter W, epoch {epoch}")
        path = run_dir / "filters" / f"epoch_{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        self._log_image(trainer, "filters/filter", path, fig, caption=f"epoch {epoch}")

    @staticmethod
    def _log_image(trainer: pl.Trainer, key: str, path: Path, fig: Any, caption: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    key=key, images=[str(path)], step=trainer.global_step, caption=[caption]
                )
            elif isinstance(logger, TensorBoardLogger):
                logger.experiment.add_figure(key, fig, trainer.global_step, close=False)


def _exponents(result: MCRGResult, n_r: int, n_c: int) -> dict[str, float]:
    """y_t, y_h and their jackknife errors at (N_r, N_c)."""
    row = {}
    for name, set_name in (("y_t", "even"), ("y_h", "odd")):
        row[name] = float(result.y[set_name][n_r - 1, n_c - 1])
        row[f"{name}_err"] = float(result.err[set_name][n_r - 1, n_c - 1])
    return row


def _replica_summary(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Mean over replicas, its standard error (``*_err``) and the spread (``*_spread``, the
    standard deviation over replicas, n - 1 in the denominator); NaN if any replica is NaN."""
    summary = {}
    for name in EXPONENTS:
        values = torch.tensor([row[name] for row in rows], dtype=torch.float64)
        spread = float(values.std()) if len(values) > 1 else math.nan
        summary[name] = float(values.mean())
        summary[f"{name}_err"] = spread / math.sqrt(len(values))
        summary[f"{name}_spread"] = spread
    return summary


def _add_metrics(
    metrics: dict[str, float], prefix: str, row: dict[str, Any], n_r: int, n_c: int
) -> None:
    """``{prefix}/{name}/nr{N_r}_nc{N_c}`` for every finite exponent entry of ``row``."""
    for name in ("y_t", "y_t_err", "y_t_spread", "y_h", "y_h_err", "y_h_spread"):
        if name in row and math.isfinite(row[name]):
            metrics[f"{prefix}/{name}/nr{n_r}_nc{n_c}"] = row[name]
