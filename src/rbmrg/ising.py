"""Ising model on a periodic hypercubic lattice and its Monte Carlo samplers.

Layout convention (every function in rbmrg follows it):

* A configuration of ``n_chains`` independent Markov chains is one tensor ``spins`` of shape
  ``(n_chains, L, ..., L)`` with ``dim`` lattice axes. Values are +1/-1. Inside the samplers the
  dtype is a float (cheap arithmetic); what leaves :func:`draw_samples` is ``int8``.
* Boundaries are periodic: a neighbour is reached with ``torch.roll`` along a lattice axis.
* The Boltzmann weight is ``exp(H)`` with ``H = K * sum_<ij> s_i s_j`` (Eq. 9 of Chung & Kao: the
  coupling is absorbed into H, no minus sign, no temperature).

Every sampler is an ``(init, step)`` pair built by :func:`make_sampler`:

* ``state = init(n_chains)`` draws a hot start;
* ``state = step(state, n_sweeps)`` advances every chain by ``n_sweeps`` sweeps;
* ``spins_of(state)`` gives the current ``(n_chains, L, ..., L)`` tensor.

The reference samplers here are plain PyTorch checkerboard updates (heat-bath or Metropolis) on any
torch device. Faster CPU kernels live in :mod:`rbmrg.fast` and register themselves under their own
algorithm names (``"metropolis-msc"``, ``"wolff"``), so the rest of the code never needs to know which
one it runs. :func:`draw_samples` keeps configurations as a chain-major int8 :class:`SampleSet` with
the integrated autocorrelation times of the energy and of |M|; :func:`iterate_samples` streams
float32 states instead. docs/sampler.md has the algorithms, their tau_int and how they are tested.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

#: Exact critical coupling of the square lattice, K_c = ln(1 + sqrt 2) / 2 (Onsager).
K_C_2D = 0.5 * math.log(1.0 + math.sqrt(2.0))
#: Critical coupling of the simple cubic lattice (high-precision Monte Carlo estimate).
K_C_3D = 0.221654626


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
        if not math.isfinite(float(self.coupling)):
            raise ValueError(f"coupling={self.coupling!r}: must be a finite number")
        object.__setattr__(self, "coupling", float(self.coupling))

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


# --------------------------------------------------------------------------------------------------
# Reference checkerboard samplers (plain PyTorch)


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


def register_sampler(name: str, factory: SamplerFactory) -> None:
    """Make ``factory(model, device, seed) -> Sampler`` available as ``algorithm=name``."""
    _SAMPLERS[name] = factory


for _name in ("heatbath", "metropolis"):
    register_sampler(
        _name,
        lambda model, device, seed, _a=_name: Sampler(
            *_checkerboard(model, _a, device, seed, torch.float32), device=torch.device(device)
        ),
    )


def available_algorithms() -> list[str]:
    _load_fast_kernels()
    return sorted(_SAMPLERS)


def _load_fast_kernels() -> None:
    # The compiled kernels register themselves on import; importing lazily keeps numba's JIT start-up
    # out of code paths that only use the torch samplers.
    try:
        import rbmrg.fast  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a declared dependency
        pass


def check_algorithm(algorithm: str) -> None:
    """Raise a ValueError naming ``algorithm`` unless a sampler of that name exists."""
    if algorithm not in available_algorithms():
        raise ValueError(
            f"algorithm={algorithm!r}: unknown sampler; choose one of {available_algorithms()}"
        )


def make_sampler(
    model: IsingModel,
    algorithm: str = "heatbath",
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Sampler:
    """Build the sampler ``algorithm`` for ``model``; all randomness is seeded by ``seed``."""
    check_algorithm(algorithm)
    return _SAMPLERS[algorithm](model, torch.device(device), int(seed))


# --------------------------------------------------------------------------------------------------
# Drawing a data set


def autocorrelation_time(
    series: torch.Tensor, window_factor: float = 6.0
) -> tuple[float, float, int]:
    """(tau_int, its standard error, window W) of a series (rows = time, columns = chains).

    tau_int = 1/2 + sum_{t=1}^{W} rho(t), with rho the normalized autocorrelation averaged over
    chains and W the smallest window with W >= c * tau_int(W) (Sokal's automatic window, c = 6).
    An uncorrelated series has tau_int = 1/2; the effective number of independent samples is
    n / (2 tau_int). The error is Madras & Sokal's (1988) estimate
    sigma(tau_int) = tau_int * sqrt(2 (2W + 1) / n), n the total number of samples.
    Returns NaNs for a series shorter than 4 rows or with zero variance.
    """
    series = series.to(torch.float64)
    if series.ndim == 1:
        series = series[:, None]
    n, n_chains = series.shape
    if n < 4:
        return float("nan"), float("nan"), 0
    centred = series - series.mean(0, keepdim=True)
    variance = (centred**2).mean()
    if variance <= 0:
        return float("nan"), float("nan"), 0
    # FFT autocorrelation of each chain, averaged over chains.
    size = 1 << (2 * n - 1).bit_length()
    spectrum = torch.fft.rfft(centred, n=size, dim=0)
    acf = torch.fft.irfft(spectrum * spectrum.conj(), n=size, dim=0)[:n].mean(1)
    acf = acf / torch.arange(n, 0, -1, dtype=torch.float64, device=acf.device)
    rho = (acf / acf[0]).cpu().tolist()
    tau, window = 0.5, n - 1
    for t in range(1, n):
        tau += rho[t]
        if t >= window_factor * tau:
            window = t
            break
    error = abs(tau) * math.sqrt(2.0 * (2 * window + 1) / (n * n_chains))
    return tau, error, window


def integrated_autocorrelation_time(series: torch.Tensor, window_factor: float = 6.0) -> float:
    """tau_int of :func:`autocorrelation_time` alone (1/2 for an uncorrelated series)."""
    return autocorrelation_time(series, window_factor)[0]


@dataclass
class SampleSet:
    """Configurations drawn by :func:`draw_samples`.

    ``spins`` has shape ``(n_samples, L, ..., L)``, dtype int8, and is *chain-major*: rows
    ``[c * per_chain, (c + 1) * per_chain)`` come from chain ``c``. Contiguous blocks of rows are
    therefore blocks of independent chains, which is what a jackknife over blocks needs.

    The autocorrelation times are in units of the spacing ``n_between`` between kept samples,
    measured along each chain and averaged over chains; 1/2 means the kept samples are independent.
    """

    spins: torch.Tensor
    n_chains: int
    energy: torch.Tensor  # (per_chain, n_chains): S_nn of every kept sample
    tau_int_energy: float  # in units of the spacing between kept samples
    n_between: int
    #: (per_chain, n_chains): total magnetization M = sum_i s_i of every kept sample.
    magnetization: torch.Tensor | None = None
    tau_int_abs_magnetization: float = float("nan")
    #: Madras-Sokal standard errors of the two autocorrelation times.
    tau_int_energy_error: float = float("nan")
    tau_int_abs_magnetization_error: float = float("nan")

    @property
    def per_chain(self) -> int:
        return self.spins.shape[0] // self.n_chains


def validate_sampling(n_samples: int, n_chains: int, n_thermalize: int, n_between: int) -> None:
    """Raise a ValueError naming the first bad setting of a sampling run."""
    for name, value, low in (
        ("n_samples", n_samples, 1),
        ("n_chains", n_chains, 1),
        ("n_thermalize", n_thermalize, 0),
        ("n_between", n_between, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: must be an integer >= {low}")
    if n_samples % n_chains:
        raise ValueError(
            f"n_samples={n_samples} is not a multiple of n_chains={n_chains}: every chain "
            "contributes the same number of samples"
        )


#: The sampler :func:`draw_samples` uses unless told otherwise: the fastest one that passes the exact
#: tests and decorrelates |m| fastest per second at L=32, K_c (docs/sampler.md has the figures).
DEFAULT_ALGORITHM = "wolff"


def _kept_states(
    model: IsingModel,
    n_samples: int,
    algorithm: str,
    n_chains: int,
    n_thermalize: int,
    n_between: int,
    seed: int,
    device: str | torch.device,
    progress: Callable[[int], None] | None,
):
    """Yield the sampler's spins (its own dtype) after thermalization and every ``n_between``."""
    validate_sampling(n_samples, n_chains, n_thermalize, n_between)
    sampler = make_sampler(model, algorithm, device, seed)
    state = sampler.init(n_chains)
    state = sampler.step(state, n_thermalize) if n_thermalize else state
    for index in range(n_samples // n_chains):
        state = sampler.step(state, n_between)
        yield sampler.spins_of(state)
        if progress is not None:
            progress((index + 1) * n_chains)


def iterate_samples(
    model: IsingModel,
    n_samples: int,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    n_chains: int = 100,
    n_thermalize: int = 1000,
    n_between: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
):
    """Yield ``spins`` after every ``n_between`` sweeps, ``n_samples / n_chains`` times.

    ``spins`` is the float32 ``(n_chains, L, ..., L)`` state of all chains, values +1/-1 (do not
    modify it); streaming consumers (MCRG) use this to avoid holding every configuration in memory.
    ``progress(k)`` is called with the number of samples produced so far.
    """
    for spins in _kept_states(
        model, n_samples, algorithm, n_chains, n_thermalize, n_between, seed, device, progress
    ):
        yield spins.to(torch.float32)


def draw_samples(
    model: IsingModel,
    n_samples: int,
    *,
    algorithm: str = DEFAULT_ALGORITHM,
    n_chains: int = 100,
    n_thermalize: int = 1000,
    n_between: int = 10,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: Callable[[int], None] | None = None,
) -> SampleSet:
    """Draw ``n_samples`` configurations from ``n_chains`` independent chains.

    Each chain starts hot, is thermalized for ``n_thermalize`` sweeps, then keeps one configuration
    every ``n_between`` sweeps. The energy S_nn and magnetization M of every kept configuration are
    recorded with the integrated autocorrelation times of S_nn and |M| (in units of ``n_between``
    sweeps), so a value well above 1/2 says the thinning is not enough.
    """
    per_chain = n_samples // max(n_chains, 1) if isinstance(n_chains, int) else 0
    spins_out = energy = magnet = None
    for index, spins in enumerate(
        _kept_states(
            model, n_samples, algorithm, n_chains, n_thermalize, n_between, seed, device, progress
        )
    ):
        if spins_out is None:
            # Preallocated: 10^6 configurations of 32x32 are 1 GB of int8; no list, no stack copy.
            spins_out = torch.empty(
                (n_chains, per_chain, *model.shape), dtype=torch.int8, device=spins.device
            )
            energy = torch.empty(per_chain, n_chains, dtype=torch.float64, device=spins.device)
            magnet = torch.empty_like(energy)
        spins_out[:, index] = spins
        energy[index] = bond_sum(spins, model.dim)
        magnet[index] = magnetization(spins)
    tau_e, tau_e_error, _ = autocorrelation_time(energy)
    tau_m, tau_m_error, _ = autocorrelation_time(magnet.abs())
    return SampleSet(
        spins=spins_out.reshape(n_chains * per_chain, *model.shape),
        n_chains=n_chains,
        energy=energy,
        tau_int_energy=tau_e,
        n_between=n_between,
        magnetization=magnet,
        tau_int_abs_magnetization=tau_m,
        tau_int_energy_error=tau_e_error,
        tau_int_abs_magnetization_error=tau_m_error,
    )
