"""Samplers against exact results: enumeration of 4x4, Kaufman's closed form at L = 32.

Every algorithm (torch reference and compiled) must pass the same checks:

* the joint histogram of (S_nn, M) on the 4x4 periodic lattice matches the Boltzmann weights of all
  2^16 states (chi-square, one sample per chain from many independent chains, so the samples are
  exactly independent as the test assumes);
* at L = 32 and K_c the mean nearest-neighbour correlation per site matches the exact finite-lattice
  value d ln Z / dK / N from Kaufman's partition function within 4 standard errors measured across
  independent chains.
"""

import math

import mpmath
import numpy as np
import pytest
import torch

from rbmrg.lattice import fused
from rbmrg.lattice.model import K_C_2D, IsingModel, bond_sum, magnetization
from rbmrg.lattice.samplers import (
    available_algorithms,
    default_algorithm,
    default_spacing,
    make_sampler,
    resolve_device,
)
from rbmrg.lattice.sampling import autocorrelation_time, draw_samples, iterate_samples

ALGORITHM_NAMES = [
    "heatbath",
    "metropolis",
    "metropolis-msc",
    "metropolis-fused",
    "wolff",
    "swendsen-wang",
]
NEEDS_TRITON = pytest.mark.skipif(not fused.triton_available(), reason="triton is not installed")
ALGORITHMS = [
    pytest.param(name, marks=NEEDS_TRITON) if name == "metropolis-fused" else name
    for name in ALGORITHM_NAMES
]
P_MIN = 1e-3  # chi-square p-value below which a sampler is declared wrong
#: Without CUDA the fused kernels run under Triton's interpreter (slow, ~0.3 s a half-sweep).
FUSED_INTERPRETED = fused.triton_available() and fused.interpreting()


# --------------------------------------------------------------------------------------------------
# Exact references


def enumerate_4x4() -> tuple[np.ndarray, np.ndarray]:
    """S_nn and M of all 2^16 states of the 4x4 periodic lattice."""
    bits = (np.arange(2**16)[:, None] >> np.arange(16)) & 1
    spins = (2 * bits - 1).reshape(-1, 4, 4)
    bonds = (spins * np.roll(spins, 1, 1)).sum((1, 2)) + (spins * np.roll(spins, 1, 2)).sum((1, 2))
    return bonds, spins.sum((1, 2))


def exact_joint_probabilities(coupling: float) -> dict[tuple[int, int], float]:
    """P(S_nn, M) on 4x4 from exp(K S_nn) summed over all states."""
    bonds, magnet = enumerate_4x4()
    weights = np.exp(coupling * (bonds - bonds.max()))
    table: dict[tuple[int, int], float] = {}
    for key, weight in zip(zip(bonds.tolist(), magnet.tolist(), strict=True), weights, strict=True):
        table[key] = table.get(key, 0.0) + weight
    total = sum(table.values())
    return {key: value / total for key, value in table.items()}


def kaufman_log_partition(L: int, coupling) -> mpmath.mpf:
    """ln Z of the periodic L x L Ising lattice, weight exp(K sum s_i s_j) (Kaufman 1949).

    In the form of Ferdinand & Fisher (1969), Eq. (2.1)-(2.4), for an m x n lattice (here m = n = L):
    Z = 1/2 (2 sinh 2K)^{mn/2} sum_{i=1}^{4} Z_i with
    Z_1 = prod_{r=0}^{n-1} 2 cosh(m gamma_{2r+1} / 2),  Z_2 = prod 2 sinh(m gamma_{2r+1} / 2),
    Z_3 = prod 2 cosh(m gamma_{2r} / 2),                Z_4 = prod 2 sinh(m gamma_{2r} / 2),
    cosh gamma_l = cosh 2K coth 2K - cos(pi l / n) for l > 0 and gamma_0 = 2K + ln tanh K (its sign
    matters: it is negative below K_c). Evaluated in mpmath at the caller's working precision.
    """
    coupling = mpmath.mpf(coupling)
    centre = mpmath.cosh(2 * coupling) * mpmath.coth(2 * coupling)

    def gamma(l: int):
        if l == 0:
            return 2 * coupling + mpmath.log(mpmath.tanh(coupling))
        return mpmath.acosh(centre - mpmath.cos(mpmath.pi * l / L))

    products = [mpmath.mpf(1)] * 4
    for r in range(L):
        odd, even = L * gamma(2 * r + 1) / 2, L * gamma(2 * r) / 2
        products[0] *= 2 * mpmath.cosh(odd)
        products[1] *= 2 * mpmath.sinh(odd)
        products[2] *= 2 * mpmath.cosh(even)
        products[3] *= 2 * mpmath.sinh(even)
    prefactor = (2 * mpmath.sinh(2 * coupling)) ** (mpmath.mpf(L * L) / 2) / 2
    return mpmath.log(prefactor * sum(products))


def kaufman_bond_correlation(L: int, coupling: float) -> float:
    """<S_nn> / N = (1/N) d ln Z / dK: the nearest-neighbour correlation summed over a site's 2 bonds."""
    with mpmath.workdps(40):
        derivative = mpmath.diff(lambda k: kaufman_log_partition(L, k), mpmath.mpf(coupling))
        return float(derivative / (L * L))


def chi_square_p_value(bonds, magnet, coupling: float) -> float:
    """p-value of the sampled (S_nn, M) histogram against the exact 4x4 Boltzmann probabilities."""
    return chi_square_against(bonds, magnet, exact_joint_probabilities(coupling))


def chi_square_against(bonds, magnet, exact: dict[tuple[int, int], float]) -> float:
    """p-value of the sampled (S_nn, M) histogram against the probabilities ``exact``.

    Outcomes expected fewer than 5 times are pooled into one bin, as the chi-square approximation
    requires.
    """
    n = len(bonds)
    counts: dict[tuple[int, int], int] = {}
    for key in zip(bonds, magnet, strict=True):
        counts[key] = counts.get(key, 0) + 1
    assert set(counts) <= set(exact), "sampled a state of impossible (S_nn, M)"
    big = [key for key, p in exact.items() if n * p >= 5]
    observed = [counts.get(key, 0) for key in big]
    expected = [n * exact[key] for key in big]
    rest_expected = n - sum(expected)
    if rest_expected > 1e-9:
        observed.append(n - sum(observed))
        expected.append(rest_expected)
    statistic = sum((o - e) ** 2 / e for o, e in zip(observed, expected, strict=True))
    # Survival function of chi-square with k - 1 degrees of freedom: Q((k - 1) / 2, statistic / 2),
    # the regularized upper incomplete gamma function (torch has it; the GPU check has no scipy).
    dof = torch.tensor((len(observed) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(statistic / 2, dtype=torch.float64)))


#: Sweeps from the hot start before the 4x4 sample: 100, except for the interpreted fused kernel,
#: whose 4x4 distribution is computed exactly in tests/test_fused.py: after 12 sweeps it is the
#: chain's limit to within 0.3 in the chi-square's non-centrality at 20,000 samples (at K_c, where
#: relaxation is slowest), so 12 sweeps test exactly what 100 would; and Swendsen-Wang (eager torch,
#: 0.1 s a sweep of 20,000 chains on one core): from the hot start the distance of the mean S_nn
#: and |M| to their exact 4x4 values shrinks by a factor 0.61 a sweep at K_c and 0.5 at K = -0.3
#: (10^5 chains, sweeps 1-6), so after 30 sweeps it is ~10^-6 of the hot start's, far below what
#: 20,000 samples resolve.
SWEEPS_4X4 = {"metropolis-fused": 12 if FUSED_INTERPRETED else 100, "swendsen-wang": 30}


def sample_4x4(algorithm: str, coupling: float, seed: int, n_chains: int = 20_000):
    """One configuration from each of ``n_chains`` chains, some sweeps after a hot start."""
    model = IsingModel(L=4, coupling=coupling)
    sampler = make_sampler(model, algorithm, "cpu", seed)
    n_sweeps = SWEEPS_4X4.get(algorithm, 100)
    spins = sampler.spins_of(sampler.step(sampler.init(n_chains), n_sweeps))
    return bond_sum(spins, 2).long().tolist(), magnetization(spins).long().tolist()


# --------------------------------------------------------------------------------------------------
# Exact references are right


def test_kaufman_matches_enumeration_on_4x4():
    bonds, _ = enumerate_4x4()
    for coupling in (0.1, K_C_2D, 0.7):
        weights = np.exp(coupling * bonds)
        exact_log_z = math.log(weights.sum())
        exact_correlation = float((bonds * weights).sum() / weights.sum()) / 16
        assert float(kaufman_log_partition(4, coupling)) == pytest.approx(exact_log_z, rel=1e-12)
        assert kaufman_bond_correlation(4, coupling) == pytest.approx(exact_correlation, rel=1e-10)


def test_kaufman_approaches_onsager_at_criticality():
    # The bulk value at K_c is sqrt(2); the periodic lattice exceeds it by O(1/L).
    values = [kaufman_bond_correlation(L, K_C_2D) for L in (8, 16, 32)]
    assert values[0] > values[1] > values[2] > math.sqrt(2)
    assert values[2] - math.sqrt(2) < 0.5 * (values[1] - math.sqrt(2)) + 1e-3


# --------------------------------------------------------------------------------------------------
# Exact distribution on 4x4


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("coupling", [K_C_2D, 0.25, -0.3])
def test_exact_distribution_4x4(algorithm, coupling):
    bonds, magnet = sample_4x4(algorithm, coupling, seed=11)
    assert chi_square_p_value(bonds, magnet, coupling) > P_MIN


def test_chi_square_has_power():
    # The same test must reject samples drawn at a coupling only 5% off.
    bonds, magnet = sample_4x4("wolff", 1.05 * K_C_2D, seed=3)
    assert chi_square_p_value(bonds, magnet, K_C_2D) < 1e-6


def test_every_registered_algorithm_is_tested():
    assert set(available_algorithms()) == set(ALGORITHM_NAMES)


# --------------------------------------------------------------------------------------------------
# Exact finite-size energy at L = 32, K_c

# (chains, thermalization sweeps, kept samples per chain, sweeps between them, largest acceptable
# standard error): each case runs in about 3 s on one core. The torch reference samplers are slow
# enough that 3 s buys a standard error near 4e-3 per site (4 sigma = 0.017, still below the 0.019 by
# which L = 32 differs from the bulk sqrt 2, and a 2% error in K shifts the value by 0.02); the
# compiled ones reach 1.5e-3. ``pytest -m slow`` runs all four with 8x the chains (~5 minutes).
ENERGY_RUNS = {
    "heatbath": (192, 800, 6, 25, 5e-3),
    "metropolis": (192, 500, 8, 20, 5e-3),
    "metropolis-msc": (256, 1000, 50, 10, 2e-3),
    # On CUDA (the kernels run there even for device="cpu") the GPU buys 10x the chains; under the
    # interpreter the torch reference's statistics take ~7 minutes, so the case is marked slow there
    # (the default run checks the kernel bit for bit against a numpy reference in test_fused.py).
    "metropolis-fused": (192, 500, 8, 20, 5e-3) if FUSED_INTERPRETED else (2048, 1000, 8, 20, 2e-3),
    "wolff": (128, 100, 50, 2, 2.5e-3),
    # tau_int(S_nn) = 3.75(14) sweeps; eager torch, ~3500 chain-sweeps/s at L = 32 on one core.
    "swendsen-wang": (64, 100, 24, 4, 5e-3),
}
ENERGY_ALGORITHMS = [
    pytest.param(
        name, marks=[NEEDS_TRITON, pytest.mark.slow] if FUSED_INTERPRETED else NEEDS_TRITON
    )
    if name == "metropolis-fused"
    else name
    for name in ALGORITHM_NAMES
]


def check_energy_against_kaufman(
    algorithm, n_chains, n_thermalize, per_chain, n_between, largest, device="cpu"
):
    model = IsingModel(L=32)
    samples = draw_samples(
        model,
        n_chains * per_chain,
        algorithm=algorithm,
        n_chains=n_chains,
        n_thermalize=n_thermalize,
        n_between=n_between,
        seed=5,
        device=device,
    )
    chain_means = samples.energy.mean(0) / model.n_sites
    mean = float(chain_means.mean())
    error = float(chain_means.std() / math.sqrt(n_chains))  # chains are independent
    exact = kaufman_bond_correlation(32, K_C_2D)
    assert error < largest, "too few samples for the test to mean anything"
    assert abs(mean - exact) < 4 * error, f"{mean:.5f} +- {error:.5f} vs exact {exact:.5f}"


@pytest.mark.parametrize("algorithm", ENERGY_ALGORITHMS)
def test_energy_matches_kaufman_at_criticality(algorithm):
    check_energy_against_kaufman(algorithm, *ENERGY_RUNS[algorithm])


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_energy_matches_kaufman_precisely(algorithm):
    if algorithm == "metropolis-fused" and FUSED_INTERPRETED:
        pytest.skip("8x the chains under Triton's interpreter would take about an hour")
    # 8x the chains: the standard error shrinks by sqrt 8, so must the largest acceptable one.
    n_chains, n_thermalize, per_chain, n_between, largest = ENERGY_RUNS[algorithm]
    check_energy_against_kaufman(
        algorithm, 8 * n_chains, 2 * n_thermalize, per_chain, n_between, largest / 2.5
    )


# --------------------------------------------------------------------------------------------------
# Reproducibility and independence of chains


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_same_seed_same_samples(algorithm, device):
    if algorithm in ("metropolis-msc", "wolff") and device != "cpu":
        pytest.skip("compiled samplers run on the CPU")
    model = IsingModel(L=8)
    kwargs = dict(algorithm=algorithm, n_chains=4, n_thermalize=5, n_between=2, device=device)
    first = draw_samples(model, 12, seed=7, **kwargs)
    again = draw_samples(model, 12, seed=7, **kwargs)
    other = draw_samples(model, 12, seed=8, **kwargs)
    assert first.spins.dtype == torch.int8 and first.spins.shape == (12, 8, 8)
    assert set(first.spins.unique().tolist()) <= {-1, 1}
    assert torch.equal(first.spins, again.spins)
    assert not torch.equal(first.spins, other.spins)


@pytest.mark.parametrize("algorithm", ["metropolis-msc", "wolff"])
def test_chains_do_not_share_randomness(algorithm):
    """Neighbouring chains (lanes of one word, rows of one array) must be uncorrelated.

    Chains driven by shared random numbers synchronize; their energies would then correlate.
    The mean correlation over 127 neighbouring pairs is compared with its null spread, which the
    test measures itself from pairs of chains far apart (a different word, different stream).
    """
    model = IsingModel(L=8)
    samples = draw_samples(
        model, 256 * 100, algorithm=algorithm, n_chains=256, n_thermalize=20, n_between=5, seed=2
    )
    energy = samples.energy - samples.energy.mean(0)
    energy = energy / energy.norm(dim=0)
    neighbours = (energy[:, :127] * energy[:, 1:128]).sum(0)
    distant = (energy[:, :128] * energy[:, 128:]).sum(0)
    spread = float(distant.std()) / math.sqrt(127)
    assert abs(float(neighbours.mean())) < 5 * spread
    # Far from K_c a 64-spin state repeats with negligible probability, unless chains synchronize.
    hot = draw_samples(
        IsingModel(L=8, coupling=0.1), 256, algorithm=algorithm, n_chains=256, seed=2
    )
    assert len({tuple(row) for row in hot.spins.flatten(1).tolist()}) == 256


def test_iterate_samples_streams_float_spins():
    model = IsingModel(L=8)
    batches = list(iterate_samples(model, 8, algorithm="wolff", n_chains=4, n_thermalize=2))
    assert len(batches) == 2
    assert all(b.dtype == torch.float32 and b.shape == (4, 8, 8) for b in batches)


# --------------------------------------------------------------------------------------------------
# Autocorrelation time


def test_autocorrelation_time_of_ar1_process():
    # x_t = a x_{t-1} + noise has rho(t) = a^t and tau_int = (1 + a) / (2 (1 - a)) exactly.
    a = 0.8
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 8, generator=generator, dtype=torch.float64)
    series = torch.empty_like(noise)
    series[0] = noise[0] / math.sqrt(1 - a * a)
    for t in range(1, len(noise)):
        series[t] = a * series[t - 1] + noise[t]
    tau, error, window = autocorrelation_time(series)
    assert tau == pytest.approx((1 + a) / (2 * (1 - a)), abs=4 * error)
    assert window > 0 and error < 0.2
    white, _, _ = autocorrelation_time(noise)
    assert white == pytest.approx(0.5, abs=0.05)


# --------------------------------------------------------------------------------------------------
# 3D: the torch reference and the Wolff kernel agree


def test_3d_wolff_agrees_with_metropolis():
    model = IsingModel(L=4, dim=3)
    means = []
    for algorithm, n_chains, n_between in (("metropolis", 256, 10), ("wolff", 256, 2)):
        samples = draw_samples(
            model,
            n_chains * 20,
            algorithm=algorithm,
            n_chains=n_chains,
            n_thermalize=200,
            n_between=n_between,
            seed=4,
        )
        chain_means = samples.energy.mean(0) / model.n_sites
        means.append((float(chain_means.mean()), float(chain_means.std()) / math.sqrt(n_chains)))
        assert samples.spins.shape == (n_chains * 20, 4, 4, 4)
    (a, da), (b, db) = means
    assert abs(a - b) < 4 * math.hypot(da, db)


# --------------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(L=5), "L="),
        (dict(L=2), "L="),
        (dict(dim=4), "dim="),
        (dict(coupling=float("nan")), "coupling="),
    ],
)
def test_bad_model_names_setting(kwargs, name):
    with pytest.raises(ValueError, match=name):
        IsingModel(**kwargs)


def test_bad_sampling_names_setting():
    model = IsingModel(L=4)
    with pytest.raises(ValueError, match="algorithm="):
        make_sampler(model, "glauber")
    for kwargs, name in [
        (dict(n_thermalize=-1), "n_thermalize="),
        (dict(n_between=0), "n_between="),
        (dict(n_chains=3), "n_samples="),
    ]:
        with pytest.raises(ValueError, match=name):
            draw_samples(model, 10, algorithm="heatbath", **kwargs)
    with pytest.raises(ValueError, match="dim="):
        make_sampler(IsingModel(L=4, dim=3), "metropolis-msc")


# --------------------------------------------------------------------------------------------------
# Defaults that depend on the machine and on the dynamics


def test_resolve_device_and_default_algorithm():
    has_cuda = torch.cuda.is_available()
    assert resolve_device("auto") == torch.device("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert default_algorithm("cpu") == "wolff"
    expected = (
        ("metropolis-fused" if fused.triton_available() else "metropolis") if has_cuda else "wolff"
    )
    assert default_algorithm("auto") == expected
    for bad in ["gpu0", "meta"] + ([] if has_cuda else ["cuda", "cuda:0"]):
        with pytest.raises(ValueError, match="device="):
            resolve_device(bad)


def test_default_spacing_follows_measured_tau_int():
    # Metropolis: tau_int(|m|) = 36.9(1.1) sweeps at L = 32 -> 2 (36.9 + 2.2) = 78.2 -> 79 sweeps.
    assert default_spacing("metropolis-fused", 32) == (978, 79)
    assert default_spacing("metropolis-msc", 32) == (978, 79)
    # The data module's Wolff default (n_between = 4) is what the rule gives at L = 32; its hot
    # start needs 200 (L / 32)^2 sweeps (docs/sampler.md).
    assert default_spacing("wolff", 32) == (200, 4)
    assert default_spacing("wolff", 128) == (3200, 5)
    # Swendsen-Wang: tau_int(|m|) = 3.25(12) sweeps at L = 32, z = 0.25; 200 sweeps from hot start.
    assert default_spacing("swendsen-wang", 32) == (200, 7)
    assert default_spacing("swendsen-wang", 128) == (200, 10)
    # Local updates slow down as L^2.17.
    n_thermalize, n_between = default_spacing("metropolis-fused", 128)
    assert n_between == math.ceil(78.2 * 4**2.17)
    assert n_thermalize == math.ceil(25 * 39.1 * 4**2.17)
    with pytest.raises(ValueError, match="dim=3"):
        default_spacing("wolff", 16, dim=3)
    with pytest.raises(ValueError, match="algorithm="):
        default_spacing("glauber", 32)
