"""Renormalized couplings (issue 15): site sums, the Swendsen (1984) equations, exact results.

Exact checks: the site sums against their definition (a single spin flip), the solver against the
exact Boltzmann average of a 4 x 4 lattice with three couplings (enumeration, no sampling), level 0
of nearest-neighbour configurations (K_nn = K, every other coupling 0) and decimation of the chain
(tanh K' = tanh^2 K). Sampled tolerances are multiples of the jackknife error of the same run.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.samplers import available_algorithms
from rbmrg.lattice.sampling import iterate_samples
from rbmrg.rg import environments
from rbmrg.rg.couplings import (
    CouplingAccumulator,
    check_levels,
    coupling_response,
    solve_couplings,
)
from rbmrg.rg.interactions import (
    CHAIN_NN,
    CHAIN_NNN,
    EVEN,
    EVEN_CANDIDATES,
    ODD,
    ODD_CANDIDATES,
    Interaction,
    measure,
    site_sums,
)
from rbmrg.rg.interactions_3d import EVEN_3D, ODD_3D
from rbmrg.rg.mcrg import chain_blocks
from rbmrg.rg.transforms import decimation, iterate, majority

ALGORITHM = "wolff" if "wolff" in available_algorithms() else "heatbath"
CHAIN_MAGNETIZATION = (Interaction("magnetization", (((0,),),)),)
EVEN_ALL = tuple(EVEN_CANDIDATES.values())
ODD_ALL = tuple(ODD_CANDIDATES.values())


def random_spins(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator) * 2.0 - 1


# ------------------------------------------------------------------------------------------------
# Site sums


@pytest.mark.parametrize("interactions", [EVEN_ALL, ODD_ALL], ids=["even", "odd"])
def test_site_sums_are_the_change_under_one_spin_flip(interactions):
    """S_alpha(sigma) - S_alpha(sigma with sigma_i flipped) = 2 sigma_i S_alpha,i, for every site."""
    spins = random_spins((2, 8, 8), seed=0)
    sums = site_sums(spins, interactions)
    values = measure(spins, interactions)
    for i, j in itertools.product(range(8), repeat=2):
        flipped = spins.clone()
        flipped[:, i, j] *= -1
        change = values - measure(flipped, interactions)
        expected = change / (2 * spins[:, i, j, None].double())
        assert torch.equal(sums[:, :, i, j].double(), expected), (i, j)


def test_site_sums_count_each_term_once_per_member():
    """sum_i sigma_i S_alpha,i = k_alpha S_alpha (k_alpha spins per term); chains too."""
    spins = random_spins((3, 8, 8), seed=1)
    for interactions in (EVEN_ALL, ODD_ALL):
        sizes = torch.tensor([len(i.terms[0]) for i in interactions], dtype=torch.float64)
        weighted = (site_sums(spins, interactions) * spins[:, None]).sum((2, 3)).double()
        assert torch.equal(weighted, sizes * measure(spins, interactions))
    chain = random_spins((3, 12), seed=2)
    both = CHAIN_NN + CHAIN_NNN
    weighted = (site_sums(chain, both) * chain[:, None]).sum(2).double()
    assert torch.equal(weighted, 2 * measure(chain, both))


def test_site_sums_refuse_interactions_that_do_not_fit():
    with pytest.raises(ValueError, match=r"\['sixth'\] do not fit the 6-site"):
        site_sums(torch.ones(1, 6, 6), (EVEN_CANDIDATES["nn"], EVEN_CANDIDATES["sixth"]))
    with pytest.raises(ValueError, match="couplings.set: interactions .* level 2 .L=4"):
        check_levels(EVEN_ALL[:4], [16, 8, 4], "couplings.set")


# ------------------------------------------------------------------------------------------------
# The solver, exactly


def exact_histogram(couplings, interactions, L=4, perturbation=None):
    """Boltzmann-weighted environment histogram of every configuration of an L x L lattice: the s
    vectors, the expected number of sites N(s) and sum of sigma_i M(s) per configuration, and, for
    ``perturbation`` (an interaction O), the O-weighted sums and <O> that a response needs."""
    configs = torch.tensor(list(itertools.product((-1.0, 1.0), repeat=L * L))).view(-1, L, L)
    energy = measure(configs, interactions).numpy() @ np.asarray(couplings)
    weight = np.exp(energy - energy.max())
    weight /= weight.sum()
    sums = site_sums(configs, interactions).numpy()  # (configs, n, L, L)
    s = sums.transpose(0, 2, 3, 1).reshape(-1, len(interactions))
    site_weight = np.repeat(weight, L * L)
    sigma = configs.numpy().reshape(-1)
    keys, inverse = np.unique(s, axis=0, return_inverse=True)
    inverse = inverse.ravel()
    count = np.bincount(inverse, site_weight)
    spin = np.bincount(inverse, site_weight * sigma)
    if perturbation is None:
        return keys, count, spin
    values = measure(configs, (perturbation,)).numpy()[:, 0]
    site_o = np.repeat(values, L * L) * site_weight
    histogram = {
        "count": count,
        "spin": spin,
        "count_o": np.bincount(inverse, site_o),
        "spin_o": np.bincount(inverse, site_o * sigma),
    }
    return keys, histogram, float(weight @ values)


def test_solver_recovers_the_couplings_of_an_enumerated_lattice():
    """<sigma_i g> = <tanh(h_i) g> holds exactly for the exact average: the solution is K itself."""
    interactions = (EVEN_CANDIDATES["nn"], EVEN_CANDIDATES["diag"], EVEN_CANDIDATES["plaquette"])
    couplings = np.array([0.3, -0.1, 0.05])
    s, count, spin = exact_histogram(couplings, interactions)
    np.testing.assert_allclose(solve_couplings(s, count, spin), couplings, atol=1e-10)
    # Dropping an interaction that is present gives a different (projected) answer, not K.
    projected = solve_couplings(s[:, :2], count, spin)
    assert np.isfinite(projected).all() and abs(projected[1] + 0.1) > 1e-3


@pytest.mark.parametrize("perturbation", ["nn", "magnetization", "plaquette"])
def test_response_to_a_term_of_the_hamiltonian_is_exact(perturbation):
    """H + h O with O one of the interactions: dK/dh is the unit vector of O, exactly (4 x 4
    enumeration, an even and an odd coupling together, the odd one at zero)."""
    interactions = (
        EVEN_CANDIDATES["nn"],
        EVEN_CANDIDATES["diag"],
        EVEN_CANDIDATES["plaquette"],
        ODD_CANDIDATES["magnetization"],
    )
    couplings = np.array([0.3, -0.1, 0.05, 0.0])
    names = [i.name for i in interactions]
    target = interactions[names.index(perturbation)]
    s, sums, mean = exact_histogram(couplings, interactions, perturbation=target)
    solved = solve_couplings(s, sums["count"], sums["spin"])
    np.testing.assert_allclose(solved, couplings, atol=1e-10)
    expected = np.zeros(4)
    expected[names.index(perturbation)] = 1.0
    np.testing.assert_allclose(coupling_response(s, sums, mean, solved), expected, atol=1e-9)


def test_solver_reports_runaway_couplings_as_nan():
    """All spins along their field: the likelihood grows without bound, K -> infinity."""
    s = np.array([[4.0], [-4.0], [2.0]])
    count = np.array([5.0, 5.0, 2.0])
    assert np.isnan(solve_couplings(s, count, count * np.sign(s[:, 0]))).all()


# ------------------------------------------------------------------------------------------------
# Streaming histograms


def test_histogram_does_not_depend_on_batching():
    """One batch or many, the stored histogram and the couplings are identical."""
    spins = random_spins((60, 8, 8), seed=3)
    blocks = torch.arange(60) % 20
    levels = iterate(spins, [majority(2)], 1, torch.Generator().manual_seed(4))
    interactions = tuple(EVEN_CANDIDATES[name] for name in ("nn", "diag", "plaquette"))
    whole, parts = (
        CouplingAccumulator(interactions, 2, 20),
        CouplingAccumulator(interactions, 2, 20),
    )
    whole.update(levels, blocks)
    for start in range(0, 60, 7):
        parts.update([level[start : start + 7] for level in levels], blocks[start : start + 7])
    for level in range(2):
        s_whole, sums_whole = whole.environments(level)
        s_parts, sums_parts = parts.environments(level)
        np.testing.assert_array_equal(s_whole, s_parts)
        for key in ("count", "spin"):
            np.testing.assert_array_equal(sums_whole[key], sums_parts[key])
    s, sums = whole.environments(0)
    assert sums["count"].sum() == 60 * 64 and sums["spin"].sum() == spins.sum().item()
    # The environment vectors decode to the site sums that were counted.
    direct = site_sums(spins, interactions).permute(0, 2, 3, 1).reshape(-1, 3).numpy()
    np.testing.assert_array_equal(np.unique(direct, axis=0), np.unique(s, axis=0))
    assert len(s) == len(np.unique(s, axis=0))
    np.testing.assert_array_equal(whole.result().couplings, parts.result().couplings)


def test_a_truncation_is_the_marginal_histogram():
    """result(names) from a larger accumulator equals an accumulator of just those interactions."""
    spins = random_spins((40, 8, 8), seed=5)
    blocks = torch.arange(40) % 20
    big = CouplingAccumulator(EVEN_ALL[:5], 1, 20)
    small = CouplingAccumulator((EVEN_CANDIDATES["third"], EVEN_CANDIDATES["nn"]), 1, 20)
    big.update([spins], blocks)
    small.update([spins], blocks)
    truncated, direct = big.result(["third", "nn"]), small.result()
    assert truncated.names == direct.names == ["third", "nn"]
    np.testing.assert_allclose(truncated.couplings, direct.couplings, rtol=1e-10)
    np.testing.assert_allclose(truncated.errors, direct.errors, rtol=1e-8)
    with pytest.raises(ValueError, match=r"\['sixth'\] not among"):
        big.result(["nn", "sixth"])


# ------------------------------------------------------------------------------------------------
# The compiled counts (rbmrg.rg.environments) against the torch path


def torch_only(monkeypatch):
    """Make every CouplingAccumulator count with torch (the reference)."""
    monkeypatch.setattr(CouplingAccumulator, "_count_compiled", lambda self, *args: 0)


def accumulate(interactions, n_levels, n_blocks, batches, response=False):
    acc = CouplingAccumulator(interactions, n_levels, n_blocks, response=response)
    for levels, blocks, perturbation in batches:
        acc.update(levels, blocks, perturbation)
    return acc


def assert_same_accumulation(compiled, reference):
    """The histograms of every level, array for array, and the whole result, bit for bit."""
    for level in range(compiled.n_levels):
        s, sums = compiled.environments(level)
        s_ref, sums_ref = reference.environments(level)
        np.testing.assert_array_equal(s, s_ref)
        assert sums.keys() == sums_ref.keys()
        for key in sums:
            np.testing.assert_array_equal(sums[key], sums_ref[key])
    result, expected = compiled.result(), reference.result()
    for name in ("couplings", "errors", "jackknife", "response", "response_errors"):
        np.testing.assert_array_equal(getattr(result, name), getattr(expected, name), name)
    assert result.n_environments == expected.n_environments
    assert result.n_samples == expected.n_samples


def random_batches(shape, n_rg_steps, n_blocks, seed, response=False):
    """Three batches of +-1 configurations and their majority levels, with different block
    assignments (chain blocks, a permutation, one block for the whole batch)."""
    generator = torch.Generator().manual_seed(seed)
    batch = shape[0]
    batches = []
    for blocks in (
        torch.arange(batch) * n_blocks // batch,
        torch.randperm(batch, generator=generator) % n_blocks,
        n_blocks - 1,
    ):
        spins = torch.randint(0, 2, shape, generator=generator) * 2.0 - 1
        levels = iterate(spins, [majority(2)], n_rg_steps, generator)
        perturbation = spins.flatten(1).sum(1) if response else None
        batches.append((levels, blocks, perturbation))
    return batches


@pytest.mark.parametrize(
    "interactions, shape, n_rg_steps",
    [
        (EVEN, (150, 32, 32), 2),
        (EVEN, (100, 16, 16), 0),
        (EVEN_ALL, (60, 16, 16), 1),
        (ODD, (60, 16, 16), 1),  # the magnetization: a one-spin term, a constant site sum
        (EVEN_3D[:5], (30, 8, 8, 8), 1),  # span 1: fits the 4^3 level
        (EVEN_3D, (20, 8, 8, 8), 0),  # 1.7e7 codes: the largest space the map takes
        (CHAIN_NN + CHAIN_MAGNETIZATION + CHAIN_NNN, (50, 64), 2),
        (CHAIN_MAGNETIZATION, (20, 16), 1),  # no products at all
    ],
    ids=["2d-even", "2d-one-level", "2d-8-even", "2d-odd", "3d", "3d-even", "chain", "chain-m"],
)
def test_compiled_counts_equal_the_torch_path(monkeypatch, interactions, shape, n_rg_steps):
    batches = random_batches(shape, n_rg_steps, 5, seed=20)
    compiled = accumulate(interactions, n_rg_steps + 1, 5, batches)
    assert compiled._compiled and all(c is not None for c in compiled._key_counts)
    with monkeypatch.context() as patch:
        torch_only(patch)
        reference = accumulate(interactions, n_rg_steps + 1, 5, batches)
    assert reference._key_counts == [None] * (n_rg_steps + 1)
    assert_same_accumulation(compiled, reference)


def test_compiled_counts_of_sampled_configurations(monkeypatch):
    """Critical Wolff configurations (few distinct environments, long runs of one code), three
    levels, batches streamed with chain blocks, read in between (the counts move to the histogram
    and start again), and a count limit that forces that move inside ``update``."""
    model = IsingModel(L=32)
    n_chains, n_blocks = 100, 20
    blocks = chain_blocks(n_chains, n_blocks)
    batches = [
        (iterate(spins, [majority(2)], 2), blocks, None)
        for spins in iterate_samples(
            model, 400, algorithm=ALGORITHM, n_chains=n_chains, n_thermalize=50, seed=21
        )
    ]
    # Level 0 takes 102400 sites a batch: the second and the fourth batch find no room.
    monkeypatch.setattr(environments.KeyCounts, "LIMIT", 150_000)
    taken = []
    take = environments.KeyCounts.take
    monkeypatch.setattr(environments.KeyCounts, "take", lambda self: taken.append(1) or take(self))
    compiled = CouplingAccumulator(EVEN, 3, n_blocks)
    for index, (levels, blocks, _) in enumerate(batches):
        compiled.update(levels, blocks)
        if index == 1:
            compiled.environments(0)
    assert len(batches) == 4 and len(taken) == 3
    with monkeypatch.context() as patch:
        torch_only(patch)
        reference = accumulate(EVEN, 3, n_blocks, batches)
    assert_same_accumulation(compiled, reference)


def test_compiled_counts_leave_other_values_to_torch(monkeypatch):
    """Rows with values other than +-1 are counted by torch, those before them by the kernel
    (chunks of two rows here); other dtypes are read as they are."""
    spins = random_spins((12, 16, 16), seed=22)
    spins[7, 3, 4] = 0.0
    blocks = torch.arange(12) % 4
    batches = [
        ([spins], blocks, None),
        ([random_spins((12, 16, 16), seed=23).to(torch.int8)], blocks, None),
        ([random_spins((12, 16, 16), seed=24).double()], 2, None),
    ]
    monkeypatch.setattr(environments, "KEY_SITES", 2 * 16 * 16)
    monkeypatch.setattr("rbmrg.rg.couplings.KEY_SITES", 2 * 16 * 16)
    compiled = accumulate(EVEN, 1, 4, batches)
    assert compiled._key_counts[0].sites == (6 + 12 + 12) * 16 * 16
    with monkeypatch.context() as patch:
        torch_only(patch)
        reference = accumulate(EVEN, 1, 4, batches)
    assert_same_accumulation(compiled, reference)


def test_response_and_large_code_spaces_are_counted_by_torch(monkeypatch):
    """``response=True`` (float sums weighted by O) and the cubic odd set (1.3e8 codes) stay on
    the torch path, with the same results as before."""
    assert not CouplingAccumulator(ODD_3D, 1, 2)._compiled
    batches = random_batches((40, 16, 16), 1, 4, seed=25, response=True)
    compiled = accumulate(EVEN, 2, 4, batches, response=True)
    assert not compiled._compiled
    with monkeypatch.context() as patch:
        torch_only(patch)
        reference = accumulate(EVEN, 2, 4, batches, response=True)
    assert_same_accumulation(compiled, reference)


# ------------------------------------------------------------------------------------------------
# Sampled: level 0 of the nearest-neighbour model, and decimation of the chain


def sampled_couplings(model, interactions, transform, n_rg_steps, n_samples, seed):
    n_chains, n_blocks = 200, 20
    acc = CouplingAccumulator(interactions, n_rg_steps + 1, n_blocks)
    blocks = chain_blocks(n_chains, n_blocks)
    generator = torch.Generator().manual_seed(seed)
    for spins in iterate_samples(
        model,
        n_samples,
        algorithm=ALGORITHM,
        n_chains=n_chains,
        n_thermalize=100,
        n_between=2,
        seed=seed,
    ):
        acc.update(iterate(spins, [transform], n_rg_steps, generator), blocks)
    return acc.result()


@pytest.mark.parametrize("coupling", [0.2, 0.3, IsingModel(L=16).coupling, 0.5])
def test_nearest_neighbour_configurations_give_k_nn_and_nothing_else(coupling):
    """Level 0 at K = 0.2 and 0.3 (high temperature), K_c and 0.5 (ordered): the solution of the
    8-coupling equations is (K, 0, ..., 0) within 4 jackknife errors per coupling."""
    model = IsingModel(L=16, coupling=coupling)
    result = sampled_couplings(model, EVEN_ALL, majority(2), 0, 4000, seed=10)
    expected = np.zeros(len(EVEN_ALL))
    expected[0] = coupling
    value, error = result.couplings[0], result.errors[0]
    assert np.all(error > 0) and np.all(error < 0.01), error
    assert np.all(np.abs(value - expected) < 4 * error), (value, error)


def test_chain_decimation_follows_the_exact_flow():
    """b = 2 decimation of the periodic chain: tanh K' = tanh^2 K, exactly, and no longer-range
    coupling (the decimated weight is a nearest-neighbour chain). Three levels, K = 0.8."""
    coupling = 0.8
    model = IsingModel(L=64, coupling=coupling, dim=1)
    result = sampled_couplings(model, CHAIN_NN + CHAIN_NNN, decimation(2), 2, 20_000, seed=11)
    exact = [math.atanh(math.tanh(coupling) ** (2**n)) for n in range(3)]  # 0.8, 0.59, 0.38
    value, error = result.couplings, result.errors
    assert np.all(error > 0) and np.all(error < 0.02), error
    assert np.all(np.abs(value[:, 0] - exact) < 4 * error[:, 0]), (value, error, exact)
    assert np.all(np.abs(value[:, 1]) < 4 * error[:, 1]), (value, error)


def test_chain_decimation_response_is_the_derivative_of_the_flow():
    """Responses of the decimated chain by reweighting, against the exact recursion.

    O = S_nn of level 0: dK^(n)/dK^(0) = d/dK atanh(tanh^(2^n) K), i.e. 2t/(1+t^2) after one step
    (the exact MCRG eigenvalue) and 4t^3(1-t^2)/(1-t^8) after two. O = M of level 0 (a field h):
    summing out a spin between s1 and s2 gives h' = h + (1/2) ln[cosh(2K+h)/cosh(2K-h)], so
    dh'/dh = 1 + tanh 2K, and (1 + tanh 2K')(1 + tanh 2K) after two steps; K_nn does not respond.
    """
    coupling, n_chains, n_blocks = 0.8, 200, 20
    model = IsingModel(L=64, coupling=coupling, dim=1)
    interactions = CHAIN_NN + CHAIN_MAGNETIZATION + CHAIN_NNN
    to_coupling = CouplingAccumulator(interactions, 3, n_blocks, response=True)
    to_field = CouplingAccumulator(interactions, 3, n_blocks, response=True)
    blocks = chain_blocks(n_chains, n_blocks)
    for spins in iterate_samples(
        model,
        20_000,
        algorithm=ALGORITHM,
        n_chains=n_chains,
        n_thermalize=100,
        n_between=2,
        seed=12,
    ):
        levels = iterate(spins, [decimation(2)], 2)
        to_coupling.update(levels, blocks, perturbation=measure(spins, CHAIN_NN)[:, 0])
        to_field.update(levels, blocks, perturbation=spins.sum(1))
    t = math.tanh(coupling)
    once = math.atanh(t**2)
    exact = {
        "coupling": np.array(
            [[1, 0, 0], [2 * t / (1 + t**2), 0, 0], [4 * t**3 * (1 - t**2) / (1 - t**8), 0, 0]]
        ),
        "field": np.array(
            [
                [0, 1, 0],
                [0, 1 + math.tanh(2 * coupling), 0],
                [0, (1 + math.tanh(2 * once)) * (1 + math.tanh(2 * coupling)), 0],
            ]
        ),
    }
    for name, acc in (("coupling", to_coupling), ("field", to_field)):
        result = acc.result()
        value, error = result.response, result.response_errors
        assert np.all(error[1:] > 0) and np.all(error < 0.1), (name, error)
        assert np.all(np.abs(value - exact[name]) < 4 * error + 1e-9), (name, value, error)
    with pytest.raises(ValueError, match="perturbation values are needed"):
        to_field.update(levels, blocks)


def test_jackknife_error_matches_the_spread_of_repetitions():
    """20 independent level-0 runs at K_c: the spread of K_nn over runs matches the mean jackknife
    error within the chi^2 range of a sample standard deviation (99.9%, 19 degrees of freedom)."""
    import scipy.stats

    model = IsingModel(L=16)
    runs = [
        sampled_couplings(model, EVEN_ALL[:3], majority(2), 0, 2000, seed=100 + r)
        for r in range(20)
    ]
    values = np.array([r.couplings[0] for r in runs])
    errors = np.array([r.errors[0] for r in runs])
    ratio = values.std(0, ddof=1) / errors.mean(0)
    low, high = (math.sqrt(scipy.stats.chi2.ppf(p, 19) / 19) for p in (0.0005, 0.9995))
    assert np.all((low < ratio) & (ratio < high)), (ratio, low, high)
