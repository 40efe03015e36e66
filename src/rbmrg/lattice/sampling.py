"""Drawing data sets from a sampler: thermalize, thin, record energy and |M|, measure tau_int.

:func:`draw_samples` keeps configurations as a chain-major int8 :class:`SampleSet` with the
integrated autocorrelation times of the energy and of |M|; :func:`iterate_samples` streams float32
states instead (MCRG of 10^6 configurations never holds them all). docs/sampler.md has the
algorithms, their tau_int and how they are tested.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rbmrg import checks
from rbmrg.lattice.model import IsingModel, bond_sum, magnetization
from rbmrg.lattice.samplers import DEFAULT_ALGORITHM, make_sampler


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


def validate_sampling(
    n_samples: int,
    n_chains: int,
    n_thermalize: int,
    n_between: int,
    names: tuple[str, str, str, str] = ("n_samples", "n_chains", "n_thermalize", "n_between"),
) -> None:
    """Raise a ValueError naming the first bad setting of a sampling run (``names`` are the keys)."""
    values = (n_samples, n_chains, n_thermalize, n_between)
    for name, value, low in zip(names, values, (1, 1, 0, 1), strict=True):
        checks.integer(name, value, low)
    if int(n_samples) % int(n_chains):
        raise ValueError(
            f"{names[0]}={n_samples} is not a multiple of {names[1]}={n_chains}: every chain "
            "contributes the same number of samples"
        )


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


def thermalization_drift(energy: torch.Tensor) -> str | None:
    """A message if the chains still remember their hot start, else None.

    ``energy`` is ``(per_chain, n_chains)``: S_nn of the kept samples along each chain. The mean
    energy of the first and of the second half of every chain differ by more than 5 standard errors
    (the chains are independent, so the spread of the per-chain differences gives the error) when
    the start is still visible in the first half.
    """
    per_chain, n_chains = energy.shape
    if per_chain < 4 or n_chains < 4:
        return None
    half = per_chain // 2
    drift = energy[:half].mean(0) - energy[half : 2 * half].mean(0)
    error = float(drift.std()) / math.sqrt(n_chains)
    if error > 0 and abs(float(drift.mean())) > 5 * error:
        return (
            f"mean energy drifts between the halves of the chains ({float(drift.mean()):.3g} +- "
            f"{error:.2g}): the chains are not thermalized; raise n_thermalize"
        )
    return None
