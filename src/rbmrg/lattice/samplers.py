"""The sampler registry: every Monte Carlo algorithm of rbmrg by name.

Each entry is a factory ``(model, device, seed) -> Sampler`` (:mod:`rbmrg.lattice.base`); callers
select an algorithm by its name only. The registry imports every implementation from here, above
them, so no implementation module needs to import the registry (no import circle).

* ``heatbath``, ``metropolis``: torch checkerboard references, any device (:mod:`.checkerboard`);
* ``metropolis-msc``: numba multi-spin-coded checkerboard Metropolis, 2D, CPU (:mod:`.msc`);
* ``metropolis-fused``: Triton checkerboard Metropolis, one kernel launch per ``step``, CUDA (on the
  CPU under Triton's interpreter, for tests) (:mod:`.fused`);
* ``wolff``: numba single-cluster updates, any dimension, CPU (:mod:`.wolff`);
* ``swendsen-wang``: torch Swendsen-Wang cluster updates with label propagation, any dimension,
  any device (:mod:`.swendsen_wang`).

Also here: the defaults that depend on the machine or on the algorithm's dynamics
(:func:`resolve_device`, :func:`default_algorithm`, :func:`default_spacing`), and
:func:`resolve_sampling`, which turns the configuration value ``auto`` into them.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch

from rbmrg.lattice import checkerboard, fused, msc, swendsen_wang, wolff
from rbmrg.lattice.base import Sampler, SamplerFactory
from rbmrg.lattice.model import IsingModel

SAMPLERS: dict[str, SamplerFactory] = {
    "heatbath": checkerboard.heatbath,
    "metropolis": checkerboard.metropolis,
    "metropolis-msc": msc.metropolis_msc,
    "metropolis-fused": fused.metropolis_fused,
    "wolff": wolff.wolff,
    "swendsen-wang": swendsen_wang.swendsen_wang,
}

#: Lattice dimensions each algorithm handles (checked before any sampling).
DIMENSIONS: dict[str, tuple[int, ...]] = {
    "heatbath": (1, 2, 3),
    "metropolis": (1, 2, 3),
    "metropolis-msc": (2,),
    "metropolis-fused": (1, 2, 3),
    "wolff": (1, 2, 3),
    "swendsen-wang": (1, 2, 3),
}

#: Checks that an algorithm's optional dependencies are installed (raise a ValueError naming it).
REQUIREMENTS = {"metropolis-fused": fused.check_available}

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
    if algorithm in REQUIREMENTS:
        REQUIREMENTS[algorithm]()


def make_sampler(
    model: IsingModel,
    algorithm: str = "heatbath",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Sampler:
    """Build the sampler ``algorithm`` for ``model``; all randomness is seeded by ``seed``."""
    check_algorithm(algorithm, model.dim)
    return SAMPLERS[algorithm](model, torch.device(device), int(seed))


# --------------------------------------------------------------------------------------------------
# Defaults that depend on the machine


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when a GPU is present, else the CPU; any other name is checked and returned.

    Raises a ValueError naming ``device=`` for a name torch does not know or a CUDA device that is
    not there.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(
            f"device={device!r}: not a torch device ('auto', 'cpu', 'cuda', 'cuda:1')"
        ) from error
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r}: no CUDA device on this machine (use 'auto' or 'cpu')"
            )
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif resolved.type != "cpu":
        raise ValueError(f"device={device!r}: rbmrg samples on 'cpu' or 'cuda' only")
    return resolved


def default_algorithm(device: str | torch.device) -> str:
    """The sampler for ``device``: the fused kernel on CUDA (the torch reference if Triton is
    missing), the CPU default :data:`DEFAULT_ALGORITHM` elsewhere."""
    if resolve_device(device).type == "cuda":
        return fused.ALGORITHM if fused.triton_available() else "metropolis"
    return DEFAULT_ALGORITHM


# --------------------------------------------------------------------------------------------------
# Spacing of kept configurations from measured autocorrelation times

#: tau_int(|m|) in sweeps at L = 32, K_c, 2D, with its standard error (docs/sampler.md, measured by
#: ``python benchmarks/sampler.py --threads 2 --samples 1000000``). ``metropolis-fused`` is the same
#: Markov chain as ``metropolis`` and ``metropolis-msc`` (same updates in the same order) and takes
#: the larger of their two measurements.
TAU_ABS_M_L32 = {
    "heatbath": (105.0, 9.0),
    "metropolis": (34.6, 2.3),
    "metropolis-msc": (36.9, 1.1),
    "metropolis-fused": (36.9, 1.1),
    "wolff": (1.56, 0.03),
    # python benchmarks/sampler.py --algorithms swendsen-wang --threads 1 --samples 0 (CPU)
    "swendsen-wang": (3.25, 0.12),
}
#: Dynamic exponent z of tau_int(|m|) ~ L^z in sweeps at K_c, 2D: local updates z = 2.17
#: (Nightingale & Bloete 2000 give 2.1665(12)); Wolff clusters, in sweeps, about 0.25
#: (Coddington & Baillie 1992); Swendsen-Wang 0.25 too, an upper estimate (published 2D values
#: are 0.2-0.25 or a logarithm of L: Du, Zheng & Wang 2006).
DYNAMIC_EXPONENT = {
    "heatbath": 2.17,
    "metropolis": 2.17,
    "metropolis-msc": 2.17,
    "metropolis-fused": 2.17,
    "wolff": 0.25,
    "swendsen-wang": 0.25,
}
#: Thermalization from a hot start, in units of tau_int(|m|), and its floor in sweeps.
THERMALIZE_TAUS = 25
MIN_THERMALIZE = 200
#: Wolff from a hot start: its sweeps are a fixed number of clusters sized for equilibrium, but the
#: first clusters of a random configuration have a few sites, so reaching equilibrium takes ~50,
#: ~200 and ~500 sweeps at L = 32, 64, 128 (energy and |m| of 64 chains, docs/sampler.md). Rule:
#: 200 (L / 32)^2 sweeps, 4-6 times what was measured.
WOLFF_HOT_START = (200, 2.0)


def default_spacing(algorithm: str, L: int, dim: int = 2) -> tuple[int, int]:
    """``(n_thermalize, n_between)`` in sweeps for ``algorithm`` at K_c on an ``L^dim`` lattice.

    tau(L) = (tau_32 + 2 sigma) (L / 32)^z from :data:`TAU_ABS_M_L32` and :data:`DYNAMIC_EXPONENT`
    (the measured time at L = 32 plus two standard errors, scaled with the dynamic exponent);
    ``n_between = ceil(2 tau(L))`` keeps configurations 2 tau_int(|m|) apart, so they are
    effectively independent, and ``n_thermalize = max(MIN_THERMALIZE, ceil(THERMALIZE_TAUS tau))``,
    for Wolff at least ``200 (L/32)^2`` (:data:`WOLFF_HOT_START`: its hot start is slow).
    At L = 32: n_between = 79 and n_thermalize = 978-980 for the Metropolis samplers, 4 and 200
    for Wolff, 7 and 200 for Swendsen-Wang; at L = 128 Wolff gets (3200, 5), Swendsen-Wang
    (200, 10) (its hot start is over after ~50 sweeps at L = 128, docs/sampler.md). Only 2D times are measured: other dimensions raise a ValueError (pass the spacing
    yourself). Check the result: ``SampleSet.tau_int_abs_magnetization``, in units of
    ``n_between``, should come out near 1/2 (the data module warns above 1).
    """
    check_algorithm(algorithm)
    if dim != 2:
        raise ValueError(
            f"dim={dim}: no measured tau_int for {algorithm!r} outside 2D (docs/sampler.md); "
            "set n_thermalize and n_between yourself"
        )
    if isinstance(L, bool) or not isinstance(L, int) or L < 4:
        raise ValueError(f"L={L!r}: must be an integer >= 4")
    tau, error = TAU_ABS_M_L32[algorithm]
    tau_L = (tau + 2 * error) * (L / 32) ** DYNAMIC_EXPONENT[algorithm]
    # round() first: 25 x 39.2 must give 980, not 981 from a last-bit excess.
    n_thermalize = math.ceil(round(THERMALIZE_TAUS * tau_L, 9))
    if algorithm == "wolff":
        sweeps, power = WOLFF_HOT_START
        n_thermalize = max(n_thermalize, math.ceil(round(sweeps * (L / 32) ** power, 9)))
    return max(MIN_THERMALIZE, n_thermalize), max(1, math.ceil(round(2 * tau_L, 9)))


# --------------------------------------------------------------------------------------------------
# "auto" in the configuration

#: The configuration value asking for this machine's default (``data.device``, ``data.algorithm``,
#: ``data.n_thermalize``, ``data.n_between``).
AUTO = "auto"


def resolve_sampling(
    device: Any,
    algorithm: Any,
    n_thermalize: Any,
    n_between: Any,
    L: int,
    dim: int = 2,
    prefix: str = "",
) -> dict[str, Any]:
    """The four sampling settings with every ``"auto"`` replaced by this machine's default.

    ``device`` auto: :func:`resolve_device`; ``algorithm`` auto: :func:`default_algorithm` of that
    device; ``n_thermalize`` / ``n_between`` auto: :func:`default_spacing` of that algorithm at L
    (2D only: its tau_int are measured there). Explicit values win and come back as given (the
    caller checks the numbers), except the device and the algorithm, which are checked here.
    Errors name ``prefix + setting`` (``prefix="data."``). An ``auto`` algorithm with an explicit
    spacing shorter than that algorithm's default is warned about: the algorithm then depends on
    the machine, the spacing does not. Returns ``{"device", "algorithm", "n_thermalize",
    "n_between", "auto"}``, ``auto`` the names of the settings that were ``"auto"``.
    """
    auto = [
        name
        for name, value in (
            ("device", device),
            ("algorithm", algorithm),
            ("n_thermalize", n_thermalize),
            ("n_between", n_between),
        )
        if isinstance(value, str) and value == AUTO
    ]
    try:
        resolved_device = resolve_device(
            device if isinstance(device, torch.device) else str(device)
        )
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None
    if "algorithm" in auto:
        algorithm = default_algorithm(resolved_device)
    try:
        check_algorithm(str(algorithm), dim)
    except ValueError as error:
        raise ValueError(f"{prefix}{error}") from None
    algorithm = str(algorithm)
    spacing = {"n_thermalize": n_thermalize, "n_between": n_between}
    if dim == 2 and set(auto) - {"device"}:
        defaults = dict(zip(spacing, default_spacing(algorithm, L, dim), strict=True))
    elif "n_thermalize" in auto or "n_between" in auto:
        name = "n_thermalize" if "n_thermalize" in auto else "n_between"
        raise ValueError(
            f"{prefix}{name}=auto: tau_int is measured for 2D lattices only (docs/sampler.md), "
            f"not for dim={dim}; set {prefix}n_thermalize and {prefix}n_between yourself"
        )
    else:
        defaults = {}
    for name, value in spacing.items():
        if name in auto:
            spacing[name] = defaults[name]
        elif "algorithm" in auto and name in defaults and _below(value, defaults[name]):
            warnings.warn(
                f"{prefix}algorithm=auto chose {algorithm!r} on this machine, which needs "
                f"{name} >= {defaults[name]} at L={L}; {prefix}{name}={value} is shorter "
                f"(set {prefix}{name}=auto, or choose the algorithm yourself)",
                RuntimeWarning,
                stacklevel=2,
            )
    return {"device": resolved_device, "algorithm": algorithm, **spacing, "auto": auto}


def _below(value: Any, default: int) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value < default
