"""How rbmrg checks a setting: one small helper per kind of value, errors that name the setting.

Every rule about a setting is stated once, by the object that owns the setting (the lattice model,
the data module, the RBM module, the MCRG plan), and stated with these helpers, so that a bad value
is reported the same way everywhere: ``data.L=7: must be an even integer >= 4``. ``name`` is the
setting's full configuration key, as the user typed it (``mcrg.n_blocks``, ``model.persistent``).
The checks run in constructors and plans, before any sampling or training starts.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch


def integer(name: str, value: Any, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an int in [low, high]; an integral float such as 1e6 is accepted, bool is not."""
    bounds = f" >= {low}" if high is None else f" in [{low}, {high}]"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}: must be an integer{bounds if low is not None else ''}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{name}={value!r}: must be an integer{bounds if low is not None else ''}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ValueError(f"{name}={value}: must be an integer{bounds}")
    return value


def number(name: str, value: Any, low: float | None = None, *, positive: bool = False) -> float:
    """``value`` as a finite float (> 0 with ``positive``, >= ``low`` if given)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name}={value!r}: must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}={value!r}: must be a finite number")
    if positive and value <= 0:
        raise ValueError(f"{name}={value!r}: must be > 0")
    if low is not None and value < low:
        raise ValueError(f"{name}={value!r}: must be >= {low}")
    return value


def flag(name: str, value: Any) -> bool:
    """``value`` as a bool; only true/false (YAML booleans) count, not any non-empty string."""
    if not isinstance(value, bool):
        raise ValueError(f"{name}={value!r}: must be true or false")
    return value


def one_of(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """``value`` if it is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name}={value!r}: choose one of {choices}")
    return value


def device(name: str, value: Any) -> torch.device:
    """A torch device that exists on this machine (``cuda`` is refused where CUDA is absent)."""
    try:
        result = torch.device(str(value))
    except RuntimeError as error:
        raise ValueError(f"{name}={value!r}: not a torch device ({error})") from None
    if result.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{name}={value!r}: CUDA is not available on this machine")
    return result
