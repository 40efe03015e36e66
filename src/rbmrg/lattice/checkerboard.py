"""Reference checkerboard samplers in plain PyTorch (heat-bath and Metropolis), any torch device.

Sites of one sublattice have all their neighbours on the other one, so a whole sublattice is updated
at once without breaking detailed balance. These are the readable references the faster kernels
are tested against; they keep float32 spins and draw from a ``torch.Generator`` of the device.
"""

from __future__ import annotations

import torch

from rbmrg.lattice.base import Sampler
from rbmrg.lattice.model import IsingModel, neighbour_sum


def checkerboard_masks(model: IsingModel, device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean masks of the two sublattices, shape ``(2, L, ..., L)``; parity of the coordinate sum."""
    grids = torch.meshgrid(*[torch.arange(model.L, device=device)] * model.dim, indexing="ij")
    parity = sum(grids) % 2
    return torch.stack([parity == 0, parity == 1])


def _checkerboard(model: IsingModel, algorithm: str, device: torch.device | str, seed: int, dtype):
    """Heat-bath or Metropolis checkerboard on any torch device.

    Sites of one sublattice have all their neighbours on the other one, so a whole sublattice is
    updated at once without breaking detailed balance.

    * heat-bath: s_i = +1 with probability sigmoid(2 K h_i), h_i the neighbour sum;
    * Metropolis: flip s_i with probability min(1, exp(-2 K s_i h_i)).
    """
    device = torch.device(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    masks = checkerboard_masks(model, device)
    coupling = model.coupling

    def init(n_chains: int) -> torch.Tensor:
        bits = torch.randint(0, 2, (n_chains, *model.shape), generator=generator, device=device)
        return (2 * bits - 1).to(dtype)

    def step(spins: torch.Tensor, n_sweeps: int = 1) -> torch.Tensor:
        for _ in range(n_sweeps):
            for mask in masks:
                field = neighbour_sum(spins, model.dim)
                uniform = torch.rand(spins.shape, generator=generator, device=device, dtype=dtype)
                if algorithm == "heatbath":
                    up = uniform < torch.sigmoid(2.0 * coupling * field)
                    new = torch.where(up, 1.0, -1.0).to(dtype)
                else:
                    flip = uniform < torch.exp(-2.0 * coupling * spins * field)
                    new = torch.where(flip, -spins, spins)
                spins = torch.where(mask, new, spins)
        return spins

    return init, step


def heatbath(model: IsingModel, device: torch.device, seed: int) -> Sampler:
    """Checkerboard heat-bath: s_i = +1 with probability sigmoid(2 K h_i)."""
    return Sampler(*_checkerboard(model, "heatbath", device, seed, torch.float32), device=device)


def metropolis(model: IsingModel, device: torch.device, seed: int) -> Sampler:
    """Checkerboard Metropolis: flip s_i with probability min(1, exp(-2 K s_i h_i))."""
    return Sampler(*_checkerboard(model, "metropolis", device, seed, torch.float32), device=device)
