"""Wolff single-cluster updates (numba) on the hypercubic lattice of any dimension: ``"wolff"``.

One independent chain per row of ``state.spins`` (shape ``(chains, L^dim)`` int8), parallel over
chains. A bond to an aligned neighbour (anti-aligned when K < 0) joins the cluster with probability
``1 - exp(-2|K|)``. One *sweep* is a fixed number ``clusters_per_sweep`` of cluster flips per chain,
chosen before any sampling so that the flipped sites add up to ``L^dim`` on average:
``round(L^dim / <|C|>)``, with the mean cluster size ``<|C|>`` measured on 32 pilot chains of their
own random stream. The count is fixed rather than "flip until L^dim sites are done" because a
data-dependent stopping time biases the state at which it stops (the last cluster tends to be a big
one); with a fixed count every step is the same Boltzmann-invariant transition. Each chain has its
own xoshiro256++ stream (:mod:`rbmrg.lattice.rng`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from numba import njit, prange

from rbmrg.lattice.base import Sampler
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.rng import U64, seed_streams, set_threads, stream_base, xoshiro_next

# Tags that keep the streams of the sampler and of its pilot run apart from the other kernels' ones.
_TAG_WOLFF = 0x574F4C46
_TAG_PILOT = 0x50494C54


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
            word, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
            spins[c, i] = 1 if (word >> U64(63)) else -1
        states[c, 0], states[c, 1], states[c, 2], states[c, 3] = s0, s1, s2, s3
    return spins


@njit(cache=True, inline="always")
def _uniform_site(n_sites, s0, s1, s2, s3):
    """Unbiased integer in [0, n_sites) (Lemire's multiply-and-reject), n_sites < 2^32."""
    n = U64(n_sites)
    threshold = (U64(2**32) - n) % n
    while True:
        word, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
        product = (word >> U64(32)) * n
        if (product & U64(0xFFFFFFFF)) >= threshold:
            return np.int64(product >> U64(32)), s0, s1, s2, s3


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
                word, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
                if (word >> U64(11)) < add_threshold:
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
    set_threads()
    rng = seed_streams(stream_base(seed, _TAG_PILOT), n_chains)
    spins = _wolff_hot_start(rng, n_sites)
    _wolff_budget(spins, rng, neighbours, n_thermalize * n_sites, threshold, sign)
    counts, flipped = _wolff_budget(spins, rng, neighbours, n_measure * n_sites, threshold, sign)
    return float(flipped.sum()) / float(counts.sum())


def _wolff_parameters(model: IsingModel) -> tuple[np.uint64, int]:
    """(53-bit threshold of the bond probability 1 - exp(-2|K|), sign of the bond condition)."""
    p_add = -math.expm1(-2.0 * abs(float(model.coupling)))
    return U64(int(p_add * 2**53)), (1 if model.coupling >= 0 else -1)


def wolff(model: IsingModel, device: torch.device, seed: int) -> Sampler:
    """Wolff single-cluster sampler over many independent chains; see the module docstring."""
    if model.n_sites >= 2**31:
        raise ValueError(f"L={model.L}: too many sites for the Wolff kernel's int32 stack")
    neighbours = neighbour_table(model)
    threshold, sign = _wolff_parameters(model)
    base = stream_base(seed, _TAG_WOLFF)
    clusters_per_sweep = max(1, round(model.n_sites / mean_cluster_size(model, seed)))

    def init(n_chains: int) -> WolffState:
        set_threads()
        rng = seed_streams(base, n_chains)
        return WolffState(_wolff_hot_start(rng, model.n_sites), rng)

    def step(state: WolffState, n_sweeps: int = 1) -> WolffState:
        set_threads()
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
