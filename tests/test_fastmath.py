"""rbmrg.fastmath and the side-by-side uniforms of rbmrg.lattice.rng against their references."""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from rbmrg.fastmath import LOWEST, exp_nonpositive, exp_nonpositive_float32, fma
from rbmrg.lattice.rng import LANES, fill_uniforms, seed_lanes, seed_streams, xoshiro_next


@njit
def _exps(x, out, coarse):
    for j in range(x.shape[0]):
        out[j] = exp_nonpositive_float32(x[j]) if coarse else exp_nonpositive(x[j])


def arguments() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.concatenate(
        [-rng.random(200_000) * 50, -rng.random(10_000) * 1e-6, [0.0, -0.5 * math.log(2), LOWEST]]
    )


def test_exp_is_libm_within_one_ulp():
    x = arguments()
    out = np.empty_like(x)
    _exps(x, out, False)
    ulp = np.spacing(np.exp(x))
    assert np.max(np.abs(out - np.exp(x)) / ulp) <= 1.0
    assert out[-3] == 1.0


def test_float32_exp_is_below_a_float32_rounding():
    x = arguments()
    out = np.empty_like(x)
    _exps(x, out, True)
    relative = np.abs(out / np.exp(x) - 1)
    assert relative.max() < 1e-8 < 2.0**-24  # the Taylor remainder bound is 5.3e-9 (x e^0.35)


def test_below_the_lowest_argument_exp_stays_at_its_value():
    x = np.array([LOWEST, LOWEST - 1.0, -1e4, -np.inf])
    out = np.empty_like(x)
    _exps(x, out, False)
    assert np.all(out == out[0])  # a normal number, within 1 ulp of exp(LOWEST)
    assert abs(out[0] - np.exp(LOWEST)) <= np.spacing(np.exp(LOWEST)) and out[0] > 2.2e-308


@njit
def _fma(a, b, c):
    return fma(a, b, c)


def test_fma_rounds_once():
    # (1 + 2^-23)(1 - 2^-23) - 1 = -2^-46 exactly; a product rounded first to float32 gives 0.
    a, b, c = np.float32(1 + 2.0**-23), np.float32(1 - 2.0**-23), np.float32(-1.0)
    assert _fma(a, b, c) == np.float32(-(2.0**-46))
    assert a * b + c == 0.0
    assert _fma(2.0, 3.0, 1.0) == 7.0


def test_side_by_side_uniforms_are_the_streams_outputs():
    """Entry r LANES + l of fill_uniforms is output r of stream group LANES + l of seed_streams
    (as 53-bit fractions), and the states advance in place."""
    base, group = np.uint64(123), 2
    state = seed_lanes(base, group)
    out = np.empty(3 * LANES)
    fill_uniforms(state, out)
    streams = seed_streams(base, (group + 1) * LANES)[group * LANES :]
    for lane in (0, 17, LANES - 1):
        s = tuple(streams[lane])
        for r in range(3):
            value, *s = (np.uint64(word) for word in xoshiro_next(*s))
            assert out[r * LANES + lane] == float(value >> np.uint64(11)) * 2.0**-53
        assert tuple(state[:, lane]) == tuple(s)
    assert 0.0 <= out.min() and out.max() < 1.0
