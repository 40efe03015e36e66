"""Multi-spin-coded checkerboard Metropolis (numba, square lattice only): ``"metropolis-msc"``.

Chain ``64 w + b`` lives in bit ``b`` of the uint64 words ``state.words[w]`` (shape ``(L, L)``), so
one pass of bitwise logic updates a site in 64 chains at once. Bit 1 means spin +1. Every chain draws
its own random bits: a site update of 64 lanes consumes whole 64-bit words of the word's xoshiro256++
stream (:mod:`rbmrg.lattice.rng`), lane ``b`` reading bit ``b``; no random number is shared by two
chains. The acceptance probability ``p = exp(-4|K|)`` is compared with a uniform variate bit by bit
(``U < p`` is decided at the first binary digit where they differ), which is exact for the float64
value of ``p`` and needs about ``log2(64) + 2`` random words per site, not 64 floats. A flip that
raises the energy by ``8|K|`` is accepted with probability ``p * p`` by two such independent draws.
Compiled code is cached on disk (``cache=True``): only the first import on a machine compiles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from rbmrg.lattice.base import Sampler
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.rng import (
    ALL,
    U64,
    bernoulli_lanes,
    binary_digits,
    seed_streams,
    set_threads,
    stream_base,
    xoshiro_next,
)

#: Tag that keeps this sampler's streams apart from the other kernels' ones.
_TAG_METROPOLIS = 0x4D455452


@njit(cache=True, parallel=True)
def _msc_hot_start(states, L):
    n_words = states.shape[0]
    words = np.empty((n_words, L, L), dtype=np.uint64)
    for w in prange(n_words):
        s0, s1, s2, s3 = states[w, 0], states[w, 1], states[w, 2], states[w, 3]
        for i in range(L):
            for j in range(L):
                words[w, i, j], s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
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
    invert = ALL if antiferro else U64(0)
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
                        once, s0, s1, s2, s3 = bernoulli_lanes(
                            ~at_least_two, digits, n_digits, s0, s1, s2, s3
                        )
                        twice, s0, s1, s2, s3 = bernoulli_lanes(
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
        w, b = c // 64, U64(c % 64)
        for i in range(L):
            for j in range(L):
                spins[c, i, j] = 2 * np.int8((words[w, i, j] >> b) & U64(1)) - 1
    return spins


@dataclass
class MSCState:
    """State of the multi-spin-coded sampler: packed spins and one generator per word."""

    words: np.ndarray  # (ceil(n_chains / 64), L, L) uint64
    rng: np.ndarray  # (ceil(n_chains / 64), 4) uint64
    n_chains: int


def metropolis_msc(model: IsingModel, device: torch.device, seed: int) -> Sampler:
    """Multi-spin-coded checkerboard Metropolis; see the module docstring. Square lattice only."""
    coupling = float(model.coupling)
    digits = binary_digits(math.exp(-4.0 * abs(coupling)))
    base = stream_base(seed, _TAG_METROPOLIS)

    def init(n_chains: int) -> MSCState:
        set_threads()
        n_words = -(-n_chains // 64)
        rng = seed_streams(base, n_words)
        return MSCState(_msc_hot_start(rng, model.L), rng, n_chains)

    def step(state: MSCState, n_sweeps: int = 1) -> MSCState:
        set_threads()
        _msc_metropolis(state.words, state.rng, int(n_sweeps), digits, len(digits), coupling < 0)
        return state

    def spins_of(state: MSCState) -> torch.Tensor:
        set_threads()
        return torch.from_numpy(_msc_unpack(state.words, state.n_chains)).to(device)

    return Sampler(init, step, spins_of, device=torch.device(device))
