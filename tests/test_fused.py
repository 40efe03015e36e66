"""The fused Triton sampler ``metropolis-fused``: its generator, its kernel and its dynamics, exactly.

* the Philox4x32-10 inside the kernels reproduces Random123's known-answer vectors and equals
  Triton's own ``tl.randint4x`` (the brief's reference) on the counters that one covers;
* every spin the kernels write (hot start, then sweeps; 1D, 2D, 3D; sublattices whose size is not a
  multiple of 4; K > 0, K < 0, K = 0) equals a numpy transcription of the documented update rule,
  bit for bit, and so does every launch configuration;
* on 4x4 the sampled (S_nn, M) histogram after t sweeps from the hot start matches the exact
  distribution of the checkerboard Metropolis chain after t sweeps (all 2^16 states evolved
  exactly), which tests the transition probabilities themselves, not only the equilibrium;
* the same exact evolution measures how far the chain's 4x4 limit is from Boltzmann (the zero-field
  states form a closed class; see docs/sampler.md), which tests/test_ising.py's equilibrium test
  relies on.

Equilibrium against enumeration and Kaufman's L = 32 energy: tests/test_ising.py. Tests taking the
``device`` fixture also run on the compiled kernels when a GPU is present.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rbmrg.lattice import fused
from rbmrg.lattice.model import K_C_2D, IsingModel, bond_sum, magnetization
from rbmrg.lattice.samplers import make_sampler

pytestmark = pytest.mark.skipif(not fused.triton_available(), reason="triton is not installed")
if fused.triton_available():
    # Decide between interpreter and GPU before this module imports triton.language itself.
    fused.kernels()
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from test_ising import chi_square_against  # noqa: E402  (tests/ is on the path under pytest)

MASK32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------------
# Philox4x32-10


def philox_reference(counters: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Philox4x32-10 in numpy: ``counters`` (..., 4) of uint32 values -> (..., 4) uint64.

    Products of two 32-bit numbers fit a uint64 exactly; hi/lo are its two halves.
    """
    words = [counters[..., i].astype(np.uint64) for i in range(4)]
    k0, k1 = np.uint64(key[0]), np.uint64(key[1])
    for _ in range(10):
        product0 = np.uint64(0xD2511F53) * words[0]
        product1 = np.uint64(0xCD9E8D57) * words[2]
        words = [
            (product1 >> np.uint64(32)) ^ words[1] ^ k0,
            product1 & np.uint64(MASK32),
            (product0 >> np.uint64(32)) ^ words[3] ^ k1,
            product0 & np.uint64(MASK32),
        ]
        k0 = (k0 + np.uint64(0x9E3779B9)) & np.uint64(MASK32)
        k1 = (k1 + np.uint64(0xBB67AE85)) & np.uint64(MASK32)
    return np.stack(words, -1)


# Random123's kat_vectors, "philox4x32 10": counter, key, output.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((MASK32,) * 4, (MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def skip_cpu_tensors_on_a_gpu(device) -> None:
    """A raw kernel launch takes tensors of the device it was compiled for: with CUDA present the
    kernels are compiled for the GPU (the sampler copies CPU spins there; a raw launch cannot)."""
    if str(device) == "cpu" and not fused.interpreting():
        pytest.skip("kernels compiled for CUDA here: the CPU path is the interpreter's")


def kernel_philox(counters, key, device) -> list[list[int]]:
    """The kernels' ``philox4x32`` on a list of counters (through ``philox_kernel``)."""
    counters = torch.tensor(counters, dtype=torch.int64, device=device)
    out = torch.zeros_like(counters)
    key = torch.tensor(key, dtype=torch.int64, device=device)
    fused.kernels().philox_kernel[(1,)](counters, key, out, len(counters), BLOCK=16)
    return out.cpu().tolist()


def test_philox_reproduces_random123_known_answers(device):
    skip_cpu_tensors_on_a_gpu(device)
    for counter, key, expected in KNOWN_ANSWERS:
        assert kernel_philox([counter], key, device) == [list(expected)]
        reference = philox_reference(np.array(counter, dtype=np.uint64), key)
        assert reference.tolist() == list(expected)


def _randint4x_kernel(out_ptr, seed, offsets_ptr, BLOCK: tl.constexpr):
    rows = tl.arange(0, BLOCK)
    offsets = tl.load(offsets_ptr + rows)
    r0, r1, r2, r3 = tl.randint4x(seed, offsets)
    tl.store(out_ptr + 4 * rows + 0, r0.to(tl.uint32).to(tl.int64))
    tl.store(out_ptr + 4 * rows + 1, r1.to(tl.uint32).to(tl.int64))
    tl.store(out_ptr + 4 * rows + 2, r2.to(tl.uint32).to(tl.int64))
    tl.store(out_ptr + 4 * rows + 3, r3.to(tl.uint32).to(tl.int64))


def test_philox_is_tritons_randint4x(device):
    skip_cpu_tensors_on_a_gpu(device)
    # tl.randint4x(seed, offset) is Philox4x32-10 with key (seed lo, seed hi) and counter
    # (offset lo, offset hi, 0, 0): the same generator as ours on those counters.
    if fused.interpreting() and type(tl.randint4x).__name__ != "InterpretedFunction":
        pytest.skip("triton was imported before the interpreter was chosen")
    seed = (7 << 32) + 12345
    offsets = [0, 1, 2**32 - 1, 2**32, 5 * 2**32 + 77, 2**62 + 3, 11, 12]
    out = torch.zeros(len(offsets), 4, dtype=torch.int64, device=device)
    kernel = triton.jit(_randint4x_kernel)
    kernel[(1,)](out, seed, torch.tensor(offsets, dtype=torch.int64, device=device), BLOCK=8)
    counters = [(o & MASK32, o >> 32, 0, 0) for o in offsets]
    assert out.cpu().tolist() == kernel_philox(counters, (seed & MASK32, seed >> 32), device)


# --------------------------------------------------------------------------------------------------
# The kernels against a numpy transcription of the documented rule


def thresholds_reference(coupling: float) -> dict[int, int]:
    """Cost a -> floor(exp(-2 |K| a) 2^31): the flip is taken when (word >> 1) is below it."""
    return {a: math.floor(math.exp(-2.0 * abs(coupling) * a) * 2**31) for a in (2, 4, 6)}


def reference_run(model: IsingModel, seed: int, n_chains: int, n_sweeps: int) -> np.ndarray:
    """Hot start and ``n_sweeps`` sweeps as fused_kernels documents them, in numpy (int8 spins)."""
    key = ((seed % 2**64) & MASK32, (seed % 2**64) >> 32)
    chains = np.arange(n_chains, dtype=np.uint64)[:, None]

    def words_for(n_groups: int, half_sweep: int) -> np.ndarray:
        """(n_chains, 4 n_groups): word w of group g at slot w n_groups + g."""
        groups = np.arange(n_groups, dtype=np.uint64)[None, :]
        counters = np.stack(
            np.broadcast_arrays(
                groups, chains, np.uint64(half_sweep & MASK32), np.uint64(half_sweep >> 32)
            ),
            -1,
        )
        words = philox_reference(counters, key)  # (n_chains, n_groups, 4)
        return words.transpose(0, 2, 1).reshape(n_chains, 4 * n_groups)

    n_sites, half = model.n_sites, model.n_sites // 2
    hot = words_for(-(-n_sites // 4), 2**64 - 1)[:, :n_sites]
    spins = (1 - 2 * (hot >> np.uint64(31)).astype(np.int64)).reshape(n_chains, *model.shape)
    parity = (sum(np.indices(model.shape)) % 2).ravel()
    sites = [np.flatnonzero(parity == q) for q in (0, 1)]  # row-major = slot order
    sign = int(np.sign(model.coupling))
    thresholds = thresholds_reference(model.coupling)
    for half_sweep in range(2 * n_sweeps):
        active = sites[half_sweep % 2]
        field = sum(
            np.roll(spins, shift, axis) for axis in range(1, model.dim + 1) for shift in (1, -1)
        ).reshape(n_chains, -1)[:, active]
        flat = spins.reshape(n_chains, -1)
        spin = flat[:, active]
        uniform31 = (words_for(-(-half // 4), half_sweep)[:, :half] >> np.uint64(1)).astype(
            np.int64
        )
        cost = sign * spin * field
        threshold = np.select([cost == 2, cost == 4], [thresholds[2], thresholds[4]], thresholds[6])
        flip = (cost <= 0) | (uniform31 < threshold)
        flat[:, active] = np.where(flip, -spin, spin)
    return spins.astype(np.int8)


def fused_run(model, seed, n_chains, n_sweeps, device="cpu", **knobs) -> np.ndarray:
    sampler = fused.metropolis_fused(model, torch.device(device), seed, **knobs)
    state = sampler.init(n_chains)
    if n_sweeps:
        state = sampler.step(state, n_sweeps)
    spins = sampler.spins_of(state)
    assert spins.dtype == torch.int8 and spins.device.type == torch.device(device).type
    return spins.cpu().numpy()


@pytest.mark.parametrize(
    "model, seed, n_chains, n_sweeps",
    [
        (IsingModel(L=32), 3, 5, 3),
        (IsingModel(L=6, coupling=0.3), 2**40 + 5, 7, 4),  # 18 active sites: 5 groups, 2 unused
        (IsingModel(L=10, dim=1, coupling=-0.5), 1, 6, 5),  # 5 active sites, 1D
        (IsingModel(L=4, dim=3, coupling=0.2), 9, 4, 3),
        (IsingModel(L=6, dim=3, coupling=-0.25), 0, 3, 2),  # 108 active sites: 27 groups
        (IsingModel(L=4, coupling=0.0), 4, 3, 2),  # K = 0: every flip taken
    ],
    ids=["2d-L32", "2d-L6", "1d-L10-afm", "3d-L4", "3d-L6-afm", "K0"],
)
def test_kernel_matches_reference_bit_for_bit(model, seed, n_chains, n_sweeps, device):
    expected = reference_run(model, seed, n_chains, n_sweeps)
    assert np.array_equal(
        fused_run(model, seed, n_chains, 0, device), reference_run(model, seed, n_chains, 0)
    )
    assert np.array_equal(fused_run(model, seed, n_chains, n_sweeps, device), expected)
    if model.coupling == 0.0:  # every site flips every sweep: two flips, back where it started
        assert np.array_equal(expected, reference_run(model, seed, n_chains, 0))


@pytest.mark.parametrize(
    "knobs",
    [
        dict(chains_per_program=1, block_size=16),
        dict(chains_per_program=4, block_size=32, half_sweeps_per_launch=1),
        dict(chains_per_program=4, block_size=256),  # tile larger than a program's chains
    ],
)
def test_launch_configuration_does_not_change_the_numbers(knobs, device):
    model = IsingModel(L=8)
    default = fused_run(model, 21, 6, 2, device)
    assert np.array_equal(fused_run(model, 21, 6, 2, device, **knobs), default)


def test_steps_add_up_and_chains_are_their_own(device):
    model = IsingModel(L=8)
    sampler = make_sampler(model, "metropolis-fused", device, seed=5)
    state = sampler.step(sampler.step(sampler.init(3), 1), 2)
    in_two_steps = sampler.spins_of(state)
    assert np.array_equal(in_two_steps.cpu().numpy(), fused_run(model, 5, 3, 3, device))
    # Adding chains leaves the first ones unchanged; another seed changes them.
    assert np.array_equal(fused_run(model, 5, 5, 3, device)[:3], in_two_steps.cpu().numpy())
    assert not np.array_equal(fused_run(model, 6, 3, 3, device), in_two_steps.cpu().numpy())


def test_bad_knobs_name_the_setting():
    model = IsingModel(L=8)
    for knobs, name in [
        (dict(block_size=12), "block_size="),
        (dict(block_size=2), "block_size="),
        (dict(chains_per_program=0), "chains_per_program="),
        (dict(half_sweeps_per_launch=0), "half_sweeps_per_launch="),
        (dict(num_warps=3), "num_warps="),
    ]:
        with pytest.raises(ValueError, match=name):
            fused.metropolis_fused(model, torch.device("cpu"), 0, **knobs)
    sampler = fused.metropolis_fused(model, torch.device("cpu"), 0)
    with pytest.raises(ValueError, match="n_chains="):
        sampler.init(0)
    with pytest.raises(ValueError, match="n_sweeps="):
        sampler.step(sampler.init(1), -1)


def test_missing_triton_is_reported_by_name(monkeypatch):
    from rbmrg.lattice.samplers import check_algorithm

    monkeypatch.setattr(fused, "triton_available", lambda: False)
    with pytest.raises(ValueError, match="algorithm='metropolis-fused'.*triton"):
        check_algorithm("metropolis-fused", 2)
    with pytest.raises(ValueError, match="algorithm='metropolis-fused'"):
        make_sampler(IsingModel(L=4), "metropolis-fused")


# The kernels compiled for an H100 (sm_90) by Triton's own ptxas, no GPU needed: catches code the
# interpreter accepts but the compiler rejects. Run in a fresh process, where TRITON_INTERPRET is off.
COMPILE_SCRIPT = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from rbmrg.lattice import fused_kernels as kernels

def build(fn, signature, constexprs):
    source = ASTSource(fn=fn, signature={**signature, **dict.fromkeys(constexprs, "constexpr")},
                       constexprs=constexprs)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    assert compiled.asm["cubin"], fn

runtime = dict.fromkeys(["n_chains", "chains_per_program", "n_tiles"], "i32")
sweeps = dict.fromkeys(["n_half_sweeps", "threshold_2", "threshold_4", "threshold_6"], "i32")
pointers = {"spins_ptr": "*i8", "params_ptr": "*i64"}
for L, dim, sign in ((32, 2, 1), (6, 3, -1), (10, 1, 0)):
    n = L**dim
    build(kernels.metropolis_kernel, {**pointers, **runtime, **sweeps},
          dict(L=L, DIM=dim, N=n, HALF=n // 2, GROUPS=-(-n // 8), TILE=256, SIGN=sign, SYNC=True))
build(kernels.hot_start_kernel, {**pointers, **runtime}, dict(N=1024, GROUPS=256, TILE=256))
build(kernels.philox_kernel, {"counters_ptr": "*i64", "key_ptr": "*i64", "out_ptr": "*i64",
      "n": "i32"}, dict(BLOCK=16))
print("compiled")
"""


def test_kernels_compile_for_the_gpu():
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    if not ptxas.exists():
        pytest.skip("this triton wheel has no ptxas")
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    src = str(Path(fused.__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, "-c", COMPILE_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0 and "compiled" in done.stdout, done.stderr[-3000:]


# --------------------------------------------------------------------------------------------------
# The dynamics on 4x4, exactly


class Exact4x4:
    """The checkerboard Metropolis chain on the 4x4 periodic lattice, all 2^16 states at once.

    A half-sweep updates the sites of one parity; they have no neighbour in common with each
    other, so it is the product of their single-site Metropolis kernels,
    p'(s) = p(s) (1 - a(s)) + p(s^i) a(s^i) with a the kernel's acceptance probability
    (T_cost / 2^31 for an uphill flip, 1 otherwise).
    """

    L = 4

    def __init__(self, coupling: float):
        n = self.L * self.L
        self.states = np.arange(2**n)
        self.spins = 2 * ((self.states[:, None] >> np.arange(n)) & 1) - 1  # (2^16, 16), row-major
        grid = self.spins.reshape(-1, self.L, self.L)
        field = sum(np.roll(grid, shift, axis) for axis in (1, 2) for shift in (1, -1))
        self.field = field.reshape(-1, n)
        self.bonds = (grid * np.roll(grid, 1, 1)).sum((1, 2)) + (grid * np.roll(grid, 1, 2)).sum(
            (1, 2)
        )
        self.magnet = grid.sum((1, 2))
        cost = int(np.sign(coupling)) * self.spins * self.field
        thresholds = thresholds_reference(coupling)
        uphill = np.select([cost == 2, cost == 4], [thresholds[2], thresholds[4]], 0) / 2**31
        self.accept = np.where(cost <= 0, 1.0, uphill)  # (2^16, 16)
        parity = (np.add.outer(np.arange(self.L), np.arange(self.L)) % 2).ravel()
        self.sublattices = [np.flatnonzero(parity == q) for q in (0, 1)]
        weights = np.exp(coupling * (self.bonds - self.bonds.max()))
        self.boltzmann = weights / weights.sum()
        pairs, self.outcome_of = np.unique(
            np.stack([self.bonds, self.magnet], 1), axis=0, return_inverse=True
        )
        self.outcomes = [tuple(pair) for pair in pairs.tolist()]

    def hot_start(self) -> np.ndarray:
        return np.full(len(self.states), 1.0 / len(self.states))

    def sweep(self, p: np.ndarray) -> np.ndarray:
        for sites in self.sublattices:
            for i in sites:
                partner = self.states ^ (1 << i)
                a = self.accept[:, i]
                p = p * (1 - a) + p[partner] * a[partner]
        return p

    def joint(self, p: np.ndarray) -> dict[tuple[int, int], float]:
        """P(S_nn, M) of the state distribution ``p``."""
        return dict(zip(self.outcomes, np.bincount(self.outcome_of, p).tolist(), strict=True))

    def after(self, n_sweeps: int) -> np.ndarray:
        p = self.hot_start()
        for _ in range(n_sweeps):
            p = self.sweep(p)
        return p


def noncentrality(table, exact, n_samples: int) -> float:
    """n sum (P - P_exact)^2 / P_exact over (S_nn, M): what a chi-square test sees of a bias."""
    return n_samples * sum((table[key] - p) ** 2 / p for key, p in exact.items() if p > 0)


@pytest.mark.parametrize(
    "coupling, n_sweeps", [(K_C_2D, 1), (K_C_2D, 3), (0.25, 1), (-0.3, 2)], ids=str
)
def test_distribution_after_few_sweeps_is_exact(coupling, n_sweeps, device):
    exact = Exact4x4(coupling)
    sampler = make_sampler(IsingModel(L=4, coupling=coupling), "metropolis-fused", device, 17)
    spins = sampler.spins_of(sampler.step(sampler.init(20_000), n_sweeps)).cpu()
    bonds = bond_sum(spins, 2).long().tolist()
    magnet = magnetization(spins).long().tolist()
    expected = exact.joint(exact.after(n_sweeps))
    assert chi_square_against(bonds, magnet, expected) > 1e-3
    # ... and the test has power: the equilibrium distribution is rejected after so few sweeps.
    assert chi_square_against(bonds, magnet, exact.joint(exact.boltzmann)) < 1e-6


@pytest.mark.parametrize("coupling", [K_C_2D, 0.25, -0.3], ids=str)
def test_4x4_limit_and_the_closed_zero_field_class(coupling):
    """Checkerboard Metropolis is not ergodic on 4x4: a site with zero field always flips, so the
    configurations where every site has zero field map onto each other and keep the probability
    the hot start gave them. The chain's limit therefore differs slightly from Boltzmann (the
    difference vanishes exponentially with L). What tests/test_ising.py's equilibrium test at
    20,000 samples sees of it, and how soon the limit is reached, is computed here."""
    exact = Exact4x4(coupling)
    zero_field = np.all(exact.field == 0, axis=1)
    boltzmann = exact.joint(exact.boltzmann)
    p = exact.hot_start()
    bias = []  # non-centrality against Boltzmann after 1, 2, ... sweeps
    for _ in range(40):
        p = exact.sweep(p)
        bias.append(noncentrality(exact.joint(p), boltzmann, 20_000))
        assert p[zero_field].sum() == pytest.approx(zero_field.mean(), rel=1e-9)
    assert zero_field.sum() > 0
    # Boltzmann is stationary, up to the 2^-31 truncation of the acceptance probabilities.
    np.testing.assert_allclose(exact.sweep(exact.boltzmann), exact.boltzmann, rtol=1e-7)
    limit = bias[-1]
    assert abs(bias[-2] - limit) < 1e-6 * limit  # converged
    assert abs(bias[12 - 1] - limit) < 0.3  # after test_ising.SWEEPS_4X4 sweeps
    assert limit < 10  # below the chi-square statistic's spread (sqrt(2 dof) ~ 10 for ~48 bins)
