"""Renormalized couplings K^(n)_alpha of every RG level, from its configurations (Swendsen 1984).

Write the Hamiltonian of level n as H = sum_alpha K_alpha S_alpha (weight e^H, the interactions of
``rbmrg.rg.interactions``). Given all other spins, sigma_i is +-1 with weight e^{sigma_i h_i}, where
h_i = sum_alpha K_alpha S_alpha,i and S_alpha,i = dS_alpha/dsigma_i is the sum, over the terms of
alpha that contain site i, of the product of their other spins (``site_sums``). Hence, for any g
that does not involve sigma_i, <sigma_i g> = <tanh(h_i) g> (Swendsen, Phys. Rev. Lett. 52, 1165
(1984)). With g = S_beta,i and the average taken over all sites (translation invariance):

    F_beta(K) = <S_beta,i sigma_i> - <S_beta,i tanh(sum_alpha K_alpha S_alpha,i)> = 0,

one equation per coupling of the truncated Hamiltonian. F is the gradient of the concave function
Phi(K) = <(K . s_i) sigma_i> - <log cosh(K . s_i)> (the log pseudo-likelihood), so the solution is
unique; Newton's method finds it from K = 0, with the Jacobian

    J_beta,alpha = -<S_beta,i S_alpha,i (1 - tanh^2 h_i)>,

halving a step whenever it would lower Phi. On configurations drawn from e^H with H in the span of
the chosen interactions, the solution is the true K up to statistical error; on a renormalized
level it is the projection of the (infinite) renormalized Hamiltonian onto the chosen set.

**Streaming, exactly.** F and J depend on the data only through the histogram of local
environments: for each distinct integer vector s = (S_alpha,i)_alpha, the number of sites N(s)
that have it and the sum M(s) of their sigma_i. :class:`CouplingAccumulator` keeps that histogram
per jackknife block, in a table that grows only with the number of *distinct* environments (bounded
by prod_alpha (coordination_alpha + 1), in practice 10^4-10^5 for the 7-8 even interactions),
never with the number of configurations; the Newton solve then needs no configuration at all.
Errors are leave-one-block-out jackknife over blocks of independent chains, as for MCRG.

**Compiled counting.** On the CPU, for +-1 values and a code space of at most
``rbmrg.rg.environments.MAX_CODES`` codes (the default even set has 5^6 9 = 140625), a numba
kernel computes every site's environment code and sigma_i from the int8 padded lattice and counts
them per block in an int32 table reached through a direct map from code to row (no sort,
:mod:`rbmrg.rg.environments`); the table moves into the histogram when that is read
(:meth:`~CouplingAccumulator.environments`, :meth:`~CouplingAccumulator.result`). The counts are
the integers that the torch path (``site_sums``, a sort of float64 keys) finds, so every result is
bit-identical; torch still counts other devices, values other than +-1, larger code spaces and
``response=True`` (whose O-weighted float sums depend on the order of summation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rbmrg.rg.environments import (
    KEY_SITES,
    MAX_CODES,
    MAX_COORDINATION,
    KeyCounts,
    KeyTables,
    environment_keys,
)
from rbmrg.rg.interactions import Interaction, site_sums

#: Newton stops when the largest coupling update is below this (couplings are O(0.01-1)).
TOLERANCE = 1e-12
MAX_ITERATIONS = 100
#: Lattice dtypes the compiled counts read (numba arrays); others are counted by torch.
_COMPILED_DTYPES = (torch.float32, torch.float64, torch.int8, torch.int16, torch.int32, torch.int64)


def check_levels(
    interactions: Sequence[Interaction], lattice_sizes: Sequence[int], setting: str = "couplings"
) -> None:
    """Raise a ValueError, naming ``setting``, if an interaction does not fit a level.

    The couplings of one level are solved jointly, so a level must hold every interaction
    (L > 2 span, see :meth:`Interaction.fits`). Call it before sampling.
    """
    for level, size in enumerate(lattice_sizes):
        unfit = [i.name for i in interactions if not i.fits(size)]
        if unfit:
            raise ValueError(
                f"{setting}: interactions {unfit} do not fit level {level} (L={size}, needs "
                "L > 2 x span); use fewer RG steps, a larger lattice or a shorter-range set"
            )


@dataclass
class CouplingResult:
    """K^(n)_alpha with jackknife errors: ``couplings[level][alpha]``, alpha in ``names`` order."""

    couplings: np.ndarray  # (n_levels, n_interactions)
    errors: np.ndarray  # (n_levels, n_interactions)
    names: list[str]
    lattice_sizes: list[int] = field(default_factory=list)
    n_samples: int = 0
    #: Distinct local environments seen on each level (the size of the stored histogram).
    n_environments: list[int] = field(default_factory=list)
    #: Leave-one-block-out solutions, (n_blocks, n_levels, n_interactions).
    jackknife: np.ndarray | None = None
    #: dK^(n)_alpha / dh for a perturbation h O of level 0 (``response=True``), with errors.
    response: np.ndarray | None = None
    response_errors: np.ndarray | None = None


class _Histogram:
    """Per-block sums over the sites of each distinct environment code of one level.

    Channels: ``count`` N(s) and ``spin`` M(s) (exact integers), and, for a response, ``count_o``
    and ``spin_o``: the same sums with each site weighted by the perturbation O of its configuration.
    """

    def __init__(self, n_blocks: int, channels: Sequence[str]):
        self.n_blocks = n_blocks
        self.codes = np.empty(0, dtype=np.int64)  # sorted
        self.sums = {name: np.zeros((n_blocks, 0)) for name in channels}

    def _include(self, codes: np.ndarray, distinct: bool = False) -> None:
        """Give every code of ``codes`` (``distinct``: no repeats) a column (zero sums), keeping
        the columns sorted."""
        new = np.setdiff1d(codes, self.codes, assume_unique=distinct)
        if new.size:
            merged = np.sort(np.concatenate([self.codes, new]))
            where = np.searchsorted(merged, self.codes)
            for name, old in self.sums.items():
                grown = np.zeros((self.n_blocks, merged.size))
                grown[:, where] = old
                self.sums[name] = grown
            self.codes = merged

    def add(self, codes: np.ndarray, blocks: np.ndarray, **values: np.ndarray) -> None:
        """Add ``values[name][k]`` to channel ``name`` at (``blocks[k]``, ``codes[k]``)."""
        self._include(codes)
        flat = blocks * self.codes.size + np.searchsorted(self.codes, codes)
        size = self.n_blocks * self.codes.size
        for name, value in values.items():
            # float64 sums of integer counts stay exact below 2^53 sites.
            self.sums[name] += np.bincount(flat, value, size).reshape(self.n_blocks, -1)

    def add_table(self, codes: np.ndarray, **sums: np.ndarray) -> None:
        """Add per-block sums ``sums[name]`` (n_blocks, len(codes)) of sorted distinct ``codes``;
        the arrays are the histogram's afterwards (the first table becomes it: 0 + x is x)."""
        if not self.codes.size:
            self.codes = codes
            self.sums.update(sums)
            return
        self._include(codes, distinct=True)
        where = np.searchsorted(self.codes, codes)
        for name, value in sums.items():
            self.sums[name][:, where] += value


class CouplingAccumulator:
    """Streaming histograms of local environments on ``n_levels`` RG levels, per jackknife block.

    Args:
        interactions: the truncated Hamiltonian's interactions, in the order of the output.
        n_levels: number of lattice levels, N_r + 1.
        n_blocks: jackknife blocks (>= 2; use >= 20), each a group of whole independent chains.
        response: also accumulate what :meth:`result` needs for dK^(n)/dh, the linear response of
            every level's couplings to a perturbation h O of the level-0 Hamiltonian; O (one value
            per configuration, e.g. the magnetization M or S_nn of level 0) is given to
            :meth:`update`. Reweighting by e^{h O} to first order in h: no extra sampling.
    """

    def __init__(
        self,
        interactions: Sequence[Interaction],
        n_levels: int,
        n_blocks: int,
        response: bool = False,
    ):
        if n_levels < 1:
            raise ValueError(f"n_levels={n_levels}: need at least one level")
        if n_blocks < 2:
            raise ValueError(f"n_blocks={n_blocks}: the jackknife needs at least 2 blocks")
        if not interactions:
            raise ValueError("no interactions given")
        self.interactions = tuple(interactions)
        self.n_levels = n_levels
        self.n_blocks = n_blocks
        self.response = response
        # Environment code: mixed radix over the digits (S_alpha,i + c_alpha) / 2 in [0, c_alpha].
        radices = [i.coordination + 1 for i in self.interactions]
        if math.prod(radices) * n_blocks * 2 >= 2**53:
            raise ValueError(
                f"{len(radices)} interactions: too many for the environment code; use fewer"
            )
        self.offsets = [float(i.coordination) for i in self.interactions]
        self.strides = np.cumprod([1] + radices[:-1]).astype(np.int64)
        self.radices = np.array(radices, dtype=np.int64)
        channels = ("count", "spin", "count_o", "spin_o") if response else ("count", "spin")
        self.histograms = [_Histogram(n_blocks, channels) for _ in range(n_levels)]
        # The compiled counts (rbmrg.rg.environments) where they apply: count and spin only, a code
        # space within MAX_CODES; moved into ``histograms`` when these are read.
        self._compiled = (
            not response
            and math.prod(radices) <= MAX_CODES
            and max(radices) - 1 <= MAX_COORDINATION
        )
        self._key_tables: dict[tuple[int, int], KeyTables] = {}
        self._key_counts: list[KeyCounts | None] = [None] * n_levels
        self.lattice_sizes: list[int] | None = None
        self.n_samples = 0
        # Per block: configurations and the sum of the perturbation O over them.
        self.configurations = np.zeros(n_blocks)
        self.perturbation = np.zeros(n_blocks)

    def update(
        self,
        levels: list[torch.Tensor],
        blocks: torch.Tensor | int,
        perturbation: torch.Tensor | None = None,
    ) -> None:
        """Add one batch: ``levels[n]`` is (batch, L_n, ..., L_n), ``blocks`` the block of each row,
        ``perturbation`` the value of O on each configuration (needed with ``response=True``)."""
        if len(levels) != self.n_levels:
            raise ValueError(f"got {len(levels)} levels, the accumulator has {self.n_levels}")
        if self.response != (perturbation is not None):
            raise ValueError(
                "perturbation values are needed with response=True and only then "
                f"(response={self.response})"
            )
        sizes = [int(level.shape[-1]) for level in levels]
        if self.lattice_sizes is None:
            check_levels(self.interactions, sizes)
            self.lattice_sizes = sizes
        batch = levels[0].shape[0]
        if isinstance(blocks, int):
            blocks = torch.full((batch,), blocks, dtype=torch.long)
        blocks = blocks.to("cpu", torch.long)
        if int(blocks.min()) < 0 or int(blocks.max()) >= self.n_blocks:
            raise ValueError(f"block indices must lie in [0, {self.n_blocks})")
        self.configurations += np.bincount(blocks.numpy(), minlength=self.n_blocks)
        if perturbation is not None:
            perturbation = perturbation.to("cpu", torch.float64).reshape(batch)
            self.perturbation += np.bincount(
                blocks.numpy(), perturbation.numpy(), minlength=self.n_blocks
            )
        for index, level in enumerate(levels):
            done = self._count_compiled(index, level, blocks)
            if done < batch:
                rest = None if perturbation is None else perturbation[done:]
                self._count_torch(self.histograms[index], level[done:], blocks[done:], rest)
        self.n_samples += batch

    def _count_compiled(self, index: int, level: torch.Tensor, blocks: torch.Tensor) -> int:
        """Count the rows of ``level`` with the compiled kernels (:mod:`rbmrg.rg.environments`);
        returns how many, from the first: the rest (values other than +-1, or all rows where the
        kernels do not apply) are for :meth:`_count_torch`. Exact counts either way."""
        L, dim, batch = int(level.shape[-1]), level.ndim - 1, int(level.shape[0])
        if (
            not self._compiled
            or level.device.type != "cpu"
            or level.dtype not in _COMPILED_DTYPES
            or not all(i.fits(L) for i in self.interactions)  # torch raises the error
        ):
            return 0
        if (L, dim) not in self._key_tables:
            self._key_tables[L, dim] = KeyTables(
                [i.terms for i in self.interactions],
                self.strides,
                [i.coordination for i in self.interactions],
                L,
                dim,
            )
        tables = self._key_tables[L, dim]
        spins = level.detach().reshape(batch, -1).contiguous().numpy()
        block_of = blocks.numpy()
        rows = max(1, KEY_SITES // spins.shape[1])
        for start in range(0, batch, rows):
            keys = environment_keys(spins[start : start + rows], tables)
            if keys is None:
                return start
            counts = self._key_counts[index]
            if counts is not None and keys.size > counts.room:
                self._take(index)
                counts = None
            if counts is None:
                counts = KeyCounts(int(self.radices.prod()), self.n_blocks)
                self._key_counts[index] = counts
            counts.add(keys, block_of[start : start + rows])
        return batch

    def _take(self, index: int) -> None:
        """Move the compiled counts of level ``index`` into its histogram, and free their table
        (up to 2 x 67 MB a level for the cubic set; a later update starts a new one)."""
        counts = self._key_counts[index]
        if counts is not None and counts.sites:
            codes, count, spin = counts.take()
            self._key_counts[index] = None
            self.histograms[index].add_table(codes, count=count, spin=spin)

    def _count_torch(
        self,
        histogram: _Histogram,
        level: torch.Tensor,
        blocks: torch.Tensor,
        perturbation: torch.Tensor | None,
    ) -> None:
        """Count the sites of ``level`` by a sort of their keys (torch; any values, any device)."""
        spins = level.to(torch.float32)
        shape = (-1, *[1] * (spins.ndim - 1))
        sums = site_sums(spins, self.interactions)  # (batch, n, L, ..., L)
        # key = (code * n_blocks + block) * 2 + (sigma_i + 1) / 2, with the environment code
        # sum_alpha (S_alpha,i + c_alpha) / 2 * stride_alpha: integers below 2^53 (checked in
        # __init__), exact in float64. Counting keys counts sites per (code, block, sigma_i).
        keys = (spins + 1).to(torch.float64) / 2
        keys += 2 * blocks.view(shape).to(torch.float64)
        for alpha in range(len(self.interactions)):
            scale = float(self.strides[alpha]) * self.n_blocks
            keys += (sums[:, alpha].to(torch.float64) + self.offsets[alpha]) * scale
        keys = keys.flatten().to(torch.int64)
        values = {}
        if perturbation is None:
            unique, counts = torch.unique(keys, return_counts=True)
        else:
            unique, inverse, counts = torch.unique(keys, return_inverse=True, return_counts=True)
            weighted = torch.zeros(unique.shape[0], dtype=torch.float64)
            site_weights = perturbation.view(shape).expand(spins.shape).flatten()
            weighted.index_add_(0, inverse, site_weights)
            values["count_o"] = weighted.numpy()
        unique, counts = unique.numpy(), counts.numpy().astype(np.float64)
        sign = np.where(unique % 2 == 1, 1.0, -1.0)
        values["count"], values["spin"] = counts, sign * counts
        if perturbation is not None:
            values["spin_o"] = sign * values["count_o"]
        histogram.add(unique // (2 * self.n_blocks), (unique // 2) % self.n_blocks, **values)

    def environments(self, level: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(s, sums) of ``level``: the distinct environment vectors s (D, n) and, per channel
        (``count`` N, ``spin`` M, and ``count_o``, ``spin_o`` for a response), per-block sums
        of shape (n_blocks, D)."""
        self._take(level)
        histogram = self.histograms[level]
        digits = (histogram.codes[:, None] // self.strides[None, :]) % self.radices[None, :]
        coordination = self.radices - 1
        return (2 * digits - coordination).astype(np.float64), histogram.sums

    def result(self, names: Sequence[str] | None = None) -> CouplingResult:
        """Couplings of every level with jackknife errors (NaN, with a warning, where Newton fails).

        ``names`` solves the truncated Hamiltonian of a subset of the accumulated interactions, in
        that order: its environment histogram is the accumulated one summed over the left-out
        components (exact), so one pass serves every truncation. With ``response=True`` the result
        also holds dK^(n)/dh (:func:`coupling_response`).
        """
        if self.n_samples == 0:
            raise RuntimeError("no samples accumulated")
        for level in range(self.n_levels):
            self._take(level)
        all_names = [i.name for i in self.interactions]
        names = all_names if names is None else list(names)
        missing = [name for name in names if name not in all_names]
        if missing or not names:
            raise ValueError(f"couplings: {missing or names} not among the accumulated {all_names}")
        columns = [all_names.index(name) for name in names]
        shape = (self.n_levels, len(names))
        full, response = np.full(shape, np.nan), np.full(shape, np.nan)
        jack = np.full((self.n_blocks, *shape), np.nan)
        jack_response = np.full((self.n_blocks, *shape), np.nan)
        failed = []
        for level in range(self.n_levels):
            s, sums = self.environments(level)
            if columns != list(range(len(all_names))):
                s, inverse = np.unique(s[:, columns], axis=0, return_inverse=True)
                inverse = inverse.ravel()
                sums = {
                    key: np.stack([np.bincount(inverse, row, len(s)) for row in value])
                    for key, value in sums.items()
                }
            totals = {key: value.sum(0) for key, value in sums.items()}
            full[level] = solve_couplings(s, totals["count"], totals["spin"])
            if self.response:
                response[level] = coupling_response(
                    s, totals, self.perturbation.sum() / self.configurations.sum(), full[level]
                )
            start = full[level] if np.isfinite(full[level]).all() else None
            for j in range(self.n_blocks):
                kept = {key: totals[key] - sums[key][j] for key in sums}
                jack[j, level] = solve_couplings(s, kept["count"], kept["spin"], start)
                if self.response:
                    mean = (self.perturbation.sum() - self.perturbation[j]) / (
                        self.configurations.sum() - self.configurations[j]
                    )
                    jack_response[j, level] = coupling_response(s, kept, mean, jack[j, level])
            if not np.isfinite(full[level]).all():
                failed.append(level)
        if failed:
            warnings.warn(
                f"couplings: Newton did not converge on levels {failed} (singular or runaway "
                "couplings); reported as NaN",
                stacklevel=2,
            )
        n = self.n_blocks

        def spread(samples: np.ndarray) -> np.ndarray:
            return np.sqrt((n - 1) / n * ((samples - samples.mean(0)) ** 2).sum(0))

        return CouplingResult(
            couplings=full,
            errors=spread(jack),
            names=names,
            lattice_sizes=list(self.lattice_sizes or []),
            n_samples=self.n_samples,
            n_environments=[h.codes.size for h in self.histograms],
            jackknife=jack,
            response=response if self.response else None,
            response_errors=spread(jack_response) if self.response else None,
        )


def coupling_response(
    s: np.ndarray, sums: dict[str, np.ndarray], mean_perturbation: float, couplings: np.ndarray
) -> np.ndarray:
    """dK/dh at h = 0 for the weight e^{H + h O}: differentiate F(K(h), h) = 0.

    Reweighting by e^{h O} changes each environment sum X(s) (N or M) by h [X_O(s) - <O> X(s)] to
    first order, X_O the O-weighted sum; so dF/dh = sum_s s [M'(s) - N'(s) tanh(K . s)] / N_tot and
    dK/dh = -J^-1 dF/dh with the Jacobian J of the module docstring.
    """
    count, spin = sums["count"], sums["spin"]
    total = count.sum()
    count_d = sums["count_o"] - mean_perturbation * count
    spin_d = sums["spin_o"] - mean_perturbation * spin
    tanh = np.tanh(s @ couplings)
    gradient_h = s.T @ (spin_d - count_d * tanh) / total
    jacobian = -(s * (count * (1 - tanh**2))[:, None]).T @ s / total
    try:
        return -np.linalg.solve(jacobian, gradient_h)
    except np.linalg.LinAlgError:
        return np.full(s.shape[1], np.nan)


def solve_couplings(
    s: np.ndarray, count: np.ndarray, spin: np.ndarray, start: np.ndarray | None = None
) -> np.ndarray:
    """K solving <S_i sigma_i> = <S_i tanh(K . S_i)> from an environment histogram; NaN if none.

    ``s`` (D, n): distinct environment vectors; ``count`` (D,): sites with each; ``spin`` (D,): sum
    of their sigma_i. Newton's method on the concave Phi(K) (module docstring), from ``start`` or 0.
    """
    keep = count > 0
    s, count, spin = s[keep], count[keep].astype(np.float64), spin[keep].astype(np.float64)
    total = count.sum()
    if total == 0:
        return np.full(s.shape[1], np.nan)
    couplings = np.zeros(s.shape[1]) if start is None else start.copy()

    def objective(k: np.ndarray) -> float:
        field = s @ k
        # log cosh x = |x| + log1p(exp(-2|x|)) - log 2, stable for large |x|.
        log_cosh = np.abs(field) + np.log1p(np.exp(-2 * np.abs(field))) - math.log(2)
        return float((field * spin - count * log_cosh).sum() / total)

    value = objective(couplings)
    for _ in range(MAX_ITERATIONS):
        tanh = np.tanh(s @ couplings)
        gradient = s.T @ (spin - count * tanh) / total
        hessian = -(s * (count * (1 - tanh**2))[:, None]).T @ s / total
        try:
            step = -np.linalg.solve(hessian, gradient)
        except np.linalg.LinAlgError:
            return np.full(s.shape[1], np.nan)
        if not np.all(np.isfinite(step)):
            return np.full(s.shape[1], np.nan)
        scale = 1.0
        while True:
            trial = couplings + scale * step
            trial_value = objective(trial)
            # Backtrack only on a real decrease: near the solution Phi changes by less than its
            # rounding error, and the full Newton step is what converges.
            if trial_value >= value - 1e-12 * (1 + abs(value)) or scale < 1e-6:
                break
            scale /= 2
        couplings, value = trial, trial_value
        if np.abs(scale * step).max() < TOLERANCE:
            return couplings
    return np.full(s.shape[1], np.nan)
