"""The random-number core of the compiled (numba) kernels: splitmix64-seeded xoshiro256++ streams.

Every chain (Wolff), 64-chain word (multi-spin Metropolis) or CD-k minibatch slot has its own
xoshiro256++ generator (Blackman & Vigna 2018, period 2^256 - 1), its four state words drawn from a
splitmix64 counter seeded by ``(seed, tag)``. Stream ``k`` depends on ``(seed, tag, k)`` only, so a
chain's trajectory does not change when chains are added, nor with the number of threads.

Threads: the kernels run ``numba.prange`` with ``min(torch.get_num_threads(), NUMBA_NUM_THREADS)``
threads (:func:`set_threads`), so the one knob ``torch.set_num_threads`` (or ``OMP_NUM_THREADS``)
governs both libraries and they never oversubscribe the cores.
"""

from __future__ import annotations

from fractions import Fraction

import numba
import numpy as np
import torch
from numba import njit

U64 = np.uint64
_GOLDEN = U64(0x9E3779B97F4A7C15)
_MIX1 = U64(0xBF58476D1CE4E5B9)
_MIX2 = U64(0x94D049BB133111EB)
ALL = U64(0xFFFFFFFFFFFFFFFF)
#: Binary digits of the acceptance probability kept; the float64 value of a probability in (0, 1)
#: above 2^-64 has at most 53 + 64 significant digits, so its expansion is exact.
P_DIGITS = 128


def set_threads() -> None:
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


@njit(cache=True, inline="always")
def _splitmix64(x):
    """The splitmix64 output function (Steele, Lea & Flood 2014) of the counter value ``x``."""
    x = (x ^ (x >> U64(30))) * _MIX1
    x = (x ^ (x >> U64(27))) * _MIX2
    return x ^ (x >> U64(31))


@njit(cache=True)
def seed_streams(base, n_streams):
    """xoshiro256++ states for streams 0..n-1: stream k takes splitmix64 outputs 4k..4k+3."""
    states = np.empty((n_streams, 4), dtype=np.uint64)
    for k in range(n_streams):
        for i in range(4):
            counter = base + U64(4 * k + i + 1) * _GOLDEN
            states[k, i] = _splitmix64(counter)
        if states[k, 0] == 0 and states[k, 1] == 0 and states[k, 2] == 0 and states[k, 3] == 0:
            states[k, 0] = U64(1)  # the all-zero state is the one fixed point of xoshiro
    return states


@njit(cache=True, inline="always")
def _rotl(x, k):
    return (x << U64(k)) | (x >> U64(64 - k))


@njit(cache=True, inline="always")
def xoshiro_next(s0, s1, s2, s3):
    """One xoshiro256++ step: returns (output, new state)."""
    result = _rotl(s0 + s3, 23) + s0
    t = s1 << U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return result, s0, s1, s2, s3


#: Streams advanced side by side by :func:`fill_uniforms`: enough for LLVM to vectorise the loop
#: over them (8 or 16 side by side gave a scalar loop; 64 gives 3x the sequential rate).
LANES = 64


@njit(cache=True)
def seed_lanes(base, group):
    """States (4, LANES) of group ``group`` of :data:`LANES` streams: lane l is stream
    ``group LANES + l`` of :func:`seed_streams` (one state word per row)."""
    state = np.empty((4, LANES), dtype=np.uint64)
    for lane in range(LANES):
        k = group * LANES + lane
        for i in range(4):
            state[i, lane] = _splitmix64(base + U64(4 * k + i + 1) * _GOLDEN)
        if (
            state[0, lane] == 0
            and state[1, lane] == 0
            and state[2, lane] == 0
            and state[3, lane] == 0
        ):
            state[0, lane] = U64(1)
    return state


@njit(cache=True, error_model="numpy")
def fill_uniforms(state, out):
    """Fill ``out`` (float64, length a multiple of LANES) with uniforms in [0, 1) of 53 bits.

    ``state`` (4, LANES) is a group of xoshiro256++ streams, advanced in place: entry
    ``r LANES + lane`` of ``out`` is output r of stream ``lane``. The loop over lanes has no
    dependence between iterations, so it runs in SIMD lanes."""
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    for start in range(0, out.shape[0], LANES):
        block = out[start : start + LANES]
        for lane in range(LANES):
            a0, a1, a2, a3 = s0[lane], s1[lane], s2[lane], s3[lane]
            result, a0, a1, a2, a3 = xoshiro_next(a0, a1, a2, a3)
            s0[lane], s1[lane], s2[lane], s3[lane] = a0, a1, a2, a3
            # 53 bits fit an int64, whose conversion to float vectorises (uint64's need not).
            block[lane] = float(np.int64(result >> U64(11))) * 2.0**-53


@njit(cache=True, inline="always")
def bernoulli_lanes(lanes, digits, n_digits, s0, s1, s2, s3):
    """Independent Bernoulli(p) bits in the set bits of ``lanes``; p = sum_k digits[k] 2^-(k+1).

    Each lane compares its own uniform U = 0.u1 u2 ... (bit b of successive random words) with p:
    at the first differing digit, U < p iff the digit of p is 1. Lanes still tied after all digits
    of p have U >= p and are rejected, which makes the draw exact for a p with finite expansion.
    """
    accept = U64(0)
    undecided = lanes
    k = 0
    while undecided != 0 and k < n_digits:
        word, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
        if digits[k]:
            accept |= undecided & ~word
            undecided &= word
        else:
            undecided &= ~word
        k += 1
    return accept, s0, s1, s2, s3


def stream_base(seed: int, tag: int) -> np.uint64:
    return U64((int(seed) * 0x9E3779B97F4A7C15 + tag * 0xD1B54A32D192ED03) % 2**64)


def binary_digits(p: float, n_digits: int = P_DIGITS) -> np.ndarray:
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
