"""The RG flow of the trained filter: renormalized couplings K^(n) of every level, at the end of fit.

:class:`RGFlowCallback` takes the final filter, transforms the held-out configurations
(``trainer.datamodule.val_set``, independent of the training set; whole chains, at most
``n_samples`` configurations) ``n_rg_steps`` times, and solves Swendsen's equations (Phys. Rev.
Lett. 52, 1165 (1984)) for the couplings of the even interaction set on every level n,

    <S_beta,i sigma_i> = <S_beta,i tanh(sum_alpha K^(n)_alpha S_alpha,i)>,

with :class:`rbmrg.rg.couplings.CouplingAccumulator` (jackknife errors over blocks of whole
independent chains, as for MCRG). Rank 0 logs ``couplings/level{n}/{name}`` and
``couplings_err/level{n}/{name}`` to every logger at the final step and writes
``<output_dir>/couplings.csv``; a fresh run refuses a directory that already holds one.

Only levels that hold every interaction of the set are solved (a coupling of a level is solved
jointly with the others, see :func:`rbmrg.rg.couplings.check_levels`), and only levels the filter
can reach (:func:`rbmrg.rg.transforms.level_sizes`): where ``n_rg_steps`` asks for more, the flow
stops at the last such level, with a warning at the start of the fit.

With R > 1 filters trained side by side (``model.n_replicas``) the flow is that of replica 0 only.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from rbmrg import checks
from rbmrg.rg.couplings import CouplingAccumulator, CouplingResult
from rbmrg.rg.interactions import Interaction, interaction_names
from rbmrg.rg.interactions_3d import sets_for
from rbmrg.rg.mcrg import chain_major_batches
from rbmrg.rg.rbm import ConvRBM, ReplicaRBM
from rbmrg.rg.transforms import RGTransform, iterate, level_sizes

#: What this callback writes into its run directory (a fresh run refuses to start over it).
OUTPUT = "couplings.csv"
#: ``step``: the loggers' step (Lightning's global step); ``updates``: CD updates of the filter.
FIELDS = ("step", "updates", "level", "L", "interaction", "coupling", "error", "n_samples")


class FlowPlan(NamedTuple):
    """Levels 0..n_levels - 1 of ``sizes`` are measured, on the first ``n_chains`` chains."""

    n_chains: int
    n_rows: int
    n_blocks: int
    sizes: list[int]
    transform: RGTransform


class RGFlowCallback(pl.Callback):
    """Renormalized couplings K^(n) of the final filter on the held-out set, n = 0..n_rg_steps.

    Args:
        n_rg_steps: RG steps N_r: levels 0..N_r (fewer where the filter or the set does not fit).
        even_set: the truncated Hamiltonian's interactions, a set name (``span``, ``distance``) or a
            list of interaction names, on the lattice of ``dim`` (as ``mcrg.even_set`` of evaluate).
        dim: lattice dimension (2 or 3): the set is looked up on its lattice when built.
        n_samples: held-out configurations used at most: the first whole chains (at least
            ``n_blocks`` of them); None = all.
        n_blocks: jackknife blocks of whole chains (>= 2; 20 for a trustworthy error bar).
        batch_size: configurations per transform pass (memory only).
        seed: seed of the block-spin draws of the filter.
        output_dir: run directory of ``couplings.csv`` (None: the trainer's ``default_root_dir``).
    """

    def __init__(
        self,
        n_rg_steps: int = 2,
        even_set: str | Sequence[str] = "span",
        dim: int = 2,
        n_samples: int | None = None,
        n_blocks: int = 20,
        batch_size: int = 4096,
        seed: int = 4321,
        output_dir: str | None = None,
    ):
        super().__init__()
        prefix = "callbacks.rg_flow"
        self.n_rg_steps = checks.integer(f"{prefix}.n_rg_steps", n_rg_steps, 0)
        dim = checks.integer(f"{prefix}.dim", dim, 2, 3)
        if not isinstance(even_set, str):
            even_set = [str(name) for name in even_set]
        try:
            self.interactions: tuple[Interaction, ...] = sets_for(dim, even_set)["even"]
        except ValueError as error:
            raise ValueError(str(error).replace("mcrg.even_set", f"{prefix}.even_set")) from None
        self.n_samples = (
            None if n_samples is None else checks.integer(f"{prefix}.n_samples", n_samples, 1)
        )
        self.n_blocks = checks.integer(f"{prefix}.n_blocks", n_blocks, 2)
        self.batch_size = checks.integer(f"{prefix}.batch_size", batch_size, 1)
        self.seed = checks.integer(f"{prefix}.seed", seed, 0)
        self.output_dir = output_dir

    def run_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.default_root_dir)

    def plan(self, rbm: ConvRBM, L: int, n_configs: int, n_chains: int) -> FlowPlan:
        """The chains and levels measured on a chain-major set of ``n_configs`` configurations from
        ``n_chains`` chains of an L^d lattice with the filter ``rbm``."""
        per_chain = n_configs // n_chains
        used = n_chains
        if self.n_samples is not None and self.n_samples < n_configs:
            used = max(self.n_samples // per_chain, min(self.n_blocks, n_chains))
        n_blocks = min(self.n_blocks, used)
        if n_blocks < 2:
            raise ValueError(
                f"the held-out set has {used} chain(s): couplings error bars need >= 2 "
                "independent chains (raise data.n_chains)"
            )
        transform = RGTransform("rbm", rbm.stride, filters=(rbm,))
        sizes = [L]
        for n in range(self.n_rg_steps, 0, -1):  # the most steps the filter can take
            try:
                sizes = level_sizes(L, transform, n)
                break
            except ValueError:
                continue
        fitting = 0
        while fitting < len(sizes) and all(i.fits(sizes[fitting]) for i in self.interactions):
            fitting += 1
        return FlowPlan(used, used * per_chain, n_blocks, sizes[:fitting], transform)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        path = self.run_dir(trainer) / OUTPUT
        if trainer.ckpt_path is None and path.exists():
            raise FileExistsError(
                f"callbacks.rg_flow.output_dir={path.parent} already holds {OUTPUT} of another "
                "run: a new run never overwrites it (choose another directory, or resume that run "
                "with ckpt_path=...)"
            )
        val_set = getattr(trainer.datamodule, "val_set", None)
        if val_set is not None:
            spins = val_set.spins
            plan = self.plan(
                _first(pl_module.rbm), spins.shape[-1], spins.shape[0], int(val_set.n_chains)
            )
            if len(plan.sizes) < self.n_rg_steps + 1:
                rank_zero_warn(
                    f"RG flow: callbacks.rg_flow.n_rg_steps={self.n_rg_steps}, but only levels "
                    f"{plan.sizes} take the filter and every interaction of the set "
                    f"{interaction_names(self.interactions)}: couplings of levels "
                    f"0..{len(plan.sizes) - 1} only"
                )

    def measure(self, rbm: ConvRBM, val_set: Any, device: torch.device) -> CouplingResult | None:
        """K^(n) of the filter ``rbm`` on the chain-major ``val_set``; None if no level fits."""
        spins = val_set.spins
        plan = self.plan(rbm, spins.shape[-1], spins.shape[0], int(val_set.n_chains))
        if not plan.sizes:
            return None
        accumulator = CouplingAccumulator(self.interactions, len(plan.sizes), plan.n_blocks)
        generator = torch.Generator(device=device)
        generator.manual_seed(self.seed)
        steps = plan.transform.steps(device)
        batches = chain_major_batches(
            spins[: plan.n_rows], plan.n_chains, plan.n_blocks, self.batch_size
        )
        with torch.no_grad():
            for rows, blocks in batches:
                levels = iterate(rows.to(device), steps, len(plan.sizes) - 1, generator)
                accumulator.update([level.cpu() for level in levels], blocks.cpu())
        return accumulator.result()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # All ranks hold the same filter: rank zero measures, logs and writes for everybody.
        if not trainer.is_global_zero:
            return
        val_set = getattr(trainer.datamodule, "val_set", None)
        if val_set is None:
            rank_zero_warn("RGFlowCallback: the data module has no val_set; no RG flow measured")
            return
        result = self.measure(_first(pl_module.rbm), val_set, pl_module.device)
        if result is None:
            rank_zero_warn("RGFlowCallback: the interaction set fits no level; nothing measured")
            return
        step = int(trainer.global_step)
        updates = int(getattr(pl_module, "updates", step))
        rows, metrics = [], {}
        for level, size in enumerate(result.lattice_sizes):
            for index, name in enumerate(result.names):
                value = float(result.couplings[level, index])
                error = float(result.errors[level, index])
                rows.append(
                    {
                        "step": step,
                        "updates": updates,
                        "level": level,
                        "L": size,
                        "interaction": name,
                        "coupling": value,
                        "error": error,
                        "n_samples": result.n_samples,
                    }
                )
                if math.isfinite(value):
                    metrics[f"couplings/level{level}/{name}"] = value
                if math.isfinite(error):
                    metrics[f"couplings_err/level{level}/{name}"] = error
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=step)
        self._write(self.run_dir(trainer), rows)
        shown = ", ".join(
            f"K{level}_nn = {result.couplings[level, 0]:.4f}"
            for level in range(len(result.lattice_sizes))
        )
        rank_zero_info(f"RG flow of the final filter ({result.names[0]}): {shown}")

    @staticmethod
    def _write(run_dir: Path, rows: list[dict[str, Any]]) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        try:
            handle = (run_dir / OUTPUT).open("x", newline="")
        except FileExistsError:
            # Only a resumed run gets here (a fresh one is refused at the start): keep the file.
            rank_zero_warn(
                f"RGFlowCallback: {run_dir / OUTPUT} exists and is never overwritten; this "
                "fit's couplings went to the loggers only"
            )
            return
        with handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)


def _first(rbm: ConvRBM | ReplicaRBM) -> ConvRBM:
    """The filter whose flow is measured: the one, or replica 0 of several."""
    return rbm.replica(0) if isinstance(rbm, ReplicaRBM) else rbm
