"""The Swendsen-Wang sampler's own pieces: cluster labelling, exact 1D chain, 3D against Wolff.

Its exact tests shared with every sampler (4x4 enumeration, Kaufman's energy at L = 32, same seed
same samples) are in tests/test_ising.py.
"""

import math

import pytest
import torch

from rbmrg.lattice.model import IsingModel, bond_sum
from rbmrg.lattice.samplers import make_sampler
from rbmrg.lattice.sampling import draw_samples
from rbmrg.lattice.swendsen_wang import backward_neighbours, cluster_labels, forward_neighbours


def union_find_labels(bonds: list[list[bool]], forward: list[list[int]]) -> list[int]:
    """Smallest site index of every site's cluster, by plain union-find (one chain)."""
    parent = list(range(len(forward[0])))

    def root(site: int) -> int:
        while parent[site] != site:
            site = parent[site]
        return site

    for axis, row in enumerate(bonds):
        for site, bonded in enumerate(row):
            if bonded:
                a, b = root(site), root(forward[axis][site])
                parent[max(a, b)] = min(a, b)
    return [root(site) for site in range(len(parent))]


@pytest.mark.parametrize(
    "L, dim, probability",
    [(8, 2, 0.5), (8, 2, 0.1), (8, 2, 0.9), (6, 2, 0.6), (16, 1, 0.8), (4, 3, 0.3), (6, 3, 0.25)],
)
def test_cluster_labels_match_union_find(L, dim, probability, device):
    # Around the 2D bond-percolation threshold (p = 1/2) and above it clusters wrap around the
    # periodic boundaries, in one direction or both.
    model = IsingModel(L=L, dim=dim, coupling=0.1)
    forward = forward_neighbours(model, device)
    generator = torch.Generator().manual_seed(L * 10 + dim)
    bonds = torch.rand((16, dim, model.n_sites), generator=generator) < probability
    labels = cluster_labels(bonds.to(device), forward).cpu()
    for chain in range(bonds.shape[0]):
        expected = union_find_labels(bonds[chain].tolist(), forward.cpu().tolist())
        assert labels[chain].tolist() == expected


def test_cluster_labels_follow_the_periodic_boundary(device):
    # Only the bonds across the boundary: each (x = L-1, x = 0) pair of a row is one cluster, and
    # a full ring along an axis joins a whole row.
    model = IsingModel(L=6)
    forward = forward_neighbours(model, device)
    bonds = torch.zeros((2, 2, 6, 6), dtype=torch.bool)
    bonds[0, 1, :, 5] = True  # axis 1 (x), from x = 5 to x = 0
    bonds[1, 0, :, 2] = True  # axis 0 (y): a full ring in y for column x = 2 ...
    bonds[1, 0, 5, :] = True  # ... and the wrap from y = 5 to y = 0 for every column
    labels = cluster_labels(bonds.reshape(2, 2, 36).to(device), forward).cpu().reshape(2, 6, 6)
    index = torch.arange(36).reshape(6, 6)
    expected_wrap = index.clone()
    expected_wrap[:, 5] = index[:, 0]
    assert torch.equal(labels[0], expected_wrap)
    expected_ring = index.clone()
    expected_ring[:, 2] = 2
    expected_ring[5, :] = index[0, :]
    assert torch.equal(labels[1], expected_ring)


def test_backward_neighbours_invert_forward():
    forward = forward_neighbours(IsingModel(L=4, dim=3))
    backward = backward_neighbours(forward)
    sites = torch.arange(64)
    for axis in range(3):
        assert torch.equal(forward[axis, backward[axis]], sites)


def test_steps_add_up_and_seeds_differ(device):
    model = IsingModel(L=8)
    runs = []
    for seed, splits in ((3, [5]), (3, [2, 0, 3]), (4, [5])):
        sampler = make_sampler(model, "swendsen-wang", device, seed)
        state = sampler.init(6)
        for n_sweeps in splits:
            state = sampler.step(state, n_sweeps)
        spins = sampler.spins_of(state)
        assert spins.dtype == torch.int8 and spins.shape == (6, 8, 8)
        assert spins.device.type == torch.device(device).type
        runs.append(spins.cpu())
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])


def test_no_bonds_at_zero_coupling():
    # K = 0: p = 0, every site is its own cluster and gets a fresh random spin each sweep.
    sampler = make_sampler(IsingModel(L=8, coupling=0.0), "swendsen-wang", "cpu", 1)
    assert sampler.details["bond_probability"] == 0.0
    spins = sampler.step(sampler.init(2000), 1).double()
    assert abs(float(spins.mean())) < 4 / math.sqrt(spins.numel())


@pytest.mark.parametrize("coupling", [0.5, -0.8])
def test_ring_correlation_is_exact(coupling):
    # Periodic chain of L sites: <s_i s_i+1> = (t + t^(L-1)) / (1 + t^L), t = tanh K.
    L, n_chains = 16, 4000
    model = IsingModel(L=L, dim=1, coupling=coupling)
    sampler = make_sampler(model, "swendsen-wang", "cpu", 2)
    spins = sampler.spins_of(sampler.step(sampler.init(n_chains), 20))
    per_chain = bond_sum(spins, 1) / L
    t = math.tanh(coupling)
    exact = (t + t ** (L - 1)) / (1 + t**L)
    error = float(per_chain.std()) / math.sqrt(n_chains)
    assert abs(float(per_chain.mean()) - exact) < 4 * error


def test_3d_agrees_with_wolff():
    model = IsingModel(L=4, dim=3)
    means = []
    for algorithm in ("wolff", "swendsen-wang"):
        samples = draw_samples(
            model,
            256 * 20,
            algorithm=algorithm,
            n_chains=256,
            n_thermalize=100,
            n_between=2,
            seed=4,
        )
        chain_means = samples.energy.mean(0) / model.n_sites
        means.append((float(chain_means.mean()), float(chain_means.std()) / math.sqrt(256)))
    (a, da), (b, db) = means
    assert abs(a - b) < 4 * math.hypot(da, db)
