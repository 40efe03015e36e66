"""What every Monte Carlo sampler of rbmrg is: an ``(init, step, spins_of)`` triple.

* ``state = init(n_chains)`` draws a hot start of ``n_chains`` independent chains;
* ``state = step(state, n_sweeps)`` advances every chain by ``n_sweeps`` sweeps;
* ``spins_of(state)`` gives the current ``(n_chains, L, ..., L)`` spins (see
  :mod:`rbmrg.lattice.model` for the layout).

A factory ``(model, device, seed) -> Sampler`` builds one; :mod:`rbmrg.lattice.samplers` names them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rbmrg.lattice.model import IsingModel


def _spins_identity(state: Any) -> torch.Tensor:
    return state


@dataclass(frozen=True)
class Sampler:
    """An ``(init, step)`` pair with a way to read the spins out of its state."""

    init: Callable[[int], Any]
    step: Callable[[Any, int], Any]
    spins_of: Callable[[Any], torch.Tensor] = _spins_identity
    #: torch device the spins come back on.
    device: torch.device = torch.device("cpu")
    #: algorithm-specific facts worth reporting (e.g. Wolff's clusters per sweep).
    details: dict[str, Any] = field(default_factory=dict)


SamplerFactory = Callable[[IsingModel, torch.device, int], Sampler]
_SAMPLERS: dict[str, SamplerFactory] = {}
