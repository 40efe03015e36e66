"""Real-space RG transformations: configurations on L^d -> configurations on (L/b)^d.

A transformation is a callable ``transform(spins, generator) -> block_spins`` on float tensors of
shape ``(batch, L, ..., L)`` with values +1/-1. Stochastic ones draw from ``generator``, so MCRG runs
are reproducible. Block (p, q) covers the sites (b p + u, b q + v), 0 <= u, v < b; the RBM filter uses
the same anchoring, so every transformation here lines up with the same block lattice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from rbmrg.rg.rbm import ConvRBM

Transform = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]


def _block_sums(spins: torch.Tensor, b: int) -> torch.Tensor:
    """Sum of the spins in each b^d block, shape (batch, L/b, ..., L/b)."""
    dim = spins.ndim - 1
    L = spins.shape[-1]
    if L % b:
        raise ValueError(f"L={L} is not divisible by the block size b={b}")
    shape = [spins.shape[0]]
    for _ in range(dim):
        shape += [L // b, b]
    return spins.reshape(shape).sum(tuple(range(2, 2 * dim + 1, 2)))


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
    """The learned weight factor: mu drawn from P(mu | sigma) of Eq. (3), a random draw per block."""

    @torch.no_grad()
    def transform(spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        model.check_lattice(spins.shape[-1])
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
