"""Swendsen-Wang cluster updates in plain PyTorch, any torch device: ``"swendsen-wang"``.

One sweep is one Swendsen-Wang update (Swendsen & Wang 1987) of every chain, all chains at once:

1. *bonds*: every nearest-neighbour pair (i, j) with s_i s_j = sign(K) (aligned for K > 0,
   anti-aligned for K < 0) is bonded with probability p = 1 - exp(-2|K|);
2. *clusters*: the connected components of the bond graph, labelled on the device by label
   propagation (:func:`cluster_labels`), as GPU cluster codes do (Komura & Okabe 2012);
3. *flips*: every cluster is flipped with probability 1/2, independently. For K > 0 a cluster is
   aligned, so this gives it a new spin +-1 with probability 1/2 each; for K < 0 it keeps the
   cluster's antiferromagnetic pattern, which is what the Fortuin-Kasteleyn measure requires.

The spins of a state are the ``(n_chains, L, ..., L)`` int8 tensor itself (values +1/-1); inside a
step the lattice is flat, site ``i`` the row-major index. Randomness comes from one
``torch.Generator`` of the device seeded by ``seed``: per sweep, float32 uniforms for the bonds
(``(n_chains, dim, L^dim)``; as in the checkerboard references, p is resolved to 2^-24) and one
random bit per site, of which the bit at each cluster's label decides its flip. So the same seed on
the same device gives the same spins, however the sweeps are split into ``step`` calls.
"""

from __future__ import annotations

import math

import torch

from rbmrg.lattice.base import Sampler
from rbmrg.lattice.model import IsingModel

#: Label-propagation rounds between two convergence checks: a check is one ``.any()``, a device
#: synchronisation on CUDA; rounds after convergence change nothing, so checking late is harmless.
CHECK_EVERY = 4


def forward_neighbours(model: IsingModel, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(dim, L^dim)`` int64: the index of the site one step forward along each axis (periodic).

    Bond ``(a, i)`` joins site ``i`` and ``forward[a, i]``; every nearest-neighbour pair is one
    bond ``(a, i)`` exactly once (L >= 4, so no pair is joined twice around the periodic ring).
    """
    index = torch.arange(model.n_sites, device=device).reshape(model.shape)
    return torch.stack([torch.roll(index, -1, axis).flatten() for axis in range(model.dim)])


def backward_neighbours(forward: torch.Tensor) -> torch.Tensor:
    """``(dim, N)``: the inverse permutations of ``forward``, the site one step backward."""
    backward = torch.empty_like(forward)
    sites = torch.arange(forward.shape[1], device=forward.device)
    for axis in range(forward.shape[0]):
        backward[axis, forward[axis]] = sites
    return backward


def cluster_labels(
    bonds: torch.Tensor, forward: torch.Tensor, backward: torch.Tensor | None = None
) -> torch.Tensor:
    """Connected components of the bond graph of every chain: ``(n_chains, N)`` int64 labels.

    ``bonds`` is ``(n_chains, dim, N)`` bool, bond ``(a, i)`` joining ``i`` and ``forward[a, i]``.
    Each site's label is the smallest site index of its cluster (so labels are canonical: equal
    partitions give equal labels). Labels start as the site index and every round does, for all
    chains and sites at once,

    * *propagation*: ``new_i = min(label_i, label_j for j bonded to i)``;
    * *hooking*: the site ``r = label_i`` takes ``min(label_r, new_i)`` too (a scatter-min), which
      merges whole trees at once, as in Shiloach & Vishkin's algorithm;
    * *pointer jumping*: ``label_i = label[label_i]``.

    Every step keeps ``label_i`` a site of i's own cluster with ``label_i <= i``; the labels stop
    changing only when they are equal across every bond and every label is its own label, i.e. the
    cluster's smallest index. Convergence is checked every :data:`CHECK_EVERY` rounds.
    """
    n_chains, dim, n_sites = bonds.shape
    if backward is None:
        backward = backward_neighbours(forward)
    # Per chain, the site each of the 2 dim directions leads to: the neighbour where bonded, the
    # site itself where not (so a plain min over directions is the propagation). The bond from i
    # to its backward neighbour along a is the forward bond (a, backward[a, i]).
    bonded_backward = torch.gather(bonds, 2, backward.expand(n_chains, dim, n_sites))
    sites = torch.arange(n_sites, device=bonds.device)
    neighbour = torch.where(
        torch.cat([bonds, bonded_backward], 1), torch.cat([forward, backward])[None], sites
    ).reshape(n_chains, 2 * dim * n_sites)
    labels = sites.expand(n_chains, n_sites).contiguous()
    while True:
        before = labels
        for _ in range(CHECK_EVERY):
            ahead = torch.gather(labels, 1, neighbour).reshape(n_chains, 2 * dim, n_sites)
            new = labels
            for direction in range(2 * dim):
                new = torch.minimum(new, ahead[:, direction])
            hooked = labels.scatter_reduce(1, labels, new, reduce="amin")
            labels = torch.minimum(new, hooked)
            labels = torch.gather(labels, 1, labels)
        if not bool((labels != before).any()):
            return labels


def swendsen_wang(model: IsingModel, device: torch.device | str, seed: int) -> Sampler:
    """Swendsen-Wang sampler over many independent chains; see the module docstring.

    ``details``: ``bond_probability`` = 1 - exp(-2|K|).
    """
    device = torch.device(device)
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    forward = forward_neighbours(model, device)
    backward = backward_neighbours(forward)
    bond_probability = -math.expm1(-2.0 * abs(float(model.coupling)))
    ferromagnetic = model.coupling >= 0
    shape, n_sites, dim = model.shape, model.n_sites, model.dim

    def init(n_chains: int) -> torch.Tensor:
        bits = torch.randint(0, 2, (n_chains, *shape), generator=generator, device=device)
        return (2 * bits - 1).to(torch.int8)

    def sweep(spins: torch.Tensor) -> torch.Tensor:
        n_chains = spins.shape[0]
        # (n_chains, dim, N): the spin at each bond's forward end.
        ahead = spins[:, forward]
        satisfied = (spins[:, None, :] == ahead) if ferromagnetic else (spins[:, None, :] != ahead)
        uniform = torch.rand(
            (n_chains, dim, n_sites), generator=generator, device=device, dtype=torch.float32
        )
        bonds = satisfied & (uniform < bond_probability)
        labels = cluster_labels(bonds, forward, backward)
        flip_bits = torch.randint(
            0, 2, (n_chains, n_sites), generator=generator, device=device, dtype=torch.int8
        )
        flip = torch.gather(flip_bits, 1, labels).bool()
        return torch.where(flip, -spins, spins)

    def step(spins: torch.Tensor, n_sweeps: int = 1) -> torch.Tensor:
        n_chains = spins.shape[0]
        flat = spins.reshape(n_chains, n_sites)
        for _ in range(int(n_sweeps)):
            flat = sweep(flat)
        return flat.reshape(n_chains, *shape)

    return Sampler(init, step, device=device, details={"bond_probability": bond_probability})
