"""The sampler registry: every Monte Carlo algorithm of rbmrg by name.

Each entry is a factory ``(model, device, seed) -> Sampler`` (:mod:`rbmrg.lattice.base`); callers
select an algorithm by its name only. The registry imports every implementation from here, above
them, so no implementation module needs to import the registry (no import circle).

* ``heatbath``, ``metropolis``: torch checkerboard references, any device (:mod:`.checkerboard`);
* ``metropolis-msc``: numba multi-spin-coded checkerboard Metropolis, 2D, CPU (:mod:`.msc`);
* ``wolff``: numba single-cluster updates, any dimension, CPU (:mod:`.wolff`).
"""

from __future__ import annotations

import torch

from rbmrg.lattice import checkerboard, msc, wolff
from rbmrg.lattice.base import Sampler, SamplerFactory
from rbmrg.lattice.model import IsingModel

SAMPLERS: dict[str, SamplerFactory] = {
    "heatbath": checkerboard.heatbath,
    "metropolis": checkerboard.metropolis,
    "metropolis-msc": msc.metropolis_msc,
    "wolff": wolff.wolff,
}

#: Lattice dimensions each algorithm handles (checked before any sampling).
DIMENSIONS: dict[str, tuple[int, ...]] = {
    "heatbath": (1, 2, 3),
    "metropolis": (1, 2, 3),
    "metropolis-msc": (2,),
    "wolff": (1, 2, 3),
}

#: The sampler :func:`rbmrg.lattice.sampling.draw_samples` uses unless told otherwise: the fastest one
#: that passes the exact tests and decorrelates |m| fastest per second at L=32, K_c on the CPU
#: (docs/sampler.md has the figures).
DEFAULT_ALGORITHM = "wolff"


def available_algorithms() -> list[str]:
    return sorted(SAMPLERS)


def check_algorithm(algorithm: str, dim: int | None = None) -> None:
    """Raise a ValueError naming ``algorithm`` unless it exists (and handles ``dim``, if given)."""
    if algorithm not in SAMPLERS:
        raise ValueError(
            f"algorithm={algorithm!r}: unknown sampler; choose one of {available_algorithms()}"
        )
    if dim is not None and dim not in DIMENSIONS[algorithm]:
        raise ValueError(
            f"algorithm={algorithm!r}: written for dim in {DIMENSIONS[algorithm]} only, got dim={dim}"
        )


def make_sampler(
    model: IsingModel,
    algorithm: str = "heatbath",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Sampler:
    """Build the sampler ``algorithm`` for ``model``; all randomness is seeded by ``seed``."""
    check_algorithm(algorithm, model.dim)
    return SAMPLERS[algorithm](model, torch.device(device), int(seed))
