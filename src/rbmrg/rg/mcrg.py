"""Monte Carlo renormalization group (Swendsen 1979): exponents from correlations across RG levels.

With S^(n)_a the interactions measured on RG level n (level 0 = the simulated lattice),

    A_ab = <S^(n+1)_a S^(n+1)_b> - <S^(n+1)_a><S^(n+1)_b>
    B_ab = <S^(n+1)_a S^(n)_b>   - <S^(n+1)_a><S^(n)_b>
    T    = A^-1 B  (= dK^(n+1) / dK^(n)),     y = ln(lambda_max(T)) / ln(b).

The even set of interactions gives the thermal exponent y_t, the odd set the magnetic exponent y_h.
Interactions are extensive sums on every level (same normalisation on both sides of T).

Statistics are streamed: for each jackknife block the accumulator keeps, in float64, the count, the
sum of the vector v of all interactions on all levels, and the sum of v v^T. Memory does not grow
with the number of samples. Blocks must hold statistically independent data: rbmrg assigns whole
independent Markov chains to a block, never consecutive samples of one chain.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from rbmrg.rg.interactions import EVEN, ODD, Interaction, measure
from rbmrg.rg.transforms import Transform, iterate

DEFAULT_SETS: dict[str, tuple[Interaction, ...]] = {"even": EVEN, "odd": ODD}
#: Name of an exponent -> the interaction set it comes from.
EXPONENT_SET = {"y_t": "even", "y_h": "odd"}
#: Fewest jackknife blocks for an error bar one can trust (the error of the error is ~1/sqrt(2 n)).
MIN_BLOCKS = 20


def check_blocks(
    n_blocks: int, n_chains: int, names: tuple[str, str] = ("n_blocks", "n_chains")
) -> None:
    """Raise a ValueError naming the setting unless MIN_BLOCKS <= n_blocks <= n_chains.

    Every jackknife block holds whole independent chains, so there can be no more blocks than chains.
    """
    if n_blocks < MIN_BLOCKS:
        raise ValueError(
            f"{names[0]}={n_blocks}: use at least {MIN_BLOCKS} jackknife blocks for a trustworthy "
            "error bar"
        )
    if n_blocks > n_chains:
        raise ValueError(
            f"{names[0]}={n_blocks} > {names[1]}={n_chains}: every jackknife block needs its own "
            "independent chains"
        )


class MCRGAccumulator:
    """Streaming sums for MCRG over ``n_levels`` RG levels, per jackknife block.

    Args:
        n_levels: number of lattice levels, N_r + 1.
        n_blocks: jackknife blocks (>= 2; use >= 20 for a trustworthy error bar).
        sets: named interaction sets, e.g. ``{"even": EVEN, "odd": ODD}``.
    """

    def __init__(
        self,
        n_levels: int,
        n_blocks: int,
        sets: dict[str, tuple[Interaction, ...]] | None = None,
        device: torch.device | str = "cpu",
    ):
        if n_levels < 2:
            raise ValueError(f"n_levels={n_levels}: MCRG needs at least two levels (N_r >= 1)")
        if n_blocks < 2:
            raise ValueError(f"n_blocks={n_blocks}: the jackknife needs at least 2 blocks")
        self.sets = dict(DEFAULT_SETS if sets is None else sets)
        self.interactions: tuple[Interaction, ...] = tuple(i for s in self.sets.values() for i in s)
        self.n_levels = n_levels
        self.n_blocks = n_blocks
        self.width = len(self.interactions)
        size = n_levels * self.width
        self.device = torch.device(device)
        self.count = torch.zeros(n_blocks, dtype=torch.float64, device=self.device)
        self.sum = torch.zeros(n_blocks, size, dtype=torch.float64, device=self.device)
        self.outer = torch.zeros(n_blocks, size, size, dtype=torch.float64, device=self.device)
        self.lattice_sizes: list[int] | None = None
        self.dim: int | None = None
        self.valid: torch.Tensor | None = None  # (size,) bool: interaction fits its level
        # Covariances are shift invariant; subtracting a typical value keeps sum(v v^T) from
        # cancelling catastrophically when <S>^2 >> Var(S).
        self.shift: torch.Tensor | None = None

    def update(
        self,
        levels: list[torch.Tensor],
        blocks: torch.Tensor | int,
        level0_values: torch.Tensor | None = None,
    ) -> None:
        """Add one batch. ``levels[n]`` is (batch, L_n, ..., L_n); ``blocks`` the block of each row.

        ``level0_values``, if given, are the interactions of ``levels[0]`` measured beforehand
        (``measure(levels[0], acc.interactions)``, shape (batch, width)): a caller that runs MCRG
        again and again on the same configurations measures level 0 only once.
        """
        if len(levels) != self.n_levels:
            raise ValueError(f"got {len(levels)} levels, the accumulator has {self.n_levels}")
        if level0_values is None:
            level0_values = measure(levels[0], self.interactions)
        elif level0_values.shape != (levels[0].shape[0], self.width):
            raise ValueError(
                f"level0_values has shape {tuple(level0_values.shape)}, expected "
                f"({levels[0].shape[0]}, {self.width})"
            )
        measured = [level0_values.to(levels[0].device, torch.float64)]
        values = torch.cat(
            measured + [measure(level, self.interactions) for level in levels[1:]], 1
        )
        values = values.to(self.device)
        batch = values.shape[0]
        if isinstance(blocks, int):
            blocks = torch.full((batch,), blocks, dtype=torch.long, device=self.device)
        blocks = blocks.to(self.device, torch.long)
        if self.valid is None:
            self.lattice_sizes = [int(level.shape[-1]) for level in levels]
            self.dim = levels[0].ndim - 1
            self.valid = ~torch.isnan(values[0])
            self.shift = torch.nan_to_num(values.mean(0)).round()
        values = torch.nan_to_num(values - self.shift)
        self.count.index_add_(0, blocks, torch.ones(batch, dtype=torch.float64, device=self.device))
        self.sum.index_add_(0, blocks, values)
        # sum(v v^T) per block as one matrix product per run of rows of one block (rows sorted by
        # block first): no (batch, size, size) tensor. On +-1 spins the values are integers and
        # every partial sum stays far below 2^53: the sums are exact in any order of summation.
        if bool((blocks[1:] < blocks[:-1]).any()):
            order = torch.argsort(blocks, stable=True)
            blocks, values = blocks[order], values[order]
        runs, lengths = torch.unique_consecutive(blocks, return_counts=True)
        for block, rows in zip(runs.tolist(), torch.split(values, lengths.tolist()), strict=True):
            self.outer[block].addmm_(rows.T, rows)

    @property
    def n_samples(self) -> int:
        return int(self.count.sum().item())

    def _index(self, level: int, set_name: str, n_couplings: int) -> list[int]:
        start = 0
        for name, interactions in self.sets.items():
            if name == set_name:
                return [level * self.width + start + i for i in range(n_couplings)]
            start += len(interactions)
        raise KeyError(set_name)

    def _moments(self, leave_out: int | None) -> tuple[np.ndarray, np.ndarray]:
        count, total, outer = self.count.sum(), self.sum.sum(0), self.outer.sum(0)
        if leave_out is not None:
            count = count - self.count[leave_out]
            total = total - self.sum[leave_out]
            outer = outer - self.outer[leave_out]
        mean = total / count
        cov = outer / count - mean[:, None] * mean[None, :]
        return mean.cpu().numpy(), cov.cpu().numpy()

    def _estimates(
        self, covs: np.ndarray, positions: list[int], scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(y, fits) for every (N_r, N_c) of the interactions at ``positions`` (their columns within
        a level, N_c = n taking the first n), from each covariance matrix of ``covs``
        (:meth:`covariances`: all data, then each block left out). ``y`` has shape
        (len(covs), N_r, len(positions)); ``fits`` (N_r, len(positions)) says where every
        interaction fits both levels, and elsewhere y is NaN. Each (N_r, N_c) is solved for all the
        matrices in one stacked call (:func:`leading_exponents`); the set is Z2-odd when every term
        of its interactions is."""
        odd = all(len(term) % 2 for p in positions for term in self.interactions[p].terms)
        valid = self.valid.cpu().numpy()
        y = np.full((covs.shape[0], self.n_levels - 1, len(positions)), np.nan)
        fits = np.zeros((self.n_levels - 1, len(positions)), dtype=bool)
        for level in range(self.n_levels - 1):
            for n_c in range(1, len(positions) + 1):
                lower = [level * self.width + p for p in positions[:n_c]]
                upper = [(level + 1) * self.width + p for p in positions[:n_c]]
                fits[level, n_c - 1] = valid[lower + upper].all()
                if fits[level, n_c - 1]:
                    rows = covs[:, upper]
                    y[:, level, n_c - 1] = leading_exponents(
                        rows[:, :, upper], rows[:, :, lower], scale, odd=odd
                    )
        return y, fits

    def exponents(self, set_name: str, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """(y, jackknife error), each of shape (N_r, N_c), for the interaction set ``set_name``.

        ``scale`` is the RG scale factor b. Entries whose interactions do not fit a level, or whose
        A matrix is singular, are NaN (with a warning naming them).
        """
        if self.n_samples == 0:
            raise RuntimeError("no samples accumulated")
        empty = torch.nonzero(self.count == 0).flatten().tolist()
        if empty:
            warnings.warn(
                f"MCRG: jackknife blocks {empty} received no samples; the error bars use only "
                f"{self.n_blocks - len(empty)} of {self.n_blocks} blocks and are not trustworthy",
                stacklevel=2,
            )
        start = self._index(0, set_name, 1)[0]
        positions = list(range(start, start + len(self.sets[set_name])))
        estimates, mask = self._estimates(self.covariances(), positions, scale)
        full, jack = estimates[0], estimates[1:]
        bad = _entries(~mask)
        if bad:
            warnings.warn(
                f"MCRG {set_name}: interactions do not fit the lattice at (N_r, N_c) = {bad} "
                f"(level sizes {self.lattice_sizes}); reported as NaN",
                UnfitInteractionsWarning,
                stacklevel=2,
            )
        n = self.n_blocks
        err = np.sqrt((n - 1) / n * ((jack - jack.mean(0)) ** 2).sum(0))  # NaN where unfit
        singular = np.isnan(full) & mask
        if singular.any():
            warnings.warn(
                f"MCRG {set_name}: singular A matrix or no real positive eigenvalue at "
                f"(N_r, N_c) = {_entries(singular)}; reported as NaN",
                SingularWarning,
                stacklevel=2,
            )
        no_error = np.isfinite(full) & ~np.isfinite(err)
        if no_error.any():
            warnings.warn(
                f"MCRG {set_name}: some jackknife samples are singular at "
                f"(N_r, N_c) = {_entries(no_error)}; "
                "the error bar is reported as NaN",
                SingularWarning,
                stacklevel=2,
            )
        return full, err

    def covariances(self) -> np.ndarray:
        """Covariance matrices of all accumulated values (every interaction on every level):
        index 0 over all samples, index 1 + j without jackknife block j. Shape (1 + n_blocks,
        size, size), float64; a caller solving many interaction subsets computes them once."""
        count, total, outer = (x.cpu().numpy() for x in (self.count, self.sum, self.outer))
        count = np.concatenate([[count.sum()], count.sum() - count])
        total = np.concatenate([total.sum(0)[None], total.sum(0) - total])
        outer = np.concatenate([outer.sum(0)[None], outer.sum(0) - outer])
        mean = total / count[:, None]
        return outer / count[:, None, None] - mean[:, :, None] * mean[:, None, :]

    def ordered_exponents(
        self,
        set_name: str,
        order: list[str],
        scale: float,
        covariances: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(y, jackknife error, leave-one-block-out values) for the interactions of ``set_name``
        taken in ``order`` (their names): N_c = n uses the first n names of ``order``.

        Shapes (N_r, len(order)), (N_r, len(order)) and (n_blocks, N_r, len(order)). The sums hold
        the covariance of every measured interaction, so each ordering of a superset is a choice
        of rows and columns of one pass; the leave-one-out values give jackknife errors of
        differences between orders or N_c. Entries that do not fit a level, or with a singular A,
        are NaN (without a warning: :meth:`exponents` reports those). ``covariances`` is
        :meth:`covariances`, if the caller has it already.
        """
        if self.n_samples == 0:
            raise RuntimeError("no samples accumulated")
        names = [interaction.name for interaction in self.sets[set_name]]
        missing = [name for name in order if name not in names]
        if missing:
            raise KeyError(f"{missing} are not in the accumulated set {set_name!r}: {names}")
        # Column of each named interaction within a level (level n adds n * width).
        start = self._index(0, set_name, 1)[0]
        positions = [start + names.index(name) for name in order]
        covs = self.covariances() if covariances is None else covariances
        estimates, _ = self._estimates(covs, positions, scale)
        full, jack = estimates[0], estimates[1:]
        n = self.n_blocks
        err = np.sqrt((n - 1) / n * ((jack - jack.mean(0)) ** 2).sum(0))
        return full, err, jack

    def level_means(self, set_name: str, level: int = 0, per_site: bool = True) -> list[dict]:
        """Mean of each interaction of ``set_name`` on ``level`` (divided by the number of sites)."""
        n_set = len(self.sets[set_name])
        index = self._index(level, set_name, n_set)
        shift = self.shift.cpu().numpy()[index]
        sites = self.lattice_sizes[level] ** self.dim if per_site else 1
        full = self._moments(None)[0][index] + shift
        jack = np.stack([self._moments(j)[0][index] + shift for j in range(self.n_blocks)])
        n = self.n_blocks
        err = np.sqrt((n - 1) / n * ((jack - jack.mean(0)) ** 2).sum(0))
        valid = self.valid.cpu().numpy()[index]
        return [
            {
                "name": interaction.name,
                "mean": float(full[i] / sites) if valid[i] else float("nan"),
                "err": float(err[i] / sites) if valid[i] else float("nan"),
            }
            for i, interaction in enumerate(self.sets[set_name])
        ]


def _entries(where: np.ndarray) -> list[tuple[int, int]]:
    """The (N_r, N_c) labels of the True entries of a (level, n_c - 1) mask, for warnings."""
    return [(int(level) + 1, int(n_c) + 1) for level, n_c in zip(*np.nonzero(where), strict=True)]


class SingularWarning(UserWarning):
    """An MCRG entry could not be computed (singular A or no real positive eigenvalue)."""


class UnfitInteractionsWarning(UserWarning):
    """Some interactions do not fit a level's lattice: those (N_r, N_c) entries are NaN."""


def leading_exponent(a: np.ndarray, b: np.ndarray, scale: float, odd: bool = False) -> float:
    """y = ln(lambda) / ln(scale), lambda the largest real eigenvalue of T = A^-1 B; NaN if none.

    For a Z2-odd set of interactions (``odd=True``) lambda is the real eigenvalue of largest
    modulus and y = ln|lambda| / ln(scale): a transformation and the same one followed by the global
    flip mu -> -mu are equally good RG maps (an RBM without biases learns W or -W with equal
    likelihood), and the flip changes the sign of every odd S^(n+1), hence of B and of T, exactly.
    Even interactions do not change, so there lambda must be positive. NaN also for non-finite
    input and for an A with condition number above 10^12.
    """
    return float(leading_exponents(np.asarray(a)[None], np.asarray(b)[None], scale, odd)[0])


def leading_exponents(a: np.ndarray, b: np.ndarray, scale: float, odd: bool = False) -> np.ndarray:
    """:func:`leading_exponent` of every pair of a stack: ``a``, ``b`` (..., n, n) -> y (...).

    numpy's linear algebra runs the same LAPACK routine on every matrix of a stack, so each y is
    what the matrix alone gives; a stack only saves the Python and dispatch cost of one call per
    matrix (MCRG solves (N_r, N_c) for all data and each jackknife block at once).
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    shape = a.shape[:-2]
    a, b = a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:])
    y = np.full(a.shape[0], np.nan)
    usable = np.flatnonzero(np.isfinite(a).all((1, 2)) & np.isfinite(b).all((1, 2)))
    if usable.size:
        with np.errstate(all="ignore"):  # singular A: infinite or NaN condition number
            usable = usable[np.linalg.cond(a[usable]) <= 1e12]
    if usable.size:
        try:
            eigenvalues = np.linalg.eigvals(np.linalg.solve(a[usable], b[usable]))
        except np.linalg.LinAlgError:  # one matrix of the stack failed: each on its own
            eigenvalues = [_eigenvalues(a[k], b[k]) for k in usable]
        for k, eig in zip(usable, eigenvalues, strict=True):
            if eig is None:
                continue
            real = eig[np.abs(eig.imag) <= 1e-9 * np.maximum(1.0, np.abs(eig.real))].real
            real = np.abs(real) if odd else real[real > 0]
            if real.size and real.max() > 0:
                y[k] = math.log(real.max()) / math.log(scale)
    return y.reshape(shape)


def _eigenvalues(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """Eigenvalues of A^-1 B, or None where LAPACK fails."""
    try:
        return np.linalg.eigvals(np.linalg.solve(a, b))
    except np.linalg.LinAlgError:
        return None


@dataclass
class MCRGResult:
    """Exponents per (N_r, N_c): ``y[set][n_r - 1][n_c - 1]``, with jackknife errors."""

    y: dict[str, np.ndarray]
    err: dict[str, np.ndarray]
    level0: list[dict] = field(default_factory=list)
    n_samples: int = 0
    lattice_sizes: list[int] = field(default_factory=list)
    #: Wall time spent transforming, measuring and accumulating (not in producing the batches).
    seconds: float = 0.0


def summarize(acc: MCRGAccumulator, scale: float) -> MCRGResult:
    y, err = {}, {}
    for name in acc.sets:
        y[name], err[name] = acc.exponents(name, scale)
    first = next(iter(acc.sets))
    return MCRGResult(
        y=y,
        err=err,
        level0=acc.level_means(first, 0),
        n_samples=acc.n_samples,
        lattice_sizes=list(acc.lattice_sizes or []),
    )


def chain_blocks(n_chains: int, n_blocks: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block index of each of ``n_chains`` independent chains (contiguous groups of chains)."""
    if n_chains < n_blocks:
        raise ValueError(
            f"n_chains={n_chains} < n_blocks={n_blocks}: every jackknife block needs its own "
            "independent chains"
        )
    return torch.arange(n_chains, device=device) * n_blocks // n_chains


def run_mcrg(
    batches: Iterable[tuple[torch.Tensor, ...]],
    transforms: Sequence[Transform],
    n_rg_steps: int,
    scale: float,
    *,
    n_blocks: int = 20,
    sets: dict[str, tuple[Interaction, ...]] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    consumers: Sequence[Callable[[list[torch.Tensor], torch.Tensor], None]] = (),
) -> MCRGResult:
    """The MCRG driver: transform, measure, accumulate and solve, over ``batches``.

    Each batch is ``(spins, block_index)`` or ``(spins, block_index, level0_values)`` with the
    interactions of ``spins`` measured beforehand (see :meth:`MCRGAccumulator.update` and
    :func:`level0_values`). With ``batch_size``, consecutive batches are stacked and transformed
    together until one more would exceed ``batch_size`` rows (a stream of one sampler sweep at a
    time becomes passes of ~``batch_size`` configurations); batches that wait are copied, since a
    sampler may reuse its state buffer. Every caller (the training callback, evaluate, the
    benchmarks) goes through here, so a given stream and seed give the same numbers everywhere.

    ``consumers`` are called after each pass with ``(levels, blocks)``, the very levels and block
    indices the accumulator took (e.g. ``CouplingAccumulator.update`` for the renormalized
    couplings of the same configurations). They must not modify the levels; they do not change
    the exponents, and their time is not counted in ``MCRGResult.seconds``.
    """
    return run_mcrg_replicas(
        batches,
        [transforms],
        n_rg_steps,
        scale,
        n_blocks=n_blocks,
        sets=sets,
        generators=[generator],
        batch_size=batch_size,
        consumers=consumers,
    )[0]


def run_mcrg_replicas(
    batches: Iterable[tuple[torch.Tensor, ...]],
    replicas: Sequence[Sequence[Transform]],
    n_rg_steps: int,
    scale: float,
    *,
    n_blocks: int = 20,
    sets: dict[str, tuple[Interaction, ...]] | None = None,
    generators: Sequence[torch.Generator | None] | None = None,
    batch_size: int | None = None,
    consumers: Sequence[Callable[[list[torch.Tensor], torch.Tensor], None]] = (),
) -> list[MCRGResult]:
    """:func:`run_mcrg` for several transformations on the same configurations, in one pass.

    ``replicas[r]`` is the transformation list of replica r (e.g. the r-th of R independently
    trained filters), ``generators[r]`` its random generator (None: torch's default for all).
    Every pass of the stream is transformed by each replica with its own generator and
    accumulated in its own sums; level 0 is measured once and shared. Returns one
    :class:`MCRGResult` per replica; each equals what :func:`run_mcrg` gives for that replica
    alone with that generator (the generators see the same sequence of draws), so two replicas
    with the same filter and equally seeded generators give identical results. ``consumers`` see
    the levels of replica 0. ``MCRGResult.seconds`` is the time of the whole pass, all replicas.
    """
    if not replicas:
        raise ValueError("run_mcrg_replicas: no transformation given")
    generators = list(generators) if generators is not None else [None] * len(replicas)
    if len(generators) != len(replicas):
        raise ValueError(f"{len(generators)} generators for {len(replicas)} replicas")
    accs: list[MCRGAccumulator] = []
    waiting: list[tuple[torch.Tensor, ...]] = []
    seconds = 0.0

    def flush() -> None:
        nonlocal seconds
        start = time.perf_counter()
        if len(waiting) == 1:
            spins, blocks, *cached = waiting[0]
        else:
            columns = list(zip(*waiting, strict=True))
            spins, blocks, *cached = (torch.cat(column) for column in columns)
        waiting.clear()
        if not accs:
            for _ in replicas:
                accs.append(MCRGAccumulator(n_rg_steps + 1, n_blocks, sets, device=spins.device))
        level0 = cached[0] if cached else None
        if level0 is None and len(replicas) > 1:  # measured once for every replica
            level0 = measure(spins.to(torch.float32), accs[0].interactions)
        first: list[torch.Tensor] = []
        for acc, transforms, generator in zip(accs, replicas, generators, strict=True):
            levels = iterate(spins, transforms, n_rg_steps, generator)
            acc.update(levels, blocks, level0)
            first = first or levels
        seconds += time.perf_counter() - start
        for consumer in consumers:
            consumer(first, blocks)

    rows = 0
    for batch in batches:
        size = batch[0].shape[0]
        rows += size
        if batch_size is None or rows + size > batch_size:
            waiting.append(batch)
            flush()
            rows = 0
        else:
            waiting.append(tuple(part.clone() for part in batch))
    if waiting:
        flush()
    if not accs:
        raise ValueError("no configurations given to MCRG")
    results = [summarize(acc, scale) for acc in accs]
    for result in results:
        result.seconds = seconds
    return results


def level0_values(
    spins: torch.Tensor,
    sets: dict[str, tuple[Interaction, ...]] | None = None,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Interactions of every configuration of ``spins`` in :class:`MCRGAccumulator`'s column order
    (the sets' interactions, concatenated): shape (n, width), float64, for ``run_mcrg`` batches."""
    interactions = tuple(i for s in (DEFAULT_SETS if sets is None else sets).values() for i in s)
    return torch.cat(
        [
            measure(spins[start : start + batch_size], interactions)
            for start in range(0, spins.shape[0], batch_size)
        ]
    )


def chain_major_batches(
    spins: torch.Tensor, n_chains: int, n_blocks: int, batch_size: int = 4096
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of a chain-major data set (see :class:`rbmrg.lattice.sampling.SampleSet`) with block indices."""
    per_chain = spins.shape[0] // n_chains
    block_of_chain = chain_blocks(n_chains, n_blocks, spins.device)
    for start in range(0, spins.shape[0], batch_size):
        rows = torch.arange(start, min(start + batch_size, spins.shape[0]), device=spins.device)
        yield spins[rows], block_of_chain[rows // per_chain]


def format_value(value: float, error: float) -> str:
    """A value with its error in parenthesis notation: 1.00012, 0.00109 -> '1.0001(11)'.

    The error keeps two significant digits when its leading digits are 10-39, else one. An error
    that could not be computed (NaN, e.g. a jackknife sample with a singular A) is shown as ``(?)``
    so that a bare number never passes for an exact one; an error of exactly 0 gives the bare value.
    """
    if not math.isfinite(value):
        return "nan"
    if not math.isfinite(error) or error < 0:
        return f"{value:.4f}(?)"
    if error == 0:
        return f"{value:.4f}"
    exponent = math.floor(math.log10(error))
    leading = error / 10**exponent
    digits = 2 if leading < 4 else 1
    decimals = max(0, digits - 1 - exponent)
    scaled = round(error * 10**decimals)
    return f"{value:.{decimals}f}({scaled})"
