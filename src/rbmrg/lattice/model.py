"""The Ising model on a periodic hypercubic lattice, and its observables.

Layout convention (every function in rbmrg follows it):

* A configuration of ``n_chains`` independent Markov chains is one tensor ``spins`` of shape
  ``(n_chains, L, ..., L)`` with ``dim`` lattice axes. Values are +1/-1. Inside the samplers the
  dtype is a float (cheap arithmetic); what leaves :func:`rbmrg.lattice.sampling.draw_samples` is
  ``int8``.
* Boundaries are periodic: a neighbour is reached with ``torch.roll`` along a lattice axis.
* The Boltzmann weight is ``exp(H)`` with ``H = K * sum_<ij> s_i s_j`` (Eq. 9 of Chung & Kao: the
  coupling is absorbed into H, no minus sign, no temperature).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rbmrg import checks

#: Exact critical coupling of the square lattice, K_c = ln(1 + sqrt 2) / 2 (Onsager).
K_C_2D = 0.5 * math.log(1.0 + math.sqrt(2.0))
#: Critical coupling of the simple cubic lattice (high-precision Monte Carlo estimate).
K_C_3D = 0.221654626


#: Critical exponents y_t = 1/nu and y_h = (d + 2 - eta)/2 that MCRG estimates. 2D: exact (Onsager,
#: y_h = 15/8). 3D: nu = 0.62997, eta = 0.0363 (conformal bootstrap, Kos et al. 2016).
EXACT_EXPONENTS = {
    2: {"y_t": 1.0, "y_h": 15 / 8},
    3: {"y_t": 1 / 0.62997, "y_h": (3 + 2 - 0.0363) / 2},
}


def exact_exponents(dim: int) -> dict[str, float]:
    """The reference values of y_t and y_h for the ``dim``-dimensional Ising model."""
    if dim not in EXACT_EXPONENTS:
        raise ValueError(f"dim={dim}: no critical exponents known to rbmrg (use dim=2 or dim=3)")
    return dict(EXACT_EXPONENTS[dim])


def critical_coupling(dim: int) -> float:
    """K_c of the nearest-neighbour Ising model on the hypercubic lattice of dimension ``dim``."""
    if dim == 2:
        return K_C_2D
    if dim == 3:
        return K_C_3D
    raise ValueError(f"dim={dim}: no critical coupling known to rbmrg (use dim=2 or dim=3)")


@dataclass(frozen=True)
class IsingModel:
    """Nearest-neighbour Ising model, weight exp(K * sum_<ij> s_i s_j), periodic L^dim lattice.

    Attributes:
        L: linear lattice size (even, >= 4, so that the checkerboard is consistent with periodicity).
        coupling: K, dimensionless (beta * J). ``None`` means the critical coupling of ``dim``.
        dim: number of lattice axes (2 or 3).
    """

    L: int = 32
    coupling: float | None = None
    dim: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.dim, int) or self.dim not in (1, 2, 3):
            raise ValueError(f"dim={self.dim!r}: the lattice dimension must be 1, 2 or 3")
        if not isinstance(self.L, int) or self.L < 4 or self.L % 2:
            raise ValueError(
                f"L={self.L!r}: the lattice size must be an even integer >= 4 "
                "(an odd periodic lattice has no checkerboard)"
            )
        if self.coupling is None:
            if self.dim == 1:
                raise ValueError(
                    "coupling=None: the 1D chain has no critical point; give a coupling"
                )
            object.__setattr__(self, "coupling", critical_coupling(self.dim))
        object.__setattr__(self, "coupling", checks.number("coupling", self.coupling))

    @property
    def n_sites(self) -> int:
        return self.L**self.dim

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.L,) * self.dim


# --------------------------------------------------------------------------------------------------
# Observables


def neighbour_sum(spins: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of the 2*dim nearest neighbours of every site (periodic), same shape as ``spins``."""
    total = torch.zeros_like(spins)
    for axis in range(spins.ndim - dim, spins.ndim):
        total += torch.roll(spins, 1, axis) + torch.roll(spins, -1, axis)
    return total


def bond_sum(spins: torch.Tensor, dim: int) -> torch.Tensor:
    """S_nn = sum over nearest-neighbour pairs of s_i s_j, one value per chain (float64).

    Each bond is counted once: the forward neighbour along each axis. Integer spins (int8) are
    multiplied in their own dtype (products are +-1, no overflow) and summed in int64, exactly.
    """
    exact_integers = not spins.dtype.is_floating_point
    spins = spins if exact_integers else spins.to(torch.float64)
    total = torch.zeros(spins.shape[0], dtype=torch.float64, device=spins.device)
    for axis in range(spins.ndim - dim, spins.ndim):
        products = (spins * torch.roll(spins, -1, axis)).flatten(1)
        total += products.sum(1, dtype=torch.int64) if exact_integers else products.sum(1)
    return total


def magnetization(spins: torch.Tensor) -> torch.Tensor:
    """Sum of all spins of each chain (float64)."""
    if spins.dtype.is_floating_point:
        return spins.to(torch.float64).flatten(1).sum(1)
    return spins.flatten(1).sum(1, dtype=torch.int64).to(torch.float64)
