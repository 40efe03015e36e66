"""The physics modules give the same numbers on every torch device (CUDA where present).

Each test runs once on the CPU and, when a GPU is present, once on CUDA, comparing against the CPU
result computed in the same test. On a machine without CUDA the CUDA cases are simply absent.
"""

import torch

from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.samplers import make_sampler
from rbmrg.rg.interactions import EVEN, ODD, measure
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import decimation, majority


def random_spins(shape, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return (2 * torch.randint(0, 2, shape, generator=generator) - 1).to(torch.float32)


def test_rbm_fields_and_free_energy_match_the_cpu(device):
    rbm = ConvRBM(filter_size=8, stride=2, init_scale=0.5).double()
    spins = random_spins((6, 32, 32)).double()
    block_spins = random_spins((6, 16, 16), seed=1).double()
    on_device = ConvRBM(filter_size=8, stride=2).double().to(device)
    on_device.load_state_dict(rbm.state_dict())
    torch.testing.assert_close(
        on_device.hidden_field(spins.to(device)).cpu(), rbm.hidden_field(spins)
    )
    torch.testing.assert_close(
        on_device.visible_field(block_spins.to(device), 32).cpu(),
        rbm.visible_field(block_spins, 32),
    )
    torch.testing.assert_close(
        on_device.free_energy(spins.to(device)).cpu(), rbm.free_energy(spins)
    )
    chain_end = on_device.gibbs(spins.to(device), 3)
    assert chain_end.device.type == torch.device(device).type
    assert set(chain_end.unique().tolist()) <= {-1.0, 1.0}


def test_interactions_and_deterministic_transforms_match_the_cpu(device):
    spins = random_spins((5, 16, 16), seed=2)
    torch.testing.assert_close(
        measure(spins.to(device), EVEN + ODD).cpu(), measure(spins, EVEN + ODD)
    )
    torch.testing.assert_close(decimation(2)(spins.to(device)).cpu(), decimation(2)(spins))
    # Majority without ties is deterministic: use 3x3 blocks (odd block size, no ties possible).
    torch.testing.assert_close(
        majority(3)(random_spins((4, 9, 9)).to(device)).cpu(), majority(3)(random_spins((4, 9, 9)))
    )


def test_torch_sampler_runs_on_the_device(device):
    sampler = make_sampler(IsingModel(L=8), "heatbath", device, seed=3)
    spins = sampler.step(sampler.init(4), 2)
    assert spins.device.type == torch.device(device).type
    assert spins.shape == (4, 8, 8)
