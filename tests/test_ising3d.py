"""The simple cubic lattice (issue 14): interactions, 2x2x2 transformations, MCRG with exact answers,
samplers against each other, and the checks that refuse bad 3D settings early.

The RBM's 3D fields, adjointness and free energy are tested against enumeration in test_rbm.py.
Every tolerance is a multiple of an error bar measured in the same test.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import scipy.stats
import torch
from helpers import HeldOut
from hydra import compose, initialize_config_dir

from rbmrg import evaluation
from rbmrg.checkpoint import load_rbm, save_filter
from rbmrg.lattice.model import IsingModel, exact_exponents
from rbmrg.lattice.sampling import draw_samples
from rbmrg.rg.interactions import EVEN, ODD, Interaction, measure
from rbmrg.rg.interactions_3d import (
    EVEN_3D,
    EVEN_CANDIDATES_3D,
    EVEN_SETS_3D,
    ODD_3D,
    ODD_CANDIDATES_3D,
    ODD_SETS_3D,
    default_sets,
    sets_for,
)
from rbmrg.rg.mcrg import chain_blocks, chain_major_batches, run_mcrg
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import decimation, majority
from rbmrg.training.callbacks import MCRGCallback
from rbmrg.training.module import RBMModule
from rbmrg.training.schedules import Constant

CONF = Path(__file__).resolve().parents[1] / "conf"

CANDIDATES = {**EVEN_CANDIDATES_3D, **ODD_CANDIDATES_3D}


def random_spins(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, shape, generator=generator).to(torch.float32) * 2 - 1


# ------------------------------------------------------------------------------------------------
# Interactions


def loop_measure(config: np.ndarray, interaction: Interaction) -> int:
    """S_alpha of one configuration by an explicit loop over sites and terms (periodic)."""
    L = config.shape[0]
    total = 0
    for site in itertools.product(range(L), repeat=3):
        for term in interaction.terms:
            product = 1
            for offset in term:
                product *= config[tuple((s + o) % L for s, o in zip(site, offset, strict=True))]
            total += product
    return int(total)


def test_3d_interactions_equal_the_site_loop():
    """measure() with 3-component offsets against the explicit loop, on 5^3 and 6^3 lattices."""
    for L, seed in ((5, 0), (6, 1)):
        spins = random_spins((2, L, L, L), seed)
        interactions = tuple(CANDIDATES.values())
        values = measure(spins, interactions)
        for row, config in enumerate(spins.numpy()):
            assert values[row].tolist() == [loop_measure(config, i) for i in interactions]


#: Written out by hand: (number of terms, span, spins per term) of every candidate.
HAND_COUNTS = {
    "nn": (3, 1, 2),
    "face_diag": (6, 1, 2),
    "body_diag": (4, 1, 2),
    "pair200": (3, 2, 2),
    "pair210": (12, 2, 2),  # the axis of the 2 (3) x the axis of the 1 (2) x its sign (2)
    "pair211": (12, 2, 2),  # the axis of the 2 (3) x the signs of the 1s (4)
    "pair220": (6, 2, 2),  # the plane (3) x the relative sign (2)
    "plaquette": (3, 1, 4),
    "tetrahedron": (2, 1, 4),
    "cube": (1, 1, 8),
    "magnetization": (1, 0, 1),
    "plaquette3": (12, 1, 3),  # 3 planes x 4 corners left out
    "triangle3": (8, 1, 3),  # 2 tetrahedra x 4 faces
    "row3": (3, 2, 3),
    "plane5": (3, 2, 5),
    "cube7": (8, 1, 7),
    "cross7": (1, 2, 7),
}


def test_3d_candidates_have_the_hand_counted_terms():
    assert set(HAND_COUNTS) == set(CANDIDATES)
    for name, (n_terms, span, size) in HAND_COUNTS.items():
        interaction = CANDIDATES[name]
        assert len(interaction.terms) == n_terms, name
        assert interaction.span == span, name
        assert {len(term) for term in interaction.terms} == {size}, name
    # The pairs, offset by offset (each bond once: o and -o are the same product).
    face = {(1, 1, 0), (1, -1, 0), (1, 0, 1), (1, 0, -1), (0, 1, 1), (0, 1, -1)}
    body = {(1, 1, 1), (1, 1, -1), (1, -1, 1), (1, -1, -1)}
    for name, offsets in (("face_diag", face), ("body_diag", body)):
        got = {tuple(max(term[1], tuple(-x for x in term[1]))) for term in CANDIDATES[name].terms}
        assert got == offsets, name
    # On the all-up 6^3 lattice S_alpha = (number of terms) x 216: no two terms are the same
    # product and none wraps onto itself.
    values = measure(torch.ones(1, 6, 6, 6), tuple(CANDIDATES.values()))[0]
    assert values.tolist() == [len(i.terms) * 216.0 for i in CANDIDATES.values()]


def cube_images(spins: torch.Tensor):
    """The configuration under all 48 rotations and reflections of the cube (axes 1..3)."""
    for perm in itertools.permutations((1, 2, 3)):
        permuted = spins.permute(0, *perm)
        for flips in itertools.product((False, True), repeat=3):
            axes = [axis for axis, flip in zip((1, 2, 3), flips, strict=True) if flip]
            yield permuted.flip(axes) if axes else permuted


def test_3d_sets_respect_the_cube_symmetries_and_the_spin_flip():
    spins = random_spins((3, 6, 6, 6), 2)
    even, odd = measure(spins, EVEN_3D), measure(spins, ODD_3D)
    assert torch.equal(measure(-spins, EVEN_3D), even)
    assert torch.equal(measure(-spins, ODD_3D), -odd)
    everything = tuple(CANDIDATES.values())
    reference = measure(spins, everything)
    for image in cube_images(spins):
        assert torch.equal(measure(image, everything), reference)


def test_3d_sets_are_named_orders_of_the_candidates():
    for sets, candidates in ((EVEN_SETS_3D, EVEN_CANDIDATES_3D), (ODD_SETS_3D, ODD_CANDIDATES_3D)):
        for name, interactions in sets.items():
            names = [i.name for i in interactions]
            assert len(set(names)) == len(names), name
            assert all(candidates[n] is i for n, i in zip(names, interactions, strict=True))
    assert all(len(term) % 2 == 0 for i in EVEN_CANDIDATES_3D.values() for term in i.terms)
    assert all(len(term) % 2 == 1 for i in ODD_CANDIDATES_3D.values() for term in i.terms)
    # The span orders put every interaction that fits a 4^3 level (span <= 1) first.
    for interactions in (EVEN_SETS_3D["span"], ODD_SETS_3D["span"]):
        spans = [i.span for i in interactions]
        assert spans == sorted(spans)
    sizes = [len(i.terms[0]) for i in ODD_SETS_3D["size"]]
    assert sizes == sorted(sizes)
    # The defaults have the names of the 2D defaults, so one configuration value serves both.
    assert EVEN_3D is EVEN_SETS_3D["span"] and ODD_3D is ODD_SETS_3D["size"]
    assert default_sets(3) == {"even": EVEN_3D, "odd": ODD_3D}
    assert default_sets(2) == {"even": EVEN, "odd": ODD}
    with pytest.raises(ValueError, match="data.dim=4"):
        default_sets(4)


def test_sets_are_looked_up_in_the_lattice_of_their_dimension():
    """One configuration value, e.g. mcrg.even_set=distance, names the set of either lattice."""
    assert sets_for(3, "distance", "span") == {
        "even": EVEN_SETS_3D["distance"],
        "odd": ODD_SETS_3D["span"],
    }
    chosen = sets_for(3, ["nn", "body_diag"], ["magnetization"])
    assert [i.name for i in chosen["even"]] == ["nn", "body_diag"]
    assert sets_for(2, "distance")["even"][2].name == "third"
    with pytest.raises(ValueError, match=r"mcrg.even_set=\['nn', 'diag'\].*'diag'"):
        sets_for(3, ["nn", "diag"])  # diag is the square lattice's name
    with pytest.raises(ValueError, match="mcrg.odd_set=.*'nn'.* are not odd"):
        sets_for(3, odd=["magnetization", "nn"])


def test_3d_interactions_that_do_not_fit_a_4_cubed_level_are_nan():
    values = measure(torch.ones(2, 4, 4, 4), EVEN_3D + ODD_3D)
    fits = [i.span == 1 or i.span == 0 for i in EVEN_3D + ODD_3D]
    assert torch.isnan(values[:, ~torch.tensor(fits)]).all()
    expected = [len(i.terms) * 64.0 for i, fit in zip(EVEN_3D + ODD_3D, fits, strict=True) if fit]
    assert values[0, torch.tensor(fits)].tolist() == expected


# ------------------------------------------------------------------------------------------------
# 2 x 2 x 2 transformations, block by block


def test_majority_on_2x2x2_blocks_by_hand():
    """Block (p, q, r) holds sites (2p + u, 2q + v, 2r + w); its spin is the sign of their sum."""
    spins = random_spins((200, 4, 4, 4), 3)
    # A few blocks set by hand on the first configuration: 8 up, 5 up, 3 up.
    spins[0, 0:2, 0:2, 0:2] = 1
    spins[0, 2:4, 0:2, 0:2] = torch.tensor([1, 1, 1, 1, 1, -1, -1, -1.0]).view(2, 2, 2)
    spins[0, 0:2, 2:4, 0:2] = torch.tensor([1, -1, 1, -1, -1, 1, -1, -1.0]).view(2, 2, 2)
    generator = torch.Generator().manual_seed(4)
    blocks = majority(2)(spins, generator)
    assert blocks.shape == (200, 2, 2, 2)
    assert blocks[0, 0, 0, 0] == 1 and blocks[0, 1, 0, 0] == 1 and blocks[0, 0, 1, 0] == -1
    ties = []
    for n, p, q, r in itertools.product(range(200), range(2), range(2), range(2)):
        total = sum(
            float(spins[n, 2 * p + u, 2 * q + v, 2 * r + w])
            for u, v, w in itertools.product(range(2), repeat=3)
        )
        if total == 0:
            ties.append(float(blocks[n, p, q, r]))
        else:
            assert blocks[n, p, q, r] == math.copysign(1.0, total)
    # 4 up, 4 down: +1 or -1 with probability 1/2 (C(8,4)/2^8 = 27% of random blocks).
    assert set(ties) == {-1.0, 1.0} and len(ties) > 300
    assert scipy.stats.binomtest(ties.count(1.0), len(ties)).pvalue > 1e-3


def test_decimation_keeps_the_corner_of_each_2x2x2_block():
    spins = random_spins((3, 8, 8, 8), 5)
    kept = decimation(2)(spins, None)
    assert kept.shape == (3, 4, 4, 4)
    for p, q, r in itertools.product(range(4), repeat=3):
        assert torch.equal(kept[:, p, q, r], spins[:, 2 * p, 2 * q, 2 * r])


# ------------------------------------------------------------------------------------------------
# MCRG in 3D with exact answers


def batches_of(spins: torch.Tensor, n_blocks: int, batch_size: int):
    """Independent configurations in order, contiguous groups as jackknife blocks."""
    blocks = chain_blocks(spins.shape[0], n_blocks)
    for start in range(0, spins.shape[0], batch_size):
        yield spins[start : start + batch_size], blocks[start : start + batch_size]


def test_majority_mcrg_at_infinite_temperature_is_exact():
    """K = 0: independent spins. The block spins are independent fair coins too, and with
    c = <mu sigma_i> = P(the other 7 spins sum to 1) = C(7, 4) / 2^7 = 35/128 (a tie counts 0):

    * magnetization: A = N', B = <S'_m S_m> = 8 c N', so T = 8c = 35/16;
    * nearest-neighbour: a block bond (p, p + e) correlates only with the 4 bonds that cross the
      face between the two blocks, each by c^2, so A = 3N', B = 3N' 4c^2, T = 4c^2.

    Both are exact at any L with L/2 >= 3 (L/2 = 2 would count each block bond twice). The even
    estimate is noisy (S'_nn and S_nn correlate by sqrt(2) c^2 = 0.11 per configuration): 10^5
    configurations of 6^3 give an error of ~0.04 on y = -1.74.
    """
    sets = {"even": (EVEN_CANDIDATES_3D["nn"],), "odd": (ODD_CANDIDATES_3D["magnetization"],)}
    n_samples, n_blocks, batch_size = 100_000, 20, 5000
    blocks = chain_blocks(n_samples, n_blocks)

    def batches():
        for index, start in enumerate(range(0, n_samples, batch_size)):
            spins = random_spins((batch_size, 6, 6, 6), 100 + index)
            yield spins, blocks[start : start + batch_size]

    result = run_mcrg(
        batches(),
        [majority(2)],
        n_rg_steps=1,
        scale=2.0,
        sets=sets,
        generator=torch.Generator().manual_seed(7),
    )
    c = 35 / 128
    for name, exact, bound in (
        ("even", math.log2(4 * c * c), 0.06),
        ("odd", math.log2(8 * c), 0.01),
    ):
        y, err = result.y[name][0, 0], result.err[name][0, 0]
        assert 0 < err < bound, (name, err)
        assert abs(y - exact) < 4 * err, (name, y, err, exact)


def ring_configurations(n: int, L: int, coupling: float, seed: int) -> torch.Tensor:
    """(n, L, L, L): independent exact samples of periodic Ising rings along axis 1.

    On a ring the bond variables tau_i = sigma_i sigma_(i+1) are independent with P(tau = +1) =
    e^K / (2 cosh K) except that their product must be +1: drawn independently and kept when the
    product is +1 (rejection is exact); sigma_0 = +-1 with probability 1/2.
    """
    generator = torch.Generator().manual_seed(seed)
    p_aligned = math.exp(coupling) / (2 * math.cosh(coupling))
    rings = []
    needed = n * L * L
    while needed > 0:
        tau = torch.where(torch.rand(2 * needed + 64, L, generator=generator) < p_aligned, 1, -1)
        tau = tau[tau.prod(1) == 1][:needed]
        start = torch.randint(0, 2, (tau.shape[0], 1), generator=generator) * 2 - 1
        # sigma_i = sigma_0 prod_{j < i} tau_j
        rings.append(start * torch.cat([torch.ones_like(start), tau[:, :-1]], 1).cumprod(1))
        needed -= tau.shape[0]
    # (n, L_y, L_z, L_x) -> (n, L_x, L_y, L_z): the ring runs along the first lattice axis.
    return torch.cat(rings).view(n, L, L, L).permute(0, 3, 1, 2).to(torch.float32).contiguous()


def test_decimation_of_rings_embedded_in_3d_is_exact():
    """Decoupled rings along x: 2x2x2 decimation keeps the rings at even (y, z), each decimated by
    b = 2, so tanh K' = tanh^2 K exactly and the one-coupling MCRG of the x bonds gives
    T = 2t / (1 + t^2), t = tanh K, at any L (as the 1D chain test in test_mcrg.py, here through
    the 3D transformation, offsets and sums). Only a quarter of the rings survive a step, so the
    estimate needs many configurations: 4 x 10^4 of 8^3 for an error of ~0.02."""
    coupling, L, n_samples, batch_size = 0.5, 8, 40_000, 4000
    t = math.tanh(coupling)
    x_bond = Interaction("x_bond", (((0, 0, 0), (1, 0, 0)),))
    y_bond = Interaction("y_bond", (((0, 0, 0), (0, 1, 0)),))
    first = ring_configurations(batch_size, L, coupling, seed=8)
    # The rings run along axis 1 (<s s'> = (t + t^(L-1)) / (1 + t^L) on a ring of L), and
    # neighbouring rings are independent.
    bonds = measure(first, (x_bond, y_bond)).mean(0) / L**3
    assert abs(bonds[0].item() - (t + t ** (L - 1)) / (1 + t**L)) < 0.01
    assert abs(bonds[1].item()) < 0.01
    blocks = chain_blocks(n_samples, 20)

    def batches():
        for index, start in enumerate(range(0, n_samples, batch_size)):
            spins = first if index == 0 else ring_configurations(batch_size, L, coupling, 8 + index)
            yield spins, blocks[start : start + batch_size]

    result = run_mcrg(batches(), [decimation(2)], 1, 2.0, sets={"even": (x_bond,)})
    y, err = result.y["even"][0, 0], result.err["even"][0, 0]
    exact = math.log2(2 * t / (1 + t**2))  # -0.393
    assert 0 < err < 0.03, err
    assert abs(y - exact) < 4 * err, (y, err, exact)


# ------------------------------------------------------------------------------------------------
# Samplers against each other near K_c


def energy_per_bond(algorithm: str, L: int, n_samples: int, n_between: int, seed: int):
    """<sigma_i sigma_j> over nearest-neighbour bonds at K_c, error from independent chains."""
    model = IsingModel(L=L, dim=3)
    n_chains = 100
    samples = draw_samples(
        model,
        n_samples,
        algorithm=algorithm,
        n_chains=n_chains,
        n_thermalize=300,
        n_between=n_between,
        seed=seed,
    )
    per_chain = samples.energy.to(torch.float64).mean(0) / (3 * model.n_sites)  # (n_chains,)
    return float(per_chain.mean()), float(per_chain.std()) / math.sqrt(n_chains)


def test_3d_wolff_and_heatbath_agree_at_the_critical_coupling():
    """L = 8 at K_c: the cluster and the local sampler give the same nearest-neighbour correlation.
    It is 0.367 here, above the infinite-system 0.3302 by the finite-size term ~ L^-(3 - y_t)
    (docs/results.md extrapolates L = 8..32 to 0.330)."""
    wolff, d_wolff = energy_per_bond("wolff", 8, 4000, 1, seed=9)
    heatbath, d_heatbath = energy_per_bond("heatbath", 8, 4000, 10, seed=10)
    assert d_wolff < 0.002 and d_heatbath < 0.002
    assert abs(wolff - heatbath) < 4 * math.hypot(d_wolff, d_heatbath), (wolff, heatbath)
    assert 0.355 < wolff < 0.38  # 0.367: the L = 8 value, measured once (docs/results.md)


@pytest.mark.slow
def test_3d_wolff_and_heatbath_agree_at_l16():
    wolff, d_wolff = energy_per_bond("wolff", 16, 10_000, 1, seed=11)
    heatbath, d_heatbath = energy_per_bond("heatbath", 16, 10_000, 20, seed=12)
    assert abs(wolff - heatbath) < 4 * math.hypot(d_wolff, d_heatbath), (wolff, heatbath)


# ------------------------------------------------------------------------------------------------
# Filter files


def test_a_3d_filter_file_round_trips(tmp_path):
    rbm = ConvRBM(3, 2, init_scale=0.3, dim=3)
    path = save_filter(tmp_path / "filter3d.pt", rbm)
    loaded = load_rbm(path)
    assert loaded.dim == 3 and loaded.filter_size == 3 and loaded.stride == 2
    torch.testing.assert_close(loaded.weight, rbm.weight)
    torch.save({"weight": torch.zeros(3, 3, 2), "stride": 2}, tmp_path / "box.pt")
    with pytest.raises(ValueError, match="box.pt"):
        load_rbm(tmp_path / "box.pt")


# ------------------------------------------------------------------------------------------------
# The pipeline: evaluate.py and the training callback on the cubic lattice


def evaluate_config(*overrides: str):
    """``python evaluate.py experiment=ising3d <overrides>``, composed as the command line does
    (without the sample cache, whose default directory needs a Hydra run)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "evaluate", overrides=["experiment=ising3d", "data.data_dir=null", *overrides]
        )


#: A tiny 3D evaluation: 8^3 -> 4^3, 2000 configurations.
TINY_3D = [
    "data.L=8",
    "mcrg.n_rg_steps=1",
    "mcrg.n_samples=2000",
    "data.n_chains=40",
    "data.n_thermalize=20",
    "data.n_between=1",
    "mcrg.batch_size=500",
    "progress=false",
]


def test_evaluate_experiment_ising3d_uses_the_3d_sets(tmp_path):
    record = evaluation.evaluate(evaluate_config("transform=majority", *TINY_3D), tmp_path)
    data = json.loads((tmp_path / "mcrg.json").read_text())
    assert data["dim"] == 3 and data["lattice_sizes"] == [8, 4]
    assert data["coupling"] == pytest.approx(0.221654626)
    assert data["even_set"] == [i.name for i in EVEN_3D]
    assert data["odd_set"] == [i.name for i in ODD_3D]
    assert data["exact"] == pytest.approx(exact_exponents(3))
    # On the 4^3 level only the span-1 interactions exist: 5 even, 3 odd.
    assert all(v is not None for v in data["y_t"][0][:5]) and data["y_t"][0][5:] == [None] * 2
    assert all(v is not None for v in data["y_h"][0][:3]) and data["y_h"][0][3:] == [None] * 4
    # The per-site normalisation: three bonds per site, <s s'> = 0.368 per bond at L = 8, K_c
    # (test_3d_wolff_and_heatbath_agree_at_the_critical_coupling).
    nn = data["level0"][0]
    assert nn["name"] == "nn" and 0.35 < nn["mean"] / 3 < 0.39
    assert 1.0 < record["y_t"][0][0] < 1.6 and 2.2 < record["y_h"][0][0] < 2.7


@pytest.fixture
def no_sampling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the settings were checked")

    monkeypatch.setattr(evaluation, "iterate_samples", refuse)


def test_bad_3d_settings_are_named_before_sampling(tmp_path, no_sampling):
    square = save_filter(tmp_path / "square.pt", ConvRBM(2, 2, dim=2))
    cube = save_filter(tmp_path / "cube.pt", ConvRBM(10, 2, dim=3))
    cases = [
        (["transform=majority", "data.L=12", "mcrg.n_rg_steps=3"], "data.L=12"),
        (["transform=majority", "data.L=16", "mcrg.n_rg_steps=3"], "fewer than 4"),
        (["transform=majority", "data.algorithm=metropolis-msc"], "dim=3"),
        ([f"ckpt_path={square}"], "data.dim=3"),
        ([f"ckpt_path={cube}", "mcrg.n_rg_steps=2"], "does not fit level 1"),
    ]
    for overrides, message in cases:
        with pytest.raises(ValueError, match=message):
            evaluation.evaluate(evaluate_config(*overrides, "progress=false"), tmp_path)
    # The other way round: a 3D filter on the square lattice.
    cfg = evaluate_config(f"ckpt_path={cube}", "data.dim=2", "data.L=32", "progress=false")
    with pytest.raises(ValueError, match="data.dim=2"):
        evaluation.evaluate(cfg, tmp_path)


def test_the_training_module_refuses_a_filter_of_the_wrong_dimension():
    module = RBMModule(filter_size=2, stride=2, dim=3)
    assert module.rbm.weight.shape == (2, 2, 2)
    module.check_lattice(8, 3)
    with pytest.raises(ValueError, match="data.dim=2"):
        module.check_lattice(8, 2)
    with pytest.raises(ValueError, match="model.filter_size=2"):
        RBMModule(filter_size=2, stride=2, dim=3).check_lattice(1)


@pytest.fixture(scope="module")
def critical_8():
    """600 configurations of the critical 8^3 Ising model from 20 independent chains."""
    model = IsingModel(L=8, dim=3)
    return draw_samples(model, 600, n_chains=20, n_thermalize=50, n_between=1, seed=13)


def test_an_infinite_2x2x2_filter_measures_the_majority_rule(critical_8):
    """W -> infinity on a 2x2x2 block is the majority rule with random ties: the callback's 3D
    MCRG must agree with run_mcrg + majority on the same configurations (up to the tie draws)."""
    rbm = ConvRBM(filter_size=2, stride=2, init_scale=0.0, dim=3)
    with torch.no_grad():
        rbm.weight.fill_(50.0)
    result = MCRGCallback(n_rg_steps=1, n_blocks=20).measure(rbm, critical_8, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    batches = chain_major_batches(critical_8.spins, critical_8.n_chains, 20)
    reference = run_mcrg(
        batches, [majority(2)], 1, 2.0, n_blocks=20, sets=default_sets(3), generator=generator
    )
    for name, n_fit in (("even", 5), ("odd", 3)):  # what fits the 4^3 level
        y, err = result.y[name][0, :n_fit], result.err[name][0, :n_fit]
        assert np.all(np.isfinite(y)) and np.all(np.isnan(result.y[name][0, n_fit:]))
        assert np.all(np.abs(y - reference.y[name][0, :n_fit]) < 3 * err + 1e-3), name


def test_training_on_the_cubic_lattice_logs_3d_exponents_and_figures(critical_8, tmp_path):
    pl.seed_everything(0)
    module = RBMModule(filter_size=2, stride=2, init_scale=0.05, dim=3, backend="auto")
    module.schedule = Constant(1e-2)
    callback = MCRGCallback(n_rg_steps=1, n_blocks=20, output_dir=str(tmp_path))
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, datamodule=HeldOut(critical_8))
    assert module.rbm.weight.shape == (2, 2, 2)
    assert not module.uses_fused_kernel(critical_8.spins[:10].float())  # the kernel is 2D only
    assert len(callback.history) == 2 * 7
    last = [row for row in callback.history if row["epoch"] == 2]
    assert all(math.isfinite(row["y_t"]) for row in last[:5])
    for name in ("fig1_filters.png", "fig2_yt_vs_step.png", "filters/epoch_002.png"):
        assert (tmp_path / name).exists(), name
