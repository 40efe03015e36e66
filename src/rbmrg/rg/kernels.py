"""Compiled CPU kernels (numba) of an MCRG pass: the interactions of :mod:`rbmrg.rg.interactions`
and the learned block-spin draw of :func:`rbmrg.rg.transforms.rbm` (:func:`sample_hidden_2d`).

:func:`rbmrg.rg.interactions.measure` in plain torch materialises a float32 lattice for every
factor of every term: at L = 32 that is ~80 passes over memory per configuration, and it is the
largest cost of an MCRG pass on the CPU. Here one call measures every interaction of a batch of
+-1 configurations, configuration by configuration, with each lattice held as int8 in cache:

* the lattice is padded by ``reach`` wrapped sites on every side, so that every shifted lattice
  sigma_{r + o} is the padded array read at a fixed flat distance ``delta(o)``;
* a term's value is ``sum_p mask[p] prod_{o in term} padded[p + delta(o)]`` over one contiguous
  range of flat positions p covering every real site, ``mask`` being 1 on real sites and 0 on the
  padding inside the range. One long loop per term, which LLVM vectorises (int8 lanes);
* the sums are exact integers (int64), returned as float64 like the torch version, so the two
  agree bit for bit and any MCRG sum built on them is independent of the summation order.

Any lattice dimension works (the flat layout does not care). Values other than +-1 are not
handled here: :func:`measure_pm1` returns None and the caller falls back to torch.

The block-spin draw of a 2D filter computes the hidden field h in the phase-split layout of the
fused CD kernel (:mod:`rbmrg.training.cd_chain`) and compares sigmoid(2 h) with the uniforms torch
draws for :meth:`rbmrg.rg.rbm.ConvRBM.sample_hidden`, so the random stream is the same (see
:func:`sample_hidden_2d` for the rare draw that can differ).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
import torch
from numba import njit, prange

from rbmrg.lattice.rng import set_threads
from rbmrg.training.cd_chain import _fill, _hidden_field, _up_probability, layout_tables


def flat_layout(L: int, dim: int, reach: int) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The padded lattice of side P = L + 2 reach, flattened row-major.

    Returns ``source`` (for each padded position, the flat index of the real site it copies,
    periodic), ``mask`` (int8, 1 where the position is a real site, over ``[start, stop)``),
    ``start`` and ``stop`` (the flat range that covers every real site).
    """
    side = L + 2 * reach
    wrapped = (np.arange(side) - reach) % L
    inside = (np.arange(side) >= reach) & (np.arange(side) < reach + L)
    source = np.zeros((side,) * dim, dtype=np.int64)
    real = np.ones((side,) * dim, dtype=bool)
    for axis in range(dim):
        shape = [1] * dim
        shape[axis] = side
        source = source * L + wrapped.reshape(shape)
        real = real & inside.reshape(shape)
    source, real = source.reshape(-1), real.reshape(-1)
    positions = np.flatnonzero(real)
    start, stop = int(positions[0]), int(positions[-1]) + 1
    return source, real[start:stop].astype(np.int8), start, stop


def term_tables(
    terms: Sequence[tuple[tuple[int, ...], ...]], owners: Sequence[int], L: int, reach: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat distances of every factor of every term in the padded layout of :func:`flat_layout`.

    Returns ``deltas`` (all factors, term after term), ``bounds`` (term t's factors are
    ``deltas[bounds[t]:bounds[t + 1]]``) and ``owner`` (the output column of each term).
    """
    side = L + 2 * reach
    deltas, bounds = [], [0]
    for term in terms:
        for offset in term:
            delta = 0
            for x in offset:
                delta = delta * side + x
            deltas.append(delta)
        bounds.append(len(deltas))
    return (
        np.array(deltas, dtype=np.int64),
        np.array(bounds, dtype=np.int64),
        np.array(owners, dtype=np.int64),
    )


@njit(cache=True, inline="always")
def pad_configuration(spins, c, source, plain, padded):
    """Copy configuration ``c`` into the padded int8 lattice; False if a value is not +-1.

    The values are first converted in one contiguous (vectorised) pass, then gathered: a branch
    per site on random +-1 values would cost a misprediction every other site.
    """
    row = spins[c]
    bad = 0
    for q in range(plain.shape[0]):
        value = row[q]
        bad += value * value != 1
        plain[q] = value
    for q in range(source.shape[0]):
        padded[q] = plain[source[q]]
    return bad == 0


@njit(cache=True, inline="always")
def _term_sum(padded, mask, start, stop, deltas, first, last, work):
    """sum_p mask[p] prod_f padded[p + deltas[f]] over p in [start, stop), f in [first, last).

    Every operand is a slice, so the loops index from 0 with no negative-index wrap: numba's
    check for one (``a[-1]``) on a computed index keeps LLVM from vectorising the loop.
    """
    n = stop - start
    factor = padded[start + deltas[first] : start + deltas[first] + n]
    for p in range(n):
        work[p] = mask[p] * factor[p]
    for f in range(first + 1, last):
        factor = padded[start + deltas[f] : start + deltas[f] + n]
        for p in range(n):
            work[p] *= factor[p]
    total = 0
    for p in range(n):
        total += work[p]
    return total


@njit(cache=True, inline="always")
def _measure_one(c, spins, source, mask, start, stop, deltas, bounds, owner, out, ok):
    plain = np.empty(spins.shape[1], dtype=np.int8)
    padded = np.empty(source.shape[0], dtype=np.int8)
    work = np.empty(stop - start, dtype=np.int8)
    ok[c] = pad_configuration(spins, c, source, plain, padded)
    sums = np.zeros(out.shape[1], dtype=np.int64)
    for t in range(owner.shape[0]):
        sums[owner[t]] += _term_sum(
            padded, mask, start, stop, deltas, bounds[t], bounds[t + 1], work
        )
    for i in range(out.shape[1]):
        out[c, i] = sums[i]


@njit(cache=True, nogil=True, parallel=True)
def _measure(spins, source, mask, start, stop, deltas, bounds, owner, out, ok, threaded):
    """Every configuration's interaction sums (``out``), and whether its values were all +-1."""
    if threaded:
        for c in prange(spins.shape[0]):
            _measure_one(c, spins, source, mask, start, stop, deltas, bounds, owner, out, ok)
    else:
        for c in range(spins.shape[0]):
            _measure_one(c, spins, source, mask, start, stop, deltas, bounds, owner, out, ok)


def measure_pm1(
    spins: torch.Tensor, terms: Sequence[tuple[tuple[int, ...], ...]], owners: Sequence[int],
    n_columns: int, reach: int,
) -> np.ndarray | None:  # fmt: skip
    """Sums of ``terms`` per configuration of CPU ``spins`` (batch, L, ..., L), term t added to
    column ``owners[t]`` of an int64 (batch, n_columns) array; None if a value is not +-1."""
    batch, L, dim = spins.shape[0], spins.shape[-1], spins.ndim - 1
    values = spins.detach().reshape(batch, -1)
    if values.dtype == torch.bool or values.dtype.is_complex:
        return None
    array = values.contiguous().numpy()
    source, mask, start, stop = flat_layout(L, dim, reach)
    deltas, bounds, owner = term_tables(terms, owners, L, reach)
    out = np.zeros((batch, n_columns), dtype=np.int64)
    ok = np.ones(batch, dtype=np.bool_)
    set_threads()
    threaded = numba.get_num_threads() > 1 and batch > 1
    _measure(array, source, mask, start, stop, deltas, bounds, owner, out, ok, threaded)
    return out if ok.all() else None


@njit(cache=True, inline="always")
def _hidden_one(i, spins, weight, uniforms, row_of, col_of, out):
    b, M, Q = row_of.shape[0], out.shape[1], col_of.shape[1]
    padded = np.empty((b, b, row_of.shape[1] * Q), dtype=spins.dtype)
    field = np.empty(M * Q, dtype=spins.dtype)
    _fill(spins[i], padded, row_of, col_of)
    _hidden_field(padded, weight, Q, field)
    for p in range(M):
        for q in range(M):
            prob = np.float32(_up_probability(field[p * Q + q]))
            out[i, p, q] = 1.0 if uniforms[i, p, q] < prob else -1.0


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _sample_hidden(spins, weight, uniforms, row_of, col_of, out, threaded):
    """Block spins mu of every configuration: +1 where ``uniforms`` < sigmoid(2 h), else -1."""
    if threaded:
        for i in prange(spins.shape[0]):
            _hidden_one(i, spins, weight, uniforms, row_of, col_of, out)
    else:
        for i in range(spins.shape[0]):
            _hidden_one(i, spins, weight, uniforms, row_of, col_of, out)


def sample_hidden_2d(
    spins: torch.Tensor, weight: torch.Tensor, stride: int, generator: torch.Generator | None
) -> torch.Tensor:
    """mu ~ P(mu | sigma) of a 2D filter on the CPU: :meth:`ConvRBM.sample_hidden`, compiled.

    It draws the same uniforms from ``generator`` (``torch.rand`` of the block-spin shape, float32)
    and compares them with sigmoid(2 h) as the torch path does; h is summed filter entry by filter
    entry in float32 (the layout of :mod:`rbmrg.training.cd_chain`), in another order than
    torch's convolution, so a draw whose uniform lies within a rounding of its probability may
    come out the other way (rare; ``tests/test_mcrg.py`` bounds such draws to 1e-6 of their
    probability).
    """
    batch, L = spins.shape[0], spins.shape[-1]
    M = L // stride
    x = spins.detach().to(torch.float32).contiguous().numpy()
    w = weight.detach().contiguous().numpy()
    if w.dtype != np.float32:
        raise TypeError(f"sample_hidden_2d: a float32 filter is needed, got {w.dtype}")
    uniforms = torch.rand((batch, M, M), generator=generator, dtype=torch.float32).numpy()
    row_of, col_of = layout_tables(L, w.shape[0], stride)
    out = np.empty((batch, M, M), dtype=np.float32)
    set_threads()
    _sample_hidden(x, w, uniforms, row_of, col_of, out, numba.get_num_threads() > 1 and batch > 1)
    return torch.from_numpy(out)
