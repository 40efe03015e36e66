"""Lightning callbacks that watch the physics while the RBM trains.

:class:`MCRGCallback` runs Monte Carlo RG (:func:`rbmrg.rg.mcrg.run_mcrg`) with the current filter on the
data module's held-out configurations (``trainer.datamodule.val_set``, independent of the training
set) after every epoch, logs y_t and y_h with jackknife errors under keys

    mcrg/y_t/nr{N_r}_nc{N_c},  mcrg/y_t_err/nr{N_r}_nc{N_c},  mcrg/y_h/...,  mcrg/y_h_err/...

(plotted against ``mcrg/epoch`` on wandb), keeps the whole history in its state so it survives a
resume, writes it to ``<output_dir>/mcrg_history.csv`` and draws the figures of :mod:`rbmrg.plots`:
the filter every epoch (Fig. 1) and, at the end, y_t against the training step (Fig. 2). A fresh run
(not resumed from a checkpoint) refuses to start in a directory that holds these files of another run.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from pytorch_lightning.utilities.warnings import PossibleUserWarning

from rbmrg import plots
from rbmrg.rg.interactions_3d import default_sets
from rbmrg.rg.mcrg import MCRGResult, chain_major_batches, level0_values, run_mcrg
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import rbm as rbm_transform

HISTORY_FIELDS = ("epoch", "step", "n_r", "n_c", "y_t", "y_t_err", "y_h", "y_h_err")
#: What this callback writes into its run directory (a fresh run refuses to start over them).
OUTPUTS = ("mcrg_history.csv", "fig1_filters.png", "fig2_yt_vs_step.png", "filters")


def max_rg_steps(L: int, filter_size: int, stride: int, wanted: int) -> int:
    """How many RG steps (<= ``wanted``) the filter can take from an L lattice.

    The filter is reapplied on each level, so level n (size L / b^n) must hold it and be divisible by
    b, and the new level must keep at least a 3 x 3 lattice so nearest-neighbour correlations mean
    something.
    """
    steps, size = 0, L
    while steps < wanted and size % stride == 0 and filter_size <= size and size // stride >= 3:
        size //= stride
        steps += 1
    return steps


class MCRGCallback(pl.Callback):
    """Measure y_t and y_h by MCRG with the current filter after every ``every_n_epochs`` epochs.

    Args:
        every_n_epochs: MCRG interval in epochs (the last epoch is always measured).
        n_rg_steps: N_r wanted (paper: 1 and 2); fewer where the lattice is too small.
        n_blocks: jackknife blocks (whole independent chains per block; at most the set's n_chains).
        n_samples: use only the first ``n_samples`` held-out configurations (whole chains); None = all.
        batch_size: configurations per MCRG pass (memory only, not the result).
        seed: seed of the RBM's random block spins; the same every epoch so that the epoch-to-epoch
            changes of y_t come from the filter, not from the draw.
        output_dir: run directory for ``mcrg_history.csv`` and the PNG figures (None: the trainer's
            ``default_root_dir``).
        n_cs: N_c values drawn in the Fig. 2 plot (paper: 7).
        panel_epochs: epochs of the Fig. 1 panel; the last epoch is added.
        filter_images: save (and log) the filter as an image every epoch.
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
    ):
        super().__init__()
        if every_n_epochs < 1:
            raise ValueError(f"mcrg.every_n_epochs={every_n_epochs!r}: must be >= 1")
        if n_rg_steps < 1:
            raise ValueError(f"mcrg.n_rg_steps={n_rg_steps!r}: must be >= 1")
        if n_blocks < 2:
            raise ValueError(f"mcrg.n_blocks={n_blocks!r}: the jackknife needs >= 2 blocks")
        self.every_n_epochs = int(every_n_epochs)
        self.n_rg_steps = int(n_rg_steps)
        self.n_blocks = int(n_blocks)
        self.n_samples = n_samples
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.output_dir = output_dir
        self.n_cs = tuple(int(n) for n in n_cs)
        self.panel_epochs = tuple(int(e) for e in panel_epochs)
        self.filter_images = filter_images
        self.history: list[dict[str, float]] = []
        self.filters: dict[int, torch.Tensor] = {}  # epoch -> filter (cpu), for the Fig. 1 panel
        # Level-0 interactions of the held-out set: the same every epoch, so measured once.
        self._level0: tuple[Any, torch.Tensor, torch.Tensor] | None = None

    # ---------------------------------------------------------------------------------------------
    # State: the history survives a resume from a checkpoint.

    @property
    def state_key(self) -> str:
        return "MCRGCallback"

    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(row) for row in self.history], "filters": dict(self.filters)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(row) for row in state_dict.get("history", [])]
        self.filters = {int(k): v for k, v in state_dict.get("filters", {}).items()}

    # ---------------------------------------------------------------------------------------------

    def run_dir(self, trainer: pl.Trainer) -> Path:
        path = Path(self.output_dir or trainer.default_root_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero and trainer.ckpt_path is None:
            self._refuse_earlier_outputs(Path(self.output_dir or trainer.default_root_dir))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                # Plot the MCRG curves against the epoch, not against the optimizer step.
                logger.experiment.define_metric("mcrg/epoch")
                logger.experiment.define_metric("mcrg/*", step_metric="mcrg/epoch")

    def measure(self, rbm: ConvRBM, val_set: Any, device: torch.device) -> MCRGResult:
        """MCRG with the filter ``rbm`` on the chain-major held-out set ``val_set``."""
        spins, n_chains = val_set.spins, int(val_set.n_chains)
        per_chain = spins.shape[0] // n_chains
        if self.n_samples is not None and self.n_samples < spins.shape[0]:
            n_chains = max(min(self.n_blocks, n_chains), self.n_samples // per_chain)
            spins = spins[: n_chains * per_chain]
        if n_chains < 2:
            raise ValueError(
                f"the held-out set has {n_chains} chain(s): MCRG error bars need >= 2 "
                "independent chains (raise data.n_chains)"
            )
        n_blocks = min(self.n_blocks, n_chains)
        L = spins.shape[-1]
        n_rg_steps = max_rg_steps(L, rbm.filter_size, rbm.stride, self.n_rg_steps)
        if n_rg_steps < 1:
            raise ValueError(
                f"filter_size={rbm.filter_size}, stride={rbm.stride}: no RG step fits L={L}"
            )
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)

        level0 = self._level0_values(spins, device)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
            start = 0
            for rows, blocks in chain_major_batches(spins, n_chains, n_blocks, self.batch_size):
                cached = level0[start : start + rows.shape[0]]
                start += rows.shape[0]
                yield rows.to(device), blocks.to(device), cached

        with warnings.catch_warnings():
            # Couplings that do not fit the small levels come back as NaN; not news every epoch.
            warnings.simplefilter("ignore", UserWarning)
            return run_mcrg(
                batches(),
                [rbm_transform(rbm)],
                n_rg_steps,
                float(rbm.stride),
                n_blocks=n_blocks,
                sets=default_sets(spins.ndim - 1),
                generator=generator,
            )

    def _level0_values(self, spins: torch.Tensor, device: torch.device) -> torch.Tensor:
        """Level-0 interactions of ``spins`` (float64, on ``device``), measured on the first call.

        Cached for the same data (same memory, shape and version counter, i.e. not modified in
        place) and device; the cache holds a reference to ``spins`` so that its memory cannot be
        reused by another tensor while the key is kept.
        """
        key = (spins.data_ptr(), tuple(spins.shape), spins._version, str(device))
        if self._level0 is None or self._level0[0] != key:
            sets = default_sets(spins.ndim - 1)  # the lattice's own interactions, 2D or 3D
            values = level0_values(spins.to(device), sets, batch_size=self.batch_size)
            self._level0 = (key, values, spins)
        return self._level0[1]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch + 1  # epochs completed, as in the paper's "epoch 1, 3, 5"
        rbm: ConvRBM = pl_module.rbm
        # All ranks hold the same filter: rank zero measures, logs and writes for everybody.
        if not trainer.is_global_zero:
            return
        self.filters[epoch] = rbm.weight.detach().cpu().clone()
        run_dir = self.run_dir(trainer)
        if self.filter_images:
            self._log_filter(trainer, run_dir, epoch)
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if epoch % self.every_n_epochs and not last:
            return
        datamodule = trainer.datamodule
        val_set = getattr(datamodule, "val_set", None)
        if val_set is None:
            rank_zero_warn("MCRGCallback: the data module has no val_set; skipping MCRG")
            return
        result = self.measure(rbm, val_set, pl_module.device)
        metrics = {"mcrg/epoch": float(epoch)}
        for n_r in range(1, result.y["even"].shape[0] + 1):
            for n_c in range(1, result.y["even"].shape[1] + 1):
                row = {
                    "epoch": epoch,
                    "step": trainer.global_step,
                    "n_r": n_r,
                    "n_c": n_c,
                    "y_t": float(result.y["even"][n_r - 1, n_c - 1]),
                    "y_t_err": float(result.err["even"][n_r - 1, n_c - 1]),
                    "y_h": float(result.y["odd"][n_r - 1, n_c - 1]),
                    "y_h_err": float(result.err["odd"][n_r - 1, n_c - 1]),
                }
                self.history.append(row)
                for name in ("y_t", "y_t_err", "y_h", "y_h_err"):
                    if math.isfinite(row[name]):
                        metrics[f"mcrg/{name}/nr{n_r}_nc{n_c}"] = row[name]
        with warnings.catch_warnings():
            # Under DDP only rank zero measures; Lightning's advice to sync across ranks is moot.
            warnings.simplefilter("ignore", PossibleUserWarning)
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, rank_zero_only=True)
        self._write_history(trainer, run_dir)
        best = [r for r in self.history if r["epoch"] == epoch and r["n_r"] == 1]
        if best:
            shown = ", ".join(f"N_c={r['n_c']}: {r['y_t']:.4f}" for r in best if r["n_c"] in (1, 7))
            rank_zero_info(f"epoch {epoch}: y_t (N_r=1) {shown}")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or not self.filters:
            return
        run_dir = self.run_dir(trainer)
        last = max(self.filters)
        panel = {e: self.filters[e] for e in (*self.panel_epochs, last) if e in self.filters}
        figures = {"fig1_filters": plots.filter_panel(panel)}
        if self.history:
            figures["fig2_yt_vs_step"] = plots.yt_history_figure(
                self.history, 1, self.n_cs, dim=pl_module.rbm.dim
            )
        for name, fig in figures.items():
            path = run_dir / f"{name}.png"
            fig.savefig(path)
            self._log_image(trainer, f"figures/{name}", path, fig, caption=name)

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

    def _write_history(self, trainer: pl.Trainer, run_dir: Path) -> None:
        # The whole history is rewritten each time: write it aside and rename it into place, so a
        # kill mid-write leaves the previous complete file, never a truncated one.
        path = run_dir / "mcrg_history.csv"
        partial = run_dir / f".mcrg_history.csv.partial-{os.getpid()}"
        with partial.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=HISTORY_FIELDS)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(partial, path)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # Files in the run's own directory travel with it (`wandb sync` uploads them).
                shutil.copy(path, Path(logger.experiment.dir) / path.name)

    def _log_filter(self, trainer: pl.Trainer, run_dir: Path, epoch: int) -> None:
        fig = plots.filter_figure(self.filters[epoch], f"filter W, epoch {epoch}")
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
