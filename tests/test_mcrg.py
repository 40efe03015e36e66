"""MCRG engine (issue #4): interactions, transformations, streaming sums, jackknife, exact results.

Statistics come from the fastest registered sampler (Wolff,
otherwise the torch heat-bath with longer thinning). Every tolerance is a multiple of an error bar
measured in the same test (plus, for Swendsen's numbers, the published one).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.stats
import torch

from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.samplers import available_algorithms
from rbmrg.lattice.sampling import draw_samples, iterate_samples
from rbmrg.rg.interactions import (
    CHAIN_NN,
    EVEN,
    EVEN_CANDIDATES,
    EVEN_SETS,
    ODD,
    ODD_CANDIDATES,
    ODD_SETS,
    Interaction,
    interaction_names,
    interaction_set,
    measure,
)
from rbmrg.rg.interactions_3d import EVEN_CANDIDATES_3D, ODD_CANDIDATES_3D
from rbmrg.rg.mcrg import (
    MCRGAccumulator,
    SingularWarning,
    chain_blocks,
    chain_major_batches,
    format_value,
    leading_exponent,
    leading_exponents,
    run_mcrg,
)
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import _block_sums, decimation, iterate, majority, rbm

if "wolff" in available_algorithms():
    ALGORITHM, N_THERMALIZE, N_BETWEEN = "wolff", 100, 2  # tau_int ~ 2 sweeps at K_c, L = 32
else:  # pragma: no cover - numba is a declared dependency
    ALGORITHM, N_THERMALIZE, N_BETWEEN = "heatbath", 1000, 20  # tau_int(E) ~ 20 sweeps

#: Swendsen's majority-rule values quoted in Table 1 of Chung & Kao: (N_r, N_c) -> (y_t, error).
SWENDSEN = {(1, 1): (0.904, 0.001), (1, 7): (0.967, 0.003), (2, 7): (0.997, 0.003)}


def stream(model, n_samples, n_chains, n_blocks, seed, **kwargs):
    """(spins, block index) batches straight from the sampler, one row per chain."""
    blocks = chain_blocks(n_chains, n_blocks)
    for spins in iterate_samples(
        model,
        n_samples,
        algorithm=kwargs.get("algorithm", ALGORITHM),
        n_chains=n_chains,
        n_thermalize=kwargs.get("n_thermalize", N_THERMALIZE),
        n_between=kwargs.get("n_between", N_BETWEEN),
        seed=seed,
    ):
        yield spins, blocks


# ------------------------------------------------------------------------------------------------
# Interactions


def naive_measure(config: np.ndarray, interaction: Interaction) -> int:
    """S_alpha(sigma) by an explicit loop over sites and terms (periodic), one configuration."""
    L = config.shape[0]
    total = 0
    for site in itertools.product(range(L), repeat=config.ndim):
        for term in interaction.terms:
            product = 1
            for offset in term:
                product *= config[tuple((s + o) % L for s, o in zip(site, offset, strict=True))]
            total += product
    return total


def test_measure_equals_the_site_loop():
    generator = torch.Generator().manual_seed(0)
    spins = (torch.randint(0, 2, (3, 6, 6), generator=generator) * 2 - 1).to(torch.int8)
    values = measure(spins, EVEN + ODD)
    for row, config in enumerate(spins.numpy()):
        expected = [naive_measure(config, i) for i in EVEN + ODD]
        assert values[row].tolist() == expected
    chain = torch.randint(0, 2, (4, 10), generator=generator) * 2.0 - 1
    assert measure(chain, CHAIN_NN)[:, 0].tolist() == [
        naive_measure(c, CHAIN_NN[0]) for c in chain.numpy()
    ]


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("dtype", [torch.int8, torch.float32, torch.float64])
def test_measure_equals_the_site_loop_in_every_dimension(monkeypatch, path, dtype):
    """The compiled kernel (CPU) and the torch path (other devices) against the site loop: every
    candidate interaction of the square and cubic lattices, at sizes where some do not fit (NaN)."""
    if path == "torch":
        monkeypatch.setattr("rbmrg.rg.interactions.measure_pm1", lambda *args: None)
    generator = torch.Generator().manual_seed(3)
    square = tuple(EVEN_CANDIDATES.values()) + tuple(ODD_CANDIDATES.values())
    cubic = tuple(EVEN_CANDIDATES_3D.values()) + tuple(ODD_CANDIDATES_3D.values())
    for shape, interactions in (((5, 7, 7), square), ((3, 4, 4), square), ((2, 5, 5, 5), cubic)):
        spins = (torch.randint(0, 2, shape, generator=generator) * 2 - 1).to(dtype)
        values = measure(spins, interactions)
        for row, config in enumerate(spins.numpy()):
            expected = [
                naive_measure(config, i) if i.fits(shape[-1]) else math.nan for i in interactions
            ]
            np.testing.assert_array_equal(values[row].numpy(), expected)


def test_measure_of_values_other_than_pm1_falls_back_to_torch():
    """The kernel handles +-1 only; other values (a mean field, say) go through torch."""
    generator = torch.Generator().manual_seed(4)
    values = torch.rand((3, 6, 6), generator=generator) * 2 - 1
    got = measure(values, EVEN + ODD)
    for row, config in enumerate(values.double().numpy()):
        expected = [naive_measure(config, i) for i in EVEN + ODD]
        np.testing.assert_allclose(got[row].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_interaction_sets_respect_the_lattice_symmetries():
    """Even (odd) interactions are even (odd) under a global flip; all are invariant under the
    rotations and reflections of the square lattice, so no orientation of a term is missing."""
    generator = torch.Generator().manual_seed(1)
    spins = torch.randint(0, 2, (4, 8, 8), generator=generator) * 2.0 - 1
    even, odd = measure(spins, EVEN), measure(spins, ODD)
    assert torch.equal(measure(-spins, EVEN), even)
    assert torch.equal(measure(-spins, ODD), -odd)
    for image in (spins.rot90(1, (1, 2)), spins.transpose(1, 2), spins.flip(1)):
        assert torch.equal(measure(image, EVEN), even)
        assert torch.equal(measure(image, ODD), odd)


def _at(config: np.ndarray, row: int, col: int) -> np.ndarray:
    """sigma_{r + (row, col)} for every site r (periodic)."""
    return np.roll(config, (-row, -col), (0, 1))


def _pair_sum(config: np.ndarray, *offsets: tuple[int, int]) -> int:
    return int(sum((config * _at(config, *o)).sum() for o in offsets))


def _product_sum(config: np.ndarray, *terms: tuple[tuple[int, int], ...]) -> int:
    total = 0
    for term in terms:
        product = np.ones_like(config)
        for offset in term:
            product = product * _at(config, *offset)
        total += int(product.sum())
    return total


#: The interactions as docs/mcrg.md describes them in words, written independently of their terms.
DOCS = {
    "nn": lambda c: _pair_sum(c, (0, 1), (1, 0)),
    "diag": lambda c: _pair_sum(c, (1, 1), (1, -1)),
    "third": lambda c: _pair_sum(c, (0, 2), (2, 0)),
    "knight": lambda c: _pair_sum(c, (1, 2), (2, 1), (1, -2), (2, -1)),
    "diag2": lambda c: _pair_sum(c, (2, 2), (2, -2)),
    "sixth": lambda c: _pair_sum(c, (0, 3), (3, 0)),
    "plaquette": lambda c: int((c * _at(c, 0, 1) * _at(c, 1, 0) * _at(c, 1, 1)).sum()),
    "diamond": lambda c: int((_at(c, 0, 1) * _at(c, 1, 0) * _at(c, 0, -1) * _at(c, -1, 0)).sum()),
    "magnetization": lambda c: int(c.sum()),
    # each corner of every 2x2 plaquette left out once: (sum of the 4 spins) x (their product)
    "plaquette3": lambda c: int(
        (
            (c + _at(c, 0, 1) + _at(c, 1, 0) + _at(c, 1, 1))
            * c
            * _at(c, 0, 1)
            * _at(c, 1, 0)
            * _at(c, 1, 1)
        ).sum()
    ),
    "row3": lambda c: _product_sum(c, ((0, 0), (0, 1), (0, 2)), ((0, 0), (1, 0), (2, 0))),
    "diag3": lambda c: _product_sum(c, ((0, 0), (1, 1), (2, 2)), ((0, 0), (1, -1), (2, -2))),
    # a V of two diagonal bonds: apex (1, 1) below/right of ends, or (0, 1) above, etc.: the apex
    # at the centre, its two diagonal neighbours on one side (4 sides)
    "vee3": lambda c: _product_sum(
        c,
        ((0, 0), (-1, -1), (-1, 1)),
        ((0, 0), (1, -1), (1, 1)),
        ((0, 0), (-1, -1), (1, -1)),
        ((0, 0), (-1, 1), (1, 1)),
    ),
    "cross5": lambda c: int(
        (c * _at(c, 0, 1) * _at(c, 1, 0) * _at(c, 0, -1) * _at(c, -1, 0)).sum()
    ),
    "x5": lambda c: int((c * _at(c, 1, 1) * _at(c, 1, -1) * _at(c, -1, 1) * _at(c, -1, -1)).sum()),
    # an L with arms 2 and 1 from its corner, in all 8 orientations
    "ell3": lambda c: _product_sum(
        c,
        *(((0, 0), (2 * a, 0), (0, b)) for a in (1, -1) for b in (1, -1)),
        *(((0, 0), (0, 2 * a), (b, 0)) for a in (1, -1) for b in (1, -1)),
    ),
    # three corners of a 3x3 square: (sum of the 4 corners) x (their product)
    "corners3": lambda c: int(
        (
            (c + _at(c, 0, 2) + _at(c, 2, 0) + _at(c, 2, 2))
            * c
            * _at(c, 0, 2)
            * _at(c, 2, 0)
            * _at(c, 2, 2)
        ).sum()
    ),
}


def test_interactions_are_what_the_docs_say():
    """Every candidate against its description in docs/mcrg.md, by an independent formula."""
    generator = torch.Generator().manual_seed(12)
    spins = (torch.randint(0, 2, (3, 8, 8), generator=generator) * 2 - 1).to(torch.int8)
    candidates = {**EVEN_CANDIDATES, **ODD_CANDIDATES}
    assert set(candidates) == set(DOCS)
    values = measure(spins, tuple(candidates.values()))
    for row, config in enumerate(spins.numpy().astype(np.int64)):
        assert values[row].tolist() == [DOCS[name](config) for name in candidates]


def test_candidates_are_distinct_and_symmetric():
    """No candidate is a combination of the others (A would be singular), and each is closed under
    the rotations and reflections of the square lattice and has the parity of its set."""
    generator = torch.Generator().manual_seed(13)
    spins = torch.randint(0, 2, (300, 8, 8), generator=generator) * 2.0 - 1
    for candidates, sign in ((EVEN_CANDIDATES, 1), (ODD_CANDIDATES, -1)):
        interactions = tuple(candidates.values())
        values = measure(spins, interactions)
        assert torch.linalg.matrix_rank(values) == len(interactions)
        assert torch.equal(measure(-spins, interactions), sign * values)
        assert all(i.odd == (sign < 0) for i in interactions)
        for image in (spins.rot90(1, (1, 2)), spins.transpose(1, 2), spins.flip(1)):
            assert torch.equal(measure(image, interactions), values)


def test_named_interaction_sets():
    assert EVEN is EVEN_SETS["span"] and ODD is ODD_SETS["size"]
    assert interaction_names(EVEN_SETS["span"]) == [
        "nn",
        "diag",
        "plaquette",
        "third",
        "knight",
        "diamond",
        "diag2",
    ]
    assert interaction_names(EVEN_SETS["distance"]) == [
        "nn",
        "diag",
        "third",
        "knight",
        "diag2",
        "plaquette",
        "diamond",
    ]
    assert sorted(interaction_names(EVEN_SETS["span"])) == sorted(
        interaction_names(EVEN_SETS["distance"])
    )
    assert interaction_set("distance") == EVEN_SETS["distance"]
    assert interaction_set(["nn", "sixth"]) == (EVEN_CANDIDATES["nn"], EVEN_CANDIDATES["sixth"])
    assert interaction_set("size", "odd") == ODD


@pytest.mark.parametrize(
    "spec, parity, message",
    [
        (
            "table1",
            "even",
            r"mcrg.even_set='table1': unknown even interaction set; choose one of \['distance', 'span'\]",
        ),
        (
            ["nn", "nnn"],
            "even",
            r"mcrg.even_set=\['nn', 'nnn'\]: unknown even interaction\(s\) \['nnn'\]",
        ),
        (["nn", "magnetization"], "even", r"\['magnetization'\] are not even"),
        (["nn", "diag", "nn"], "even", r"\['nn'\] listed twice"),
        ([], "odd", r"mcrg.odd_set=\[\]: give at least one"),
        (3, "odd", r"mcrg.odd_set=3: must be a set name"),
    ],
)
def test_interaction_set_errors_name_the_setting(spec, parity, message):
    with pytest.raises(ValueError, match=message):
        interaction_set(spec, parity)


def test_interactions_that_do_not_fit_are_nan():
    spins = torch.ones(2, 4, 4)
    values = measure(spins, EVEN)
    fits = [i.span * 2 < 4 for i in EVEN]
    assert fits == [True, True, True, False, False, False, False]
    assert torch.isnan(values[:, ~torch.tensor(fits)]).all()
    assert values[:, :3].tolist() == [[32.0, 32.0, 16.0]] * 2


# ------------------------------------------------------------------------------------------------
# Transformations


def test_majority_rule_and_tie_break():
    generator = torch.Generator().manual_seed(2)
    spins = torch.randint(0, 2, (4000, 8, 8), generator=generator) * 2.0 - 1
    blocks = majority(2)(spins, generator)
    sums = spins.view(4000, 4, 2, 4, 2).sum((2, 4))
    decided = sums != 0
    assert torch.equal(blocks[decided], torch.sign(sums[decided]))
    ties = blocks[~decided]
    assert set(ties.unique().tolist()) == {-1.0, 1.0}
    # Binomial test: a tie is +1 with probability 1/2.
    assert scipy.stats.binomtest(int((ties > 0).sum()), ties.numel()).pvalue > 1e-3


def test_block_sums_in_two_and_three_dimensions():
    generator = torch.Generator().manual_seed(5)
    for shape, b in (((3, 8, 8), 2), ((2, 6, 6, 6), 2), ((2, 6, 6, 6), 3), ((2, 9, 9), 3)):
        spins = torch.randint(0, 2, shape, generator=generator) * 2.0 - 1
        dim, L = len(shape) - 1, shape[-1]
        grouped = spins.view(shape[0], *[n for _ in range(dim) for n in (L // b, b)])
        assert torch.equal(_block_sums(spins, b), grouped.sum(tuple(range(2, 2 * dim + 1, 2))))


@pytest.mark.parametrize(
    ("filter_size", "stride", "L"), [(2, 2, 16), (3, 2, 16), (8, 2, 16), (5, 3, 18)]
)
def test_learned_transform_draws_as_the_convolution_does(filter_size, stride, L):
    """The compiled block-spin draw of transforms.rbm (2D, CPU) against ConvRBM.sample_hidden with
    the same generator state: the same uniforms, compared with the same sigmoid(2 h). The fields are
    summed in another order, so a draw may differ only where its uniform lies within a few
    roundings of its probability."""
    torch.manual_seed(6)
    model = ConvRBM(filter_size=filter_size, stride=stride, init_scale=0.5)
    generator = torch.Generator().manual_seed(7)
    spins = torch.randint(0, 2, (400, L, L), generator=generator) * 2.0 - 1
    state = generator.get_state()
    fast = rbm(model)(spins, generator)
    after_fast = generator.get_state()
    generator.set_state(state)
    uniforms = torch.rand(fast.shape, generator=generator)
    assert torch.equal(generator.get_state(), after_fast)  # the same draws were taken
    probability = model.hidden_probability(spins).detach()
    reference = torch.where(uniforms < probability, 1.0, -1.0)
    differ = fast != reference
    assert fast.dtype == torch.float32 and set(fast.unique().tolist()) == {-1.0, 1.0}
    assert torch.all((uniforms[differ] - probability[differ]).abs() < 1e-6)
    assert differ.sum() <= 2


def test_decimation_keeps_the_first_spin_of_each_block():
    spins = torch.randint(0, 2, (3, 8, 8)) * 2.0 - 1
    assert torch.equal(decimation(2)(spins, None), spins[:, ::2, ::2])
    chain = torch.randint(0, 2, (3, 12)) * 2.0 - 1
    assert torch.equal(decimation(3)(chain, None), chain[:, ::3])


# ------------------------------------------------------------------------------------------------
# Exactly solvable: decimation of the periodic chain


def test_chain_decimation_gives_the_exact_eigenvalue():
    """tanh K' = tanh^2 K for b = 2 decimation, so T = dK'/dK = 2t / (1 + t^2), t = tanh K.

    On a periodic ring the decimated weight is exactly exp(K' S'_nn + const), so the one-coupling
    MCRG ratio B / A equals T at any L; two steps give the same formula at t' = t^2.
    """
    model = IsingModel(L=32, coupling=0.5, dim=1)
    result = run_mcrg(
        stream(model, 40_000, 200, 20, seed=3),
        [decimation(2)],
        n_rg_steps=2,
        scale=2.0,
        sets={"even": CHAIN_NN},
    )
    y, err = result.y["even"][:, 0], result.err["even"][:, 0]
    t = math.tanh(0.5)
    exact = np.log2([2 * t / (1 + t**2), 2 * t**2 / (1 + t**4)])  # 0.7616 and 0.4085
    assert np.all(err > 0) and np.all(err < 0.03)
    assert np.all(np.abs(y - exact) < 4 * err), (y, err, exact)


def test_accumulated_sums_do_not_depend_on_row_order():
    """Rows of mixed blocks in any order give the very same sums (exact integer arithmetic)."""
    generator = torch.Generator().manual_seed(8)
    levels = [torch.randint(0, 2, (300, n, n), generator=generator) * 2.0 - 1 for n in (8, 4)]
    blocks = torch.randint(0, 20, (300,), generator=generator)
    order = torch.randperm(300, generator=generator)
    one, other = MCRGAccumulator(2, 20), MCRGAccumulator(2, 20)
    one.update(levels, blocks)
    other.update([level[order] for level in levels], blocks[order])
    for name in ("count", "sum", "outer"):
        assert torch.equal(getattr(one, name), getattr(other, name))
    rows = (blocks == 3).nonzero().flatten()
    values = torch.cat([measure(level[rows], one.interactions) for level in levels], 1)
    centred = torch.nan_to_num(values - one.shift)
    torch.testing.assert_close(one.outer[3], centred.T @ centred, rtol=0, atol=0)


def test_jackknife_error_matches_the_spread_of_repetitions():
    """30 independent repetitions of the chain MCRG: the sample std s of their y estimates over the
    mean jackknife error must be consistent with sigma. (R - 1) s^2 / sigma^2 is chi-square with
    R - 1 degrees of freedom; the two-sided 99.9% range of s / sigma for R = 30 is [0.59, 1.45].
    (The mean of 30 jackknife errors of 20 blocks each is itself good to ~3%.)
    """
    n_repeats, n_chains, per_chain = 30, 100, 20
    model = IsingModel(L=32, coupling=0.5, dim=1)
    accumulators = [MCRGAccumulator(3, 20, {"even": CHAIN_NN}) for _ in range(n_repeats)]
    blocks = chain_blocks(n_chains, 20)
    for spins in iterate_samples(
        model,
        n_repeats * n_chains * per_chain,
        algorithm=ALGORITHM,
        n_chains=n_repeats * n_chains,
        n_thermalize=50,
        n_between=2,
        seed=4,
    ):
        levels = iterate(spins, [decimation(2)], 2)
        for r, acc in enumerate(accumulators):
            acc.update([level[r * n_chains : (r + 1) * n_chains] for level in levels], blocks)
    estimates = np.array([acc.exponents("even", 2.0)[0][:, 0] for acc in accumulators])
    errors = np.array([acc.exponents("even", 2.0)[1][:, 0] for acc in accumulators])
    ratio = estimates.std(0, ddof=1) / errors.mean(0)
    dof = n_repeats - 1
    low = math.sqrt(scipy.stats.chi2.ppf(0.0005, dof) / dof)
    high = math.sqrt(scipy.stats.chi2.ppf(0.9995, dof) / dof)
    assert np.all((low < ratio) & (ratio < high)), (ratio, low, high)


# ------------------------------------------------------------------------------------------------
# 2D majority rule against Swendsen


def majority_table(n_samples: int, n_chains: int, seed: int):
    model = IsingModel(L=32)
    return run_mcrg(
        stream(model, n_samples, n_chains, 20, seed=seed),
        [majority(2)],
        n_rg_steps=2,
        scale=2.0,
        generator=torch.Generator().manual_seed(seed + 1),
    )


def assert_swendsen(result):
    y, err = result.y["even"], result.err["even"]
    for (n_r, n_c), (published, published_err) in SWENDSEN.items():
        value, error = y[n_r - 1, n_c - 1], err[n_r - 1, n_c - 1]
        tolerance = 4 * math.hypot(error, published_err)
        assert abs(value - published) < tolerance, (n_r, n_c, value, error, published)


def test_majority_rule_agrees_with_swendsen():
    """L = 32 at K_c, 2 x 10^4 samples: y_t within 4 combined error bars of Table 1 (~0.03)."""
    result = majority_table(20_000, 200, seed=5)
    assert np.all(result.err["even"] < 0.02)
    assert_swendsen(result)
    # y_h is far more precise; 15/8 is approached from above as N_r grows.
    assert np.all(np.abs(result.y["odd"] - 15 / 8) < 0.02)


@pytest.mark.slow
def test_majority_rule_agrees_with_swendsen_full_statistics():
    """10^6 samples (the paper's count): error bars ~0.001-0.002, as tight as the published ones."""
    result = majority_table(1_000_000, 1000, seed=6)
    assert np.all(result.err["even"][:, [0, 6]] < 0.003)
    assert_swendsen(result)


# ------------------------------------------------------------------------------------------------
# Streaming sums and jackknife against a direct computation


def direct_exponents(values, blocks, n_levels, width, set_slice, n_blocks, scale):
    """y and jackknife error from the stored (samples, levels * width) values, numpy only."""

    def estimate(rows):
        data = values[rows]
        n_set = set_slice.stop - set_slice.start
        y = np.full((n_levels - 1, n_set), np.nan)
        for level in range(n_levels - 1):
            for n_c in range(1, n_set + 1):
                lower = data[:, level * width + set_slice.start :][:, :n_c]
                upper = data[:, (level + 1) * width + set_slice.start :][:, :n_c]
                both = np.cov(np.hstack([upper, lower]).T, bias=True).reshape(2 * n_c, 2 * n_c)
                y[level, n_c - 1] = leading_exponent(both[:n_c, :n_c], both[:n_c, n_c:], scale)
        return y

    full = estimate(np.ones(len(values), bool))
    jack = np.stack([estimate(blocks != j) for j in range(n_blocks)])
    err = np.sqrt((n_blocks - 1) / n_blocks * ((jack - jack.mean(0)) ** 2).sum(0))
    return full, err


def test_streaming_sums_equal_the_direct_computation():
    model = IsingModel(L=16)
    n_chains, n_blocks = 40, 20
    batches = list(stream(model, 1200, n_chains, n_blocks, seed=7))
    generator = torch.Generator().manual_seed(8)
    levels = [iterate(spins, [majority(2)], 2, generator) for spins, _ in batches]
    acc = MCRGAccumulator(3, n_blocks)
    for level_list, (_, blocks) in zip(levels, batches, strict=True):
        acc.update(level_list, blocks)

    stacked = [torch.cat([lv[n] for lv in levels]) for n in range(3)]
    values = torch.cat([measure(s, EVEN + ODD) for s in stacked], 1).numpy()
    blocks = torch.cat([b for _, b in batches]).numpy()
    width = len(EVEN) + len(ODD)
    with pytest.warns(UserWarning, match="do not fit"):  # the 4x4 level
        for name, part in (("even", slice(0, 7)), ("odd", slice(7, 14))):
            y, err = acc.exponents(name, 2.0)
            y_direct, err_direct = direct_exponents(values, blocks, 3, width, part, n_blocks, 2.0)
            finite = np.isfinite(y)
            assert finite[0].all() and finite.sum() > 7
            np.testing.assert_allclose(y[finite], y_direct[finite], rtol=1e-9)
            np.testing.assert_allclose(err[finite], err_direct[finite], rtol=1e-6)

    means = acc.level_means("even", 0)
    np.testing.assert_allclose([m["mean"] for m in means], values[:, :7].mean(0) / 256, rtol=1e-12)
    assert [m["name"] for m in means] == [i.name for i in EVEN]


def test_any_order_of_a_superset_is_a_choice_of_rows():
    """One pass over all 8 even candidates gives, for the `distance` order, exactly what an
    accumulator built for that order gives; y(N_c = n) depends only on the first n as a set."""
    model = IsingModel(L=16)
    batches = list(stream(model, 1000, 40, 20, seed=14))
    generator = torch.Generator().manual_seed(15)
    levels = [iterate(spins, [majority(2)], 1, generator) for spins, _ in batches]
    superset = MCRGAccumulator(2, 20, {"even": tuple(EVEN_CANDIDATES.values())})
    ordered = MCRGAccumulator(2, 20, {"even": EVEN_SETS["distance"]})
    for level_list, (_, blocks) in zip(levels, batches, strict=True):
        superset.update(level_list, blocks)
        ordered.update(level_list, blocks)
    order = interaction_names(EVEN_SETS["distance"])
    y, err, jack = superset.ordered_exponents("even", order, 2.0)
    y_ref, err_ref = ordered.exponents("even", 2.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-9)
    np.testing.assert_allclose(err, err_ref, rtol=1e-6)
    assert jack.shape == (20, 1, 7)
    shuffled = ["knight", "nn", "third", "diag", "plaquette", "diag2", "diamond"]
    y_shuffled = superset.ordered_exponents("even", shuffled, 2.0)[0]
    np.testing.assert_allclose(y_shuffled[0, 3], y[0, 3], rtol=1e-9)  # {nn, diag, third, knight}
    np.testing.assert_allclose(y_shuffled[0, 6], y[0, 6], rtol=1e-9)  # all seven
    with pytest.raises(KeyError, match="sixth"):
        ordered.ordered_exponents("even", ["nn", "sixth"], 2.0)


def test_chain_major_batches_assign_whole_chains_to_blocks():
    spins = torch.arange(12).view(12, 1, 1).float()  # row c * 3 + k: chain c, sample k
    got = list(chain_major_batches(spins, n_chains=4, n_blocks=2, batch_size=5))
    blocks = torch.cat([b for _, b in got])
    assert blocks.tolist() == [0] * 6 + [1] * 6
    with pytest.raises(ValueError, match="n_blocks"):
        chain_blocks(10, 20)


# ------------------------------------------------------------------------------------------------
# NaN and warnings instead of silent numbers


def small_lattice_levels(L, n_samples, transform, n_rg_steps, seed=9):
    model = IsingModel(L=L)
    generator = torch.Generator().manual_seed(seed)
    for spins, blocks in stream(model, n_samples, 40, 20, seed=seed):
        yield iterate(spins, [transform], n_rg_steps, generator), blocks


def test_level_too_small_gives_nan_and_a_warning():
    """L = 8, N_r = 2: the 4x4 level holds only the span-1 interactions, the 2x2 level none."""
    acc = MCRGAccumulator(3, 20)
    for levels, blocks in small_lattice_levels(8, 800, majority(2), 2):
        acc.update(levels, blocks)
    with pytest.warns(UserWarning, match=r"do not fit the lattice at \(N_r, N_c\) = \[\(1, 4\)"):
        y, err = acc.exponents("even", 2.0)
    assert np.isfinite(y[0, :3]).all() and np.isfinite(err[0, :3]).all()
    assert np.isnan(y[0, 3:]).all() and np.isnan(y[1]).all() and np.isnan(err[1]).all()


def test_singular_a_gives_nan_and_a_warning():
    nn = EVEN[0]
    acc = MCRGAccumulator(2, 20, {"even": (nn, nn)})
    for levels, blocks in small_lattice_levels(8, 800, decimation(2), 1):
        acc.update(levels, blocks)
    with pytest.warns(SingularWarning, match=r"singular A matrix .* \[\(1, 2\)\]"):
        y, err = acc.exponents("even", 2.0)
    assert np.isfinite(y[0, 0]) and np.isfinite(err[0, 0])
    assert np.isnan(y[0, 1]) and np.isnan(err[0, 1])


def test_empty_jackknife_blocks_are_reported():
    acc = MCRGAccumulator(2, 20, {"even": (EVEN[0],)})
    for levels, blocks in small_lattice_levels(8, 400, majority(2), 1):
        acc.update(levels, blocks % 10)
    with pytest.warns(UserWarning, match="received no samples"):
        acc.exponents("even", 2.0)


def test_leading_exponents_of_a_stack_equal_each_matrix_alone(monkeypatch):
    """The stacked solve gives, matrix by matrix, exactly what each gives alone, also when the
    stack mixes singular, non-finite, complex-eigenvalue and ordinary matrices, and when LAPACK
    fails on the stack and every matrix is redone on its own."""
    rng = np.random.default_rng(9)
    a = rng.normal(size=(12, 3, 3)) + 3 * np.eye(3)
    b = rng.normal(size=(12, 3, 3))
    a[2] = np.ones((3, 3))  # singular
    b[3, 0, 0] = np.nan
    b[4] = [[0, -1, 0], [1, 0, 0], [0, 0, 0.5]]  # complex pair and one real eigenvalue
    for odd in (False, True):
        alone = [leading_exponent(a[k], b[k], 2.0, odd=odd) for k in range(12)]
        np.testing.assert_array_equal(leading_exponents(a, b, 2.0, odd=odd), alone)
        assert np.isnan(alone[2]) and np.isnan(alone[3]) and np.isfinite(alone).sum() >= 6
    calls = []

    def failing_on_stacks(matrix):
        calls.append(matrix.ndim)
        if matrix.ndim == 3:
            raise np.linalg.LinAlgError("no convergence")
        return eigvals(matrix)

    eigvals = np.linalg.eigvals
    expected = leading_exponents(a, b, 2.0)
    monkeypatch.setattr(np.linalg, "eigvals", failing_on_stacks)
    np.testing.assert_array_equal(leading_exponents(a, b, 2.0), expected)
    assert calls[0] == 3 and set(calls[1:]) == {2}


def test_leading_exponent_rejects_singular_and_nonfinite_input():
    assert math.isnan(leading_exponent(np.ones((2, 2)), np.eye(2), 2.0))
    assert math.isnan(leading_exponent(np.array([[np.nan]]), np.eye(1), 2.0))
    assert math.isnan(leading_exponent(np.eye(1), -np.eye(1), 2.0))  # no positive eigenvalue
    assert leading_exponent(np.eye(2), np.diag([4.0, 2.0]), 2.0) == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------------
# Paper notation


@pytest.mark.parametrize(
    "value, error, text",
    [
        (1.00012, 0.00109, "1.0001(11)"),
        (0.904, 0.001, "0.9040(10)"),  # leading digit 1: two digits
        (0.967, 0.0034, "0.9670(34)"),
        (1.88015, 0.00025, "1.88015(25)"),
        (0.9217, 0.0009, "0.9217(9)"),
        (0.99, 0.000996, "0.9900(10)"),
        (-1.5, 0.02, "-1.500(20)"),
        (12.34, 1.5, "12.3(15)"),
        (123.0, 12.0, "123(12)"),
        (1.0, 0.0, "1.0000"),
        (1.0, float("nan"), "1.0000(?)"),
        (float("nan"), 0.1, "nan"),
    ],
)
def test_format_value(value, error, text):
    assert format_value(value, error) == text


def test_odd_exponent_does_not_depend_on_the_sign_of_the_block_spins():
    """mu -> -mu after the majority rule is the same RG map: y_h must be unchanged (y_t too)."""
    model = IsingModel(L=16)
    spins = draw_samples(
        model,
        4000,
        algorithm=ALGORITHM,
        n_chains=40,
        n_thermalize=N_THERMALIZE,
        n_between=N_BETWEEN,
        seed=21,
    ).spins
    results = []
    rule = majority(2)
    for sign in (1.0, -1.0):
        flipped = [lambda s, g=None, _sign=sign: _sign * rule(s, g)]
        generator = torch.Generator().manual_seed(5)
        results.append(
            run_mcrg(chain_major_batches(spins, 40, 20), flipped, 1, 2.0, generator=generator)
        )
    plain, flipped = results
    assert np.isfinite(flipped.y["odd"][0]).all()
    np.testing.assert_allclose(flipped.y["odd"], plain.y["odd"], rtol=1e-9)
    np.testing.assert_allclose(flipped.y["even"], plain.y["even"], rtol=1e-9)


def test_cached_level0_values_give_bit_identical_results():
    """Feeding precomputed level-0 interactions (as MCRGCallback does every epoch) changes nothing."""
    from rbmrg.rg.mcrg import level0_values

    generator = torch.Generator().manual_seed(11)
    spins = (torch.randint(0, 2, (600, 16, 16), generator=generator) * 2 - 1).to(torch.int8)
    cached = level0_values(spins, batch_size=256)

    def result(with_cache: bool):
        def batches():
            for start, (rows, blocks) in zip(
                range(0, 600, 128), chain_major_batches(spins, 60, 20, 128), strict=True
            ):
                if with_cache:
                    yield rows, blocks, cached[start : start + rows.shape[0]]
                else:
                    yield rows, blocks

        return run_mcrg(
            batches(), [majority(2)], 2, 2.0, generator=torch.Generator().manual_seed(12)
        )

    with pytest.warns(UserWarning):  # the 4x4 level does not hold every interaction
        plain = result(False)
    with pytest.warns(UserWarning):
        fast = result(True)
    for name in plain.y:
        np.testing.assert_array_equal(fast.y[name], plain.y[name])
        np.testing.assert_array_equal(fast.err[name], plain.err[name])
    assert fast.level0 == plain.level0
