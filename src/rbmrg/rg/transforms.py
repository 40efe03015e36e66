"""Real-space RG transformations: configurations on L^d -> configurations on (L/b)^d.

A transformation is a callable ``transform(spins, generator) -> block_spins`` on float tensors of
shape ``(batch, L, ..., L)`` with values +1/-1. Stochastic ones draw from ``generator``, so MCRG runs
are reproducible. Block (p, q) covers the sites (b p + u, b q + v), 0 <= u, v < b; the RBM filter uses
the same anchoring, so every transformation here lines up with the same block lattice.

MCRG uses a transformation as an :class:`RGTransform`: the callable of every level, the scale factor
b, and for a learned one its filter sizes. The factories :func:`majority_rule`,
:func:`decimation_rule` and :func:`learned` build one from settings (the ``_target_`` of
``conf/transform/*.yaml``), and :func:`level_sizes` is the one place that decides how many RG steps a
lattice allows.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rbmrg import checks
from rbmrg.checkpoint import load_rbms
from rbmrg.rg.kernels import sample_hidden_2d
from rbmrg.rg.rbm import ConvRBM

Transform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _block_sums(spins: torch.Tensor, b: int) -> torch.Tensor:
    """Sum of the spins in each b^d block, shape (batch, L/b, ..., L/b).

    Added up as the b^d strided views of the lattice, one per position within a block: 6x faster
    than a reduction over the reshaped block axes on the CPU, and exact for +-1 values.
    """
    dim = spins.ndim - 1
    L = spins.shape[-1]
    if L % b:
        raise ValueError(f"L={L} is not divisible by the block size b={b}")
    total = None
    for corner in itertools.product(range(b), repeat=dim):
        view = spins[(slice(None), *(slice(u, None, b) for u in corner))]
        total = view.clone() if total is None else total.add_(view)
    return total


def majority(b: int = 2) -> Transform:
    """Majority rule on b^d blocks (Swendsen); a tied block gets +1 or -1 with probability 1/2."""

    def transform(spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        total = _block_sums(spins.to(torch.float32), b)
        coin = torch.randint(0, 2, total.shape, generator=generator, device=total.device) * 2 - 1
        return torch.where(total == 0, coin.to(total.dtype), torch.sign(total))

    return transform


def decimation(b: int = 2) -> Transform:
    """Keep the first spin of every b^d block (for the 1D chain: every b-th spin)."""

    def transform(spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if spins.shape[-1] % b:
            raise ValueError(f"L={spins.shape[-1]} is not divisible by the block size b={b}")
        index = (slice(None),) + (slice(None, None, b),) * (spins.ndim - 1)
        return spins[index].to(torch.float32)

    return transform


def rbm(model: ConvRBM) -> Transform:
    """The learned weight factor: mu drawn from P(mu | sigma) of Eq. (3), a random draw per block.

    A float32 2D filter on the CPU draws through the compiled kernel
    (:func:`rbmrg.rg.kernels.sample_hidden_2d`, the same uniforms; docs/performance.md). Only here,
    in MCRG: training's torch backend keeps :meth:`ConvRBM.sample_hidden`, so that its filters stay
    bit for bit those of docs/results.md.
    """

    @torch.no_grad()
    def transform(spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        model.check_lattice(spins.shape[-1])
        weight = model.weight
        on_cpu = spins.device.type == weight.device.type == "cpu"
        if on_cpu and spins.ndim == 3 and weight.dtype == torch.float32:
            return sample_hidden_2d(spins, weight, model.stride, generator)
        return model.sample_hidden(spins, generator).to(torch.float32)

    return transform


def iterate(
    spins: torch.Tensor,
    transforms: Sequence[Transform],
    n_rg_steps: int,
    generator: torch.Generator | None = None,
) -> list[torch.Tensor]:
    """Levels 0..n_rg_steps: ``[spins, T(spins), T(T(spins)), ...]``.

    ``transforms`` has one entry per level; a single entry is reused at every level (a filter
    learned at L is applied again on L/b, as in the paper).
    """
    levels = [spins.to(torch.float32)]
    for step in range(n_rg_steps):
        transform = transforms[min(step, len(transforms) - 1)]
        levels.append(transform(levels[-1], generator))
    return levels


#: The smallest lattice an RG step may produce: 4 sites per axis (below that the nearest and
#: next-nearest neighbours of a periodic lattice coincide and no interaction set is defined).
MIN_LEVEL_SIZE = 4


@dataclass(frozen=True)
class RGTransform:
    """An RG transformation as MCRG uses it.

    Attributes:
        name: ``"rbm"``, ``"majority"`` or ``"decimation"``.
        scale: the scale factor b (lattice sites per block along an axis).
        rule: the callable of a fixed rule, the same at every level.
        filters: a learned transformation's filters, one per RG step or one reused at every level.
        sources: the checkpoint file of each filter.
        replicas: from checkpoints of R > 1 independently trained filters (``model.n_replicas``):
            the ``filters`` of every replica, ``replicas[r][step]``; ``filters`` is ``replicas[0]``
            (their geometry is the same). Empty for one filter. MCRG measures each replica
            (:meth:`replica_steps`); :meth:`steps` refuses, so none is dropped without a word.
    """

    name: str
    scale: int
    rule: Transform | None = None
    filters: tuple[ConvRBM, ...] = ()
    sources: tuple[str, ...] = ()
    replicas: tuple[tuple[ConvRBM, ...], ...] = ()

    @property
    def n_replicas(self) -> int:
        return max(1, len(self.replicas))

    @property
    def filter_sizes(self) -> tuple[int, ...]:
        return tuple(f.filter_size for f in self.filters)

    def window(self, step: int) -> int:
        """Side of the window RG step ``step`` (0-based) reads: the filter size, or b for a block rule."""
        if not self.filters:
            return self.scale
        return self.filters[min(step, len(self.filters) - 1)].filter_size

    def steps(self, device: str | torch.device = "cpu") -> list[Transform]:
        """The callables of :func:`iterate`, with learned filters moved to ``device``."""
        if self.replicas:
            raise ValueError(
                f"this transformation holds {self.n_replicas} independently trained filters: "
                "measure each (replica_steps), not one"
            )
        if self.rule is not None:
            return [self.rule]
        return [rbm(f.to(device)) for f in self.filters]

    def replica_steps(self, device: str | torch.device = "cpu") -> list[list[Transform]]:
        """:meth:`steps` of every replica (one list for a single transformation)."""
        if not self.replicas:
            return [self.steps(device)]
        return [[rbm(f.to(device)) for f in filters] for filters in self.replicas]


def majority_rule(block_size: int = 2) -> RGTransform:
    """Swendsen's majority rule on ``block_size``^d blocks (``transform=majority``)."""
    b = checks.integer("transform.block_size", block_size, 2)
    return RGTransform("majority", b, rule=majority(b))


def decimation_rule(block_size: int = 2) -> RGTransform:
    """Decimation, the first spin of every block (``transform=decimation``)."""
    b = checks.integer("transform.block_size", block_size, 2)
    return RGTransform("decimation", b, rule=decimation(b))


def learned(ckpt_path: str | os.PathLike | Sequence[str | os.PathLike] | None) -> RGTransform:
    """The learned weight factor of one checkpoint, or one checkpoint per RG step (``transform=rbm``).

    ``ckpt_path`` is a Lightning checkpoint of the training module or a plain filter file
    (:mod:`rbmrg.checkpoint`); the files are read here, safely, so a bad one is reported before any
    sampling. A checkpoint of R > 1 filters (``model.n_replicas``) gives R replicas, all measured;
    with one file per RG step every file must hold the same R (replica r takes filter r of each).
    """
    if ckpt_path is None:
        raise ValueError(
            "ckpt_path=null: transform=rbm needs a checkpoint of the learned filter "
            "(python evaluate.py ckpt_path=...), or choose transform=majority"
        )
    paths = [ckpt_path] if isinstance(ckpt_path, str | os.PathLike) else list(ckpt_path)
    paths = [str(path) for path in paths]
    per_file = []
    for path in paths:
        try:
            per_file.append(load_rbms(path))
        except ValueError as error:  # also a missing file (MissingCheckpointError)
            raise type(error)(f"ckpt_path={path}: {error}") from None
    counts = [len(found) for found in per_file]
    if len(set(counts)) != 1:
        raise ValueError(
            f"ckpt_path: the files hold different numbers of filters {counts} (model.n_replicas); "
            "replica r takes filter r of every file, so they must hold the same number"
        )
    replicas = tuple(zip(*per_file, strict=True))  # replicas[r][step]
    filters = replicas[0]
    strides = {f.stride for f in filters}
    if len(strides) != 1:
        raise ValueError(
            f"ckpt_path: the filters have different strides {sorted(strides)}; y = ln(lambda)/ln(b) "
            "needs one scale factor b"
        )
    return RGTransform(
        "rbm",
        strides.pop(),
        filters=filters,
        sources=tuple(paths),
        replicas=replicas if len(replicas) > 1 else (),
    )


def level_sizes(
    L: int,
    transform: RGTransform,
    n_rg_steps: int,
    names: tuple[str, str] = ("data.L", "mcrg.n_rg_steps"),
) -> list[int]:
    """Linear sizes of levels 0..n_rg_steps, or a ValueError naming the settings (``names``).

    Each level must be divisible by b, hold the window of the step applied to it (the learned
    filter is reapplied on every level, as in the paper), and the new level must keep at least
    :data:`MIN_LEVEL_SIZE` sites per axis.
    """
    if len(transform.filters) not in (0, 1, n_rg_steps):
        raise ValueError(
            f"ckpt_path: {len(transform.filters)} files for {names[1]}={n_rg_steps}; give one file "
            "(reused at every level) or one per RG step"
        )
    b = transform.scale
    sizes = [L]
    for step in range(n_rg_steps):
        size = sizes[-1]
        where = f"{names[0]}={L} with {names[1]}={n_rg_steps}: level {step} has L={size}"
        if size % b:
            raise ValueError(f"{where}, not divisible by the scale factor b={b}")
        f = transform.window(step)
        if f > size:
            raise ValueError(
                f"{where}: the {f}x{f} filter does not fit level {step} (L={size}); use fewer RG "
                "steps or a larger lattice"
            )
        if size // b < MIN_LEVEL_SIZE:
            raise ValueError(
                f"{where}: one more step would leave a {size // b}-site level, fewer than "
                f"{MIN_LEVEL_SIZE}; use fewer RG steps or a larger lattice"
            )
        sizes.append(size // b)
    return sizes
