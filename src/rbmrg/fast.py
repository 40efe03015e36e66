"""Compiled CPU Monte Carlo kernels (numba) for the Ising model of :mod:`rbmrg.ising`.

Importing this module registers two samplers with :func:`rbmrg.ising.register_sampler`; they keep
the ``(init, step, spins_of)`` shape of the torch reference samplers, so every caller selects them by
name only:

``"metropolis-msc"``  checkerboard Metropolis, multi-spin coded (square lattice only). Chain
    ``64 w + b`` lives in bit ``b`` of the uint64 words ``state.words[w]`` (shape ``(L, L)``), so one
    pass of bitwise logic updates a site in 64 chains at once. Bit 1 means spin +1.
    Every chain draws its own random bits: a site update of 64 lanes consumes whole 64-bit words
    of the word's xoshiro256++ stream, lane ``b`` reading bit ``b``; no random number is shared by
    two chains. The acceptance probability ``p = exp(-4|K|)`` is compared with a uniform variate
    bit by bit (``U < p`` is decided at the first binary digit where they differ), which is exact for
    the float64 value of ``p`` and needs about ``log2(64) + 2`` random words per site, not 64 floats.
    A flip that raises the energy by ``8|K|`` is accepted with probability ``p * p`` by two such
    independent draws.

``"wolff"``  single-cluster updates (Wolff 1989) on the hypercubic lattice of any dimension, one
    independent chain per row of ``state.spins`` (shape ``(chains, L^dim)`` int8), parallel over
    chains. A bond to an aligned neighbour (anti-aligned when K < 0) joins the cluster with probability
    ``1 - exp(-2|K|)``. One *sweep* is a fixed number ``clusters_per_sweep`` of cluster flips per
    chain, chosen before any sampling so that the flipped sites add up to ``L^dim`` on average:
    ``round(L^dim / <|C|>)``, with the mean cluster size ``<|C|>`` measured on 32 pilot chains of
    their own random stream. The count is fixed rather than "flip until L^dim sites are done" because
    a data-dependent stopping time biases the state at which it stops (the last cluster tends to be a
    big one); with a fixed count every step is the same Boltzmann-invariant transition.

Randomness: every chain (Wolff) or 64-chain word (Metropolis) has its own xoshiro256++ generator
(Blackman & Vigna 2018, period 2^256 - 1), its four state words drawn from a splitmix64 counter
seeded by ``seed``. Stream ``k`` depends on ``(seed, k)`` only, so a chain's trajectory does not
change when chains are added, nor with the number of threads.

Threads: the kernels run ``numba.prange`` over chains with ``min(torch.get_num_threads(),
NUMBA_NUM_THREADS)`` threads, so the one knob ``torch.set_num_threads`` (or ``OMP_NUM_THREADS``)
governs both libraries and they never oversubscribe the cores. Compiled code is cached on disk
(``cache=True``), so only the first import on a machine pays the compile time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numba
import numpy as np
import torch
from numba import njit, prange

from rbmrg.ising import IsingModel, Sampler, register_sampler

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)
_ALL = _U64(0xFFFFFFFFFFFFFFFF)
#: Binary digits of the acceptance probability kept; the float64 value of a probability in (0, 1)
#: above 2^-64 has at most 53 + 64 significant digits, so its expansion is exact.
_P_DIGITS = 128

# Tags that make the streams of different algorithms and of the Wolff pilot run distinct.
_TAG_METROPOLIS = 0x4D455452
_TAG_WOLFF = 0x574F4C46
_TAG_PILOT = 0x50494C54


def _set_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


# --------------------------------------------------------------------------------------------------
# Random numbers


@njit(cache=True, inline="always")
def _splitmix64(x):
    """The splitmix64 output function (Steele, Lea & Flood 2014) of the counter value ``x``."""
    x = (x ^ (x >> _U64(30))) * _MIX1
    x = (x ^ (x >> _U64(27))) * _MIX2
    return x ^ (x >> _U64(31))


@njit(cache=True)
def _seed_streams(base, n_streams):
    """xoshiro256++ states for streams 0..n-1: stream k takes splitmix64 outputs 4k..4k+3."""
    states = np.empty((n_streams, 4), dtype=np.uint64)
    for k in range(n_streams):
        for i in range(4):
            counter = base + _U64(4 * k + i + 1) * _GOLDEN
            states[k, i] = _splitmix64(counter)
        if states[k, 0] == 0 and states[k, 1] == 0 and states[k, 2] == 0 and states[k, 3] == 0:
            states[k, 0] = _U64(1)  # the all-zero state is the one fixed point of xoshiro
    return states


@njit(cache=True, inline="always")
def _rotl(x, k):
    return (x << _U64(k)) | (x >> _U64(64 - k))


@njit(cache=True, inline="always")
def _next(s0, s1, s2, s3):
    """One xoshiro256++ step: returns (output, new state)."""
    result = _rotl(s0 + s3, 23) + s0
    t = s1 << _U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, s0, s1, s2, s3


@njit(cache=True, inline="always")
def _bernoulli_lanes(lanes, digits, n_digits, s0, s1, s2, s3):
    """Independent Bernoulli(p) bits in the set bits of ``lanes``; p = sum_k digits[k] 2^-(k+1).

    Each lane compares its own uniform U = 0.u1 u2 ... (bit b of successive random words) with p:
    at the first differing digit, U < p iff the digit of p is 1. Lanes still tied after all digits
    of p have U >= p and are rejected, which makes the draw exact for a p with finite expansion.
    """
    accept = _U64(0)
    undecided = lanes
    k = 0
    while undecided != 0 and k < n_digits:
        word, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
        if digits[k]:
            accept |= undecided & ~word
            undecided &= word
        else:
            undecided &= ~word
        k += 1
    return accept, s0, s1, s2, s3


def _stream_base(seed: int, tag: int) -> np.uint64:
    return _U64((int(seed) * 0x9E3779B97F4A7C15 + tag * 0xD1B54A32D192ED03) % 2**64)


def binary_digits(p: float, n_digits: int = _P_DIGITS) -> np.ndarray:
    """First ``n_digits`` binary digits of the float ``p`` in [0, 1], exactly (uint8 array).

    ``p == 1`` gives all ones, i.e. U < p for every U < 1 - 2^-n_digits.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p={p!r}: a probability must lie in [0, 1]")
    digits = np.zeros(n_digits, dtype=np.uint8)
    if p == 1.0:
        digits[:] = 1
        return digits
    remainder = Fraction(p)
    for k in range(n_digits):
        remainder *= 2
        if remainder >= 1:
            digits[k] = 1
            remainder -= 1
    return digits


# --------------------------------------------------------------------------------------------------
# Multi-spin-coded checkerboard Metropolis (2D)


@njit(cache=True, parallel=True)
def _msc_hot_start(states, L):
    n_words = states.shape[0]
    words = np.empty((n_words, L, L), dtype=np.uint64)
    for w in prange(n_words):
        s0, s1, s2, s3 = states[w, 0], states[w, 1], states[w, 2], states[w, 3]
        for i in range(L):
            for j in range(L):
                words[w, i, j], s0, s1, s2, s3 = _next(s0, s1, s2, s3)
        states[w, 0], states[w, 1], states[w, 2], states[w, 3] = s0, s1, s2, s3
    return words


@njit(cache=True, parallel=True)
def _msc_metropolis(words, states, n_sweeps, digits, n_digits, antiferro):
    """``n_sweeps`` checkerboard Metropolis sweeps of every 64-chain word, in place.

    With a_k = 1 where neighbour k is anti-aligned (aligned for K < 0) and n = sum_k a_k, the flip
    changes the weight by exp(-2|K| (4 - 2n)): always accepted for n >= 2, accepted with
    p = exp(-4|K|) for n = 1 and with p^2 for n = 0.
    """
    n_words, L = words.shape[0], words.shape[1]
    invert = _ALL if antiferro else _U64(0)
    for w in prange(n_words):
        s0, s1, s2, s3 = states[w, 0], states[w, 1], states[w, 2], states[w, 3]
        lattice = words[w]
        for _ in range(n_sweeps):
            for parity in range(2):
                for i in range(L):
                    up = i - 1 if i > 0 else L - 1
                    down = i + 1 if i < L - 1 else 0
                    for j in range((i + parity) & 1, L, 2):
                        left = j - 1 if j > 0 else L - 1
                        right = j + 1 if j < L - 1 else 0
                        spin = lattice[i, j]
                        a1 = (spin ^ lattice[up, j]) ^ invert
                        a2 = (spin ^ lattice[down, j]) ^ invert
                        a3 = (spin ^ lattice[i, left]) ^ invert
                        a4 = (spin ^ lattice[i, right]) ^ invert
                        at_least_two = (a1 & a2) | (a3 & a4) | ((a1 | a2) & (a3 | a4))
                        none = ~(a1 | a2 | a3 | a4)
                        once, s0, s1, s2, s3 = _bernoulli_lanes(
                            ~at_least_two, digits, n_digits, s0, s1, s2, s3
                        )
                        twice, s0, s1, s2, s3 = _bernoulli_lanes(
                            none & once, digits, n_digits, s0, s1, s2, s3
                        )
                        flip = at_least_two | (once & ~none) | twice
                        lattice[i, j] = spin ^ flip
        states[w, 0], states[w, 1], states[w, 2], states[w, 3] = s0, s1, s2, s3


@njit(cache=True, parallel=True)
def _msc_unpack(words, n_chains):
    """(words, L, L) uint64 -> (n_chains, L, L) int8 spins, chain 64 w + b from bit b of word w."""
    L = words.shape[1]
    spins = np.empty((n_chains, L, L), dtype=np.int8)
    for c in prange(n_chains):
        w, b = c // 64, _U64(c % 64)
        for i in range(L):
            for j in range(L):
                spins[c, i, j] = 2 * np.int8((words[w, i, j] >> b) & _U64(1)) - 1
    return spins


@dataclass
class MSCState:
    """State of the multi-spin-coded sampler: packed spins and one generator per word."""

    words: np.ndarray  # (ceil(n_chains / 64), L, L) uint64
    rng: np.ndarray  # (ceil(n_chains / 64), 4) uint64
    n_chains: int


def metropolis_msc(model: IsingModel, device: torch.device, seed: int) -> Sampler:
    """Multi-spin-coded checkerboard Metropolis; see the module docstring. Square lattice only."""
    if model.dim != 2:
        raise ValueError(f"dim={model.dim}: algorithm 'metropolis-msc' is written for dim=2 only")
    coupling = float(model.coupling)
    digits = binary_digits(math.exp(-4.0 * abs(coupling)))
    base = _stream_base(seed, _TAG_METROPOLIS)

    def init(n_chains: int) -> MSCState:
        _set_threads()
        n_words = -(-n_chains // 64)
        rng = _seed_streams(base, n_words)
        return MSCState(_msc_hot_start(rng, model.L), rng, n_chains)

    def step(state: MSCState, n_sweeps: int = 1) -> MSCState:
        _set_threads()
        _msc_metropolis(state.words, state.rng, int(n_sweeps), digits, len(digits), coupling < 0)
        return state

    def spins_of(state: MSCState) -> torch.Tensor:
        _set_threads()
        return torch.from_numpy(_msc_unpack(state.words, state.n_chains)).to(device)

    return Sampler(init, step, spins_of, device=torch.device(device))


# --------------------------------------------------------------------------------------------------
# Wolff single-cluster updates (any dimension)


def neighbour_table(model: IsingModel) -> np.ndarray:
    """``(L^dim, 2 dim)`` int32: the periodic neighbours of every site of the row-major lattice."""
    index = np.arange(model.n_sites).reshape(model.shape)
    columns = []
    for axis in range(model.dim):
        columns.append(np.roll(index, 1, axis).ravel())
        columns.append(np.roll(index, -1, axis).ravel())
    return np.ascontiguousarray(np.stack(columns, 1).astype(np.int32))


@njit(cache=True, parallel=True)
def _wolff_hot_start(states, n_sites):
    n_chains = states.shape[0]
    spins = np.empty((n_chains, n_sites), dtype=np.int8)
    for c in prange(n_chains):
        s0, s1, s2, s3 = states[c, 0], states[c, 1], states[c, 2], states[c, 3]
        for i in range(n_sites):
            word, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
            spins[c, i] = 1 if (word >> _U64(63)) else -1
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3
    return spins


@njit(cache=True, inline="always")
def _uniform_site(n_sites, s0, s1, s2, s3):
    """Unbiased integer in [0, n_sites) (Lemire's multiply-and-reject), n_sites < 2^32."""
    n = _U64(n_sites)
    threshold = (_U64(2**32) - n) % n
    while True:
        word, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
        product = (word >> _U64(32)) * n
        if (product & _U64(0xFFFFFFFF)) >= threshold:
            return np.int64(product >> _U64(32)), s0, s1, s2, s3


@njit(cache=True, inline="always")
def _wolff_cluster(spins, stack, neighbours, add_threshold, bond_sign, s0, s1, s2, s3):
    """Grow and flip one Wolff cluster of one chain; returns (size, rng state).

    Sites are flipped when pushed, so a flipped site is never pushed again. A neighbour ``nb`` of a
    flipped site ``i`` (now -s_i) joins with probability 1 - exp(-2|K|) if s_nb s_i == bond_sign,
    i.e. aligned with the old value for K > 0, anti-aligned for K < 0.
    """
    n_sites, n_neighbours = neighbours.shape
    seed_site, s0, s1, s2, s3 = _uniform_site(n_sites, s0, s1, s2, s3)
    spins[seed_site] = -spins[seed_site]
    stack[0] = seed_site
    top = 1
    size = 1
    while top > 0:
        top -= 1
        site = stack[top]
        flipped = spins[site]
        for k in range(n_neighbours):
            nb = neighbours[site, k]
            if spins[nb] * flipped == -bond_sign:
                word, s0, s1, s2, s3 = _next(s0, s1, s2, s3)
                if (word >> _U64(11)) < add_threshold:
                    spins[nb] = -spins[nb]
                    stack[top] = nb
                    top += 1
                    size += 1
    return size, s0, s1, s2, s3


@njit(cache=True, parallel=True)
def _wolff_steps(spins, states, neighbours, n_clusters, add_threshold, bond_sign):
    """``n_clusters`` cluster flips in every chain, in place; returns the flipped sites per chain."""
    n_chains, n_sites = spins.shape
    flipped = np.zeros(n_chains, dtype=np.int64)
    for c in prange(n_chains):
        s0, s1, s2, s3 = states[c, 0], states[c, 1], states[c, 2], states[c, 3]
        stack = np.empty(n_sites, dtype=np.int32)
        total = 0
        for _ in range(n_clusters):
            size, s0, s1, s2, s3 = _wolff_cluster(
                spins[c], stack, neighbours, add_threshold, bond_sign, s0, s1, s2, s3
            )
            total += size
        flipped[c] = total
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3
    return flipped


@njit(cache=True, parallel=True)
def _wolff_budget(spins, states, neighbours, budget, add_threshold, bond_sign):
    """Flip clusters until each chain has flipped >= ``budget`` sites; returns (clusters, sites).

    Pilot runs only (calibration of ``clusters_per_sweep``): the stopping rule depends on the
    cluster sizes, so states reached this way are not used as samples.
    """
    n_chains, n_sites = spins.shape
    counts = np.zeros(n_chains, dtype=np.int64)
    flipped = np.zeros(n_chains, dtype=np.int64)
    for c in prange(n_chains):
        s0, s1, s2, s3 = states[c, 0], states[c, 1], states[c, 2], states[c, 3]
        stack = np.empty(n_sites, dtype=np.int32)
        total = 0
        while total < budget:
            size, s0, s1, s2, s3 = _wolff_cluster(
                spins[c], stack, neighbours, add_threshold, bond_sign, s0, s1, s2, s3
            )
            total += size
            counts[c] += 1
        flipped[c] = total
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3
    return counts, flipped


@dataclass
class WolffState:
    """State of the Wolff sampler: flat spins of every chain and one generator per chain."""

    spins: np.ndarray  # (n_chains, L^dim) int8
    rng: np.ndarray  # (n_chains, 4) uint64


def mean_cluster_size(
    model: IsingModel,
    seed: int = 0,
    n_chains: int = 32,
    n_thermalize: int = 20,
    n_measure: int = 20,
) -> float:
    """<|C|> of Wolff clusters, from ``n_chains`` pilot chains run for ``n_thermalize`` then
    ``n_measure`` lattice volumes of flipped sites: <|C|> = flipped sites / clusters."""
    n_sites = model.n_sites
    neighbours = neighbour_table(model)
    threshold, sign = _wolff_parameters(model)
    _set_threads()
    rng = _seed_streams(_stream_base(seed, _TAG_PILOT), n_chains)
    spins = _wolff_hot_start(rng, n_sites)
    _wolff_budget(spins, rng, neighbours, n_thermalize * n_sites, threshold, sign)
    counts, flipped = _wolff_budget(spins, rng, neighbours, n_measure * n_sites, threshold, sign)
    return float(flipped.sum()) / float(counts.sum())


def _wolff_parameters(model: IsingModel) -> tuple[np.uint64, int]:
    """(53-bit threshold of the bond probability 1 - exp(-2|K|), sign of the bond condition)."""
    p_add = -math.expm1(-2.0 * abs(float(model.coupling)))
    return _U64(int(p_add * 2**53)), (1 if model.coupling >= 0 else -1)


def wolff(model: IsingModel, device: torch.device, seed: int) -> Sampler:
    """Wolff single-cluster sampler over many independent chains; see the module docstring."""
    if model.n_sites >= 2**31:
        raise ValueError(f"L={model.L}: too many sites for the Wolff kernel's int32 stack")
    neighbours = neighbour_table(model)
    threshold, sign = _wolff_parameters(model)
    base = _stream_base(seed, _TAG_WOLFF)
    clusters_per_sweep = max(1, round(model.n_sites / mean_cluster_size(model, seed)))

    def init(n_chains: int) -> WolffState:
        _set_threads()
        rng = _seed_streams(base, n_chains)
        return WolffState(_wolff_hot_start(rng, model.n_sites), rng)

    def step(state: WolffState, n_sweeps: int = 1) -> WolffState:
        _set_threads()
        n_clusters = int(n_sweeps) * clusters_per_sweep
        _wolff_steps(state.spins, state.rng, neighbours, n_clusters, threshold, sign)
        return state

    def spins_of(state: WolffState) -> torch.Tensor:
        spins = torch.from_numpy(state.spins.reshape(-1, *model.shape).copy())
        return spins.to(device)

    return Sampler(
        init,
        step,
        spins_of,
        device=torch.device(device),
        details={"clusters_per_sweep": clusters_per_sweep},
    )


register_sampler("metropolis-msc", metropolis_msc)
register_sampler("wolff", wolff)
