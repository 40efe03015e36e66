"""Compiled CPU counting (numba) of the local environments that :mod:`rbmrg.rg.couplings` keeps.

The coupling histograms count, per jackknife block, the sites of each *key* 2 code + (sigma_i + 1)/2,
where code = sum_alpha stride_alpha (S_alpha,i + c_alpha) / 2 is the mixed-radix code of the site
sums S_alpha,i (:func:`rbmrg.rg.interactions.site_sums`; c_alpha the coordination). In torch that
is a float32 lattice per factor, float64 key arithmetic and a sort of every key of a batch. Here:

* :func:`environment_keys` computes every site's key from the int8 lattice padded as in
  :mod:`rbmrg.rg.kernels` (``flat_layout``, ``term_tables``, ``pad_configuration``): S_alpha,i is a sum of
  products of shifted lattices, each a slice of the padded array at a fixed flat distance, summed
  in int8 over one contiguous range of positions (vectorised loops, slices indexed from 0) and
  weighted into an int32 key; exact integers, the same keys as the torch arithmetic. One
  configuration at a time, spread over numba's threads when there are several;
* :class:`KeyCounts` counts keys without a sort: a direct map from code to a compact row (int32,
  zero = not seen yet; allocated zeroed, so only the pages of codes that occur are touched) and an
  int32 table ``counts[block, row, sigma]`` that grows with the number of *distinct* codes (a
  block's rows stay in cache while its configurations are counted), filled by one serial loop
  (new codes take the next row). Counts are exact;
  :meth:`KeyCounts.take` hands them over as per-block tables N, M and starts again.

The code space must be small enough for the map (:data:`MAX_CODES`), every coordination must fit
int8 and the values must be +-1: otherwise the caller counts with torch (``environment_keys``
returns None for values other than +-1).
"""

from __future__ import annotations

from collections.abc import Sequence

import numba
import numpy as np
from numba import njit, prange

from rbmrg.lattice.rng import set_threads
from rbmrg.rg.kernels import flat_layout, pad_configuration, term_tables

#: Largest code space counted here: the map is 4 bytes a code (256 MiB of address space at most,
#: resident only where codes occur). The default even set has 5^6 9 = 140625 codes, the cubic
#: lattice's 1.7e7; larger spaces (the cubic odd set, 1.3e8) are counted by torch.
MAX_CODES = 2**26
#: Largest coordination: site sums are added in int8.
MAX_COORDINATION = 127
#: Configurations per call of the key kernel, so that the int32 keys of a batch stay below ~4 MiB.
KEY_SITES = 2**20


def site_terms(terms_of: Sequence[Sequence[tuple[tuple[int, ...], ...]]]):
    """The products that make up each S_alpha,i, as offsets from site i.

    ``terms_of[alpha]`` are the terms of interaction alpha. Each term and each of its sites p (the
    anchor, site i) gives the product of the other sites q at offsets q - p; a one-site term gives
    the constant 1. Returns (``products``, ``owners``, ``constants``): the products with at least
    one factor, the interaction of each, and per interaction the number of constant ones.
    """
    products, owners, constants = [], [], []
    for alpha, terms in enumerate(terms_of):
        ones = 0
        for term in terms:
            for p, anchor in enumerate(term):
                others = tuple(
                    tuple(o - a for o, a in zip(offset, anchor, strict=True))
                    for q, offset in enumerate(term)
                    if q != p
                )
                if others:
                    products.append(others)
                    owners.append(alpha)
                else:
                    ones += 1
        constants.append(ones)
    return products, owners, constants


class KeyTables:
    """The padded layout of an L^dim lattice and the flat distances of every site-sum product."""

    def __init__(
        self, terms_of, strides: np.ndarray, coordinations: Sequence[int], L: int, dim: int
    ):
        products, owners, constants = site_terms(terms_of)
        reach = max([abs(x) for product in products for o in product for x in o], default=0)
        source, mask, start, stop = flat_layout(L, dim, reach)
        # Real sites in row-major order, as positions in [start, stop).
        self.sites = np.flatnonzero(mask).astype(np.int64)
        deltas, bounds, owner = term_tables(products, owners, L, reach)
        # Products of interaction alpha: groups[alpha] .. groups[alpha + 1] (owners are ordered).
        groups = np.searchsorted(owner, np.arange(len(terms_of) + 1)).astype(np.int64)
        # 2 code = sum_alpha stride_alpha (S_alpha,i + c_alpha): its constant part, from the
        # coordinations and the one-site terms.
        constant = sum(
            int(s) * (c + k) for s, c, k in zip(strides, coordinations, constants, strict=True)
        )
        self.layout = (
            source, self.sites, deltas, bounds, groups, np.asarray(strides, dtype=np.int32),
            start, stop - start, np.int32(constant),
        )  # fmt: skip


@njit(cache=True, inline="always")
def _keys_one(c, spins, layout, keys, ok):
    source, sites, deltas, bounds, groups, strides, start, n, constant = layout
    plain = np.empty(spins.shape[1], dtype=np.int8)
    padded = np.empty(source.shape[0], dtype=np.int8)
    work = np.empty(n, dtype=np.int8)
    total = np.empty(n, dtype=np.int8)
    key = np.empty(n, dtype=np.int32)
    ok[c] = pad_configuration(spins, c, source, plain, padded)
    centre = padded[start : start + n]
    for p in range(n):
        key[p] = constant + ((np.int32(centre[p]) + 1) >> 1)
    for alpha in range(groups.shape[0] - 1):
        for p in range(n):
            total[p] = 0
        for t in range(groups[alpha], groups[alpha + 1]):
            first = start + deltas[bounds[t]]
            factor = padded[first : first + n]
            if bounds[t + 1] - bounds[t] == 1:
                for p in range(n):
                    total[p] += factor[p]
                continue
            for p in range(n):
                work[p] = factor[p]
            for f in range(bounds[t] + 1, bounds[t + 1]):
                first = start + deltas[f]
                factor = padded[first : first + n]
                for p in range(n):
                    work[p] *= factor[p]
            for p in range(n):
                total[p] += work[p]
        stride = strides[alpha]
        for p in range(n):
            key[p] += stride * np.int32(total[p])
    row = keys[c]
    for k in range(sites.shape[0]):
        row[k] = key[sites[k]]


@njit(cache=True, nogil=True, parallel=True, error_model="numpy")
def _keys(spins, layout, keys, ok, threaded):
    """Every site's key 2 code + (sigma + 1) / 2 (``keys``, (batch, sites)); whether +-1 (``ok``)."""
    if threaded:
        for c in prange(spins.shape[0]):
            _keys_one(c, spins, layout, keys, ok)
    else:
        for c in range(spins.shape[0]):
            _keys_one(c, spins, layout, keys, ok)


def environment_keys(spins: np.ndarray, tables: KeyTables) -> np.ndarray | None:
    """Keys of every site of ``spins`` (batch, L^dim flattened, any real dtype): int32 (batch,
    L^dim), site order row-major; None if a value is not +-1."""
    keys = np.empty((spins.shape[0], tables.sites.shape[0]), dtype=np.int32)
    ok = np.ones(spins.shape[0], dtype=np.bool_)
    set_threads()
    threaded = numba.get_num_threads() > 1 and spins.shape[0] > 1
    _keys(spins, tables.layout, keys, ok, threaded)
    return keys if ok.all() else None


@njit(cache=True, nogil=True, error_model="numpy")
def _count(keys, blocks, index, counts, codes, n_rows, position):
    """Add ``keys`` from flat ``position`` on; stop early when ``counts`` has no free row.

    Returns (position reached, rows in use): the caller grows the table and calls again.
    """
    n_sites = keys.shape[1]
    end = keys.shape[0] * n_sites
    capacity = counts.shape[1]
    for c in range(position // n_sites, keys.shape[0]):
        block = blocks[c]
        row = keys[c]
        for k in range(max(position - c * n_sites, 0), n_sites):
            key = row[k]
            code = key >> 1
            slot = index[code] - 1
            if slot < 0:
                if n_rows == capacity:
                    return c * n_sites + k, n_rows
                slot = n_rows
                index[code] = slot + 1
                codes[slot] = code
                n_rows += 1
            counts[block, slot, key & 1] += 1
    return end, n_rows


class KeyCounts:
    """Exact per-block counts of environment keys, one table per RG level (see module docstring).

    ``counts[block, row, s]`` (int32) is the number of sites with code ``codes[row]``, in ``block``,
    with sigma_i = 2 s - 1. A table never holds more than :attr:`LIMIT` sites (see :attr:`room`),
    so no count overflows: the caller takes the counts out before.
    """

    LIMIT = 2**31 - 1

    def __init__(self, n_codes: int, n_blocks: int, capacity: int = 1024):
        self.index = np.zeros(n_codes, dtype=np.int32)  # 1 + row of each code; 0: not seen
        self.codes = np.empty(capacity, dtype=np.int64)
        self.counts = np.zeros((n_blocks, capacity, 2), dtype=np.int32)
        self.n_rows = 0
        self.sites = 0

    @property
    def room(self) -> int:
        """Sites that can still be added with no count overflowing int32."""
        return self.LIMIT - self.sites

    def add(self, keys: np.ndarray, blocks: np.ndarray) -> None:
        """Count ``keys`` (batch, sites), row c in block ``blocks[c]`` (int64)."""
        if keys.size > self.room:
            raise OverflowError("KeyCounts: take() the counts before adding more sites")
        position = 0
        while position < keys.size:
            position, self.n_rows = _count(
                keys, blocks, self.index, self.counts, self.codes, self.n_rows, position
            )
            if position < keys.size:
                n_blocks, capacity, _ = self.counts.shape
                grown = np.zeros((n_blocks, 2 * capacity, 2), dtype=np.int32)
                grown[:, : self.n_rows] = self.counts[:, : self.n_rows]
                self.counts = grown
                self.codes = np.resize(self.codes, 2 * capacity)
        self.sites += keys.size

    def take(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, N, M): the sorted distinct codes with a site, and per block (n_blocks, D) the
        number of their sites N and the sum of their sigma_i M, float64 (exact integers). The
        counts are then zero again (the rows and the map are kept)."""
        rows = np.flatnonzero(_seen(self.counts, self.n_rows))
        rows = rows[np.argsort(self.codes[rows])]
        count = np.empty((self.counts.shape[0], rows.size))
        spin = np.empty_like(count)
        _take(self.counts, rows, count, spin)
        self.sites = 0
        return self.codes[rows], count, spin


@njit(cache=True, nogil=True)
def _seen(counts, n_rows):
    """Whether each of the first ``n_rows`` rows has a site in some block."""
    seen = np.zeros(n_rows, dtype=np.bool_)
    for block in range(counts.shape[0]):
        for row in range(n_rows):
            seen[row] |= counts[block, row, 0] + counts[block, row, 1] > 0
    return seen


@njit(cache=True, nogil=True)
def _take(counts, rows, count, spin):
    """N and M of ``rows`` (their order) into ``count`` and ``spin``; their counts set to zero."""
    for block in range(counts.shape[0]):
        for j in range(rows.shape[0]):
            down, up = counts[block, rows[j], 0], counts[block, rows[j], 1]
            count[block, j] = down + up
            spin[block, j] = up - down
            counts[block, rows[j], 0] = 0
            counts[block, rows[j], 1] = 0
