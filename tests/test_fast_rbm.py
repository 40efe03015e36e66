"""The fused numba CD kernel (:mod:`rbmrg.training.cd_numba`) against the torch reference and exact results."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from test_module import fit
from test_rbm import L, all_states, chi_square_pvalue, dense_weights, make_rbm

from rbmrg.training import cd_numba as fast_rbm
from rbmrg.training.module import RBMModule

# Stride 1 is refused by ConvRBM (no scale factor), so every geometry here has b >= 2.
GEOMETRIES = [(32, 8, 2), (4, 3, 2), (8, 1, 2), (9, 2, 3), (9, 4, 3), (6, 6, 2), (10, 7, 2)]


@pytest.mark.parametrize("size, filter_size, stride", GEOMETRIES)
@pytest.mark.parametrize("persistent", [False, True])
def test_free_energies_and_gradient_equal_the_torch_path(size, filter_size, stride, persistent):
    """For the chain end the kernel returns, F(data), F(chain end) and the CD gradient agree with
    ConvRBM.free_energy and autograd in float64 to rounding."""
    model = make_rbm(filter_size, stride, scale=0.3, seed=size)
    generator = torch.Generator().manual_seed(size)
    data = (torch.randint(0, 2, (5, size, size), generator=generator) * 2 - 1).double()
    start = (torch.randint(0, 2, data.shape, generator=generator) * 2 - 1).double()
    result = fast_rbm.cd_update(model.weight, data, start if persistent else None, stride, 2, 7)
    chain_end = result["chain_end"]
    assert set(chain_end.unique().tolist()) <= {-1.0, 1.0}
    free_data, free_chain = model.free_energy(data), model.free_energy(chain_end)
    loss = free_data.mean() - free_chain.mean()
    loss.backward()
    tight = {"rtol": 1e-12, "atol": 1e-11}
    torch.testing.assert_close(result["free_data"], free_data.detach(), **tight)
    torch.testing.assert_close(result["free_chain"], free_chain.detach(), **tight)
    torch.testing.assert_close(result["grad"], model.weight.grad, **tight)
    torch.testing.assert_close(result["loss"], loss.detach(), **tight)


def test_surrogate_loss_hands_the_gradient_to_autograd():
    model = make_rbm(3, 2, scale=0.3)
    data = (
        torch.randint(0, 2, (4, 8, 8), generator=torch.Generator().manual_seed(0)) * 2 - 1
    ).double()
    torch.manual_seed(5)
    loss, chain_end = fast_rbm.contrastive_divergence(model.weight, data, None, 2, 3)
    (3.0 * loss).backward()  # the incoming gradient (e.g. loss scaling) is respected
    reference = model.weight.grad.clone()
    model.zero_grad()
    (3.0 * (model.free_energy(data).mean() - model.free_energy(chain_end).mean())).backward()
    torch.testing.assert_close(reference, model.weight.grad, rtol=1e-12, atol=1e-12)


def test_the_same_seed_gives_the_same_chains():
    model = make_rbm(4, 2, scale=0.5)
    data = torch.randint(0, 2, (6, 8, 8)).double() * 2 - 1
    first = fast_rbm.cd_update(model.weight, data, None, 2, 3, 99)["chain_end"]
    again = fast_rbm.cd_update(model.weight, data, None, 2, 3, 99)["chain_end"]
    other = fast_rbm.cd_update(model.weight, data, None, 2, 3, 100)["chain_end"]
    assert torch.equal(first, again) and not torch.equal(first, other)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_gibbs_step_follows_the_exact_conditionals(dtype):
    """Joint frequencies of the 4 block spins mu and a 2x2 patch of sigma' after one step from a
    fixed sigma (256 states) against P(mu | sigma) P(patch | mu), both from the dense W (Eq. 3)."""
    model = make_rbm(3, scale=0.5)
    generator = torch.Generator().manual_seed(1)
    sigma = (torch.randint(0, 2, (1, L, L), generator=generator) * 2 - 1).double()
    dense = dense_weights(model.weight.detach(), L, 2)
    hidden = all_states(4)
    p_mu = torch.softmax(sigma.flatten(1) @ dense @ hidden.T, dim=1)[0]  # (16,)
    patch = [0, 1, L, L + 1]  # sites (0,0), (0,1), (1,0), (1,1)
    up = torch.sigmoid(2.0 * hidden @ dense.T)[:, patch]  # (16 mu, 4 sites): P(sigma_i = +1 | mu)
    patch_states = all_states(4) > 0  # (16, 4) in the same bit order
    p_patch = torch.where(patch_states[None], up[:, None], 1 - up[:, None]).prod(-1)  # (16, 16)
    exact = (p_mu[:, None] * p_patch).flatten()  # code = 16 * mu_code + patch_code
    n_draws = 500_000
    result = fast_rbm.cd_update(
        model.weight.detach().to(dtype), sigma.expand(n_draws, L, L).to(dtype), None, 2, 1, 3
    )
    mu = result["block_spins"].flatten(1)
    mu_codes = ((mu > 0).long() << torch.arange(4)).sum(1)
    sites = result["chain_end"].flatten(1)[:, patch]
    patch_codes = ((sites > 0).long() << torch.arange(4)).sum(1)
    assert chi_square_pvalue(16 * mu_codes + patch_codes, exact) > 1e-3


@pytest.mark.parametrize("persistent", [False, True])
def test_lightning_runs_the_numba_backend_reproducibly(tmp_path, persistent):
    spins = torch.randint(0, 2, (40, 8, 8), generator=torch.Generator().manual_seed(0)) * 2.0 - 1

    def train() -> RBMModule:
        pl.seed_everything(3, verbose=False)
        module = RBMModule(filter_size=4, stride=2, persistent=persistent, backend="numba")
        initial.append(module.rbm.weight.detach().clone())
        fit(module, spins, epochs=1, tmp_path=tmp_path)
        return module

    initial: list[torch.Tensor] = []
    first, second = train(), train()
    assert first.uses_fused_kernel(spins)
    assert not torch.equal(first.rbm.weight.detach(), initial[0])  # Adam moved the filter
    torch.testing.assert_close(first.rbm.weight, second.rbm.weight, rtol=0, atol=0)
    if persistent:
        assert torch.equal(first.chains, second.chains)


def test_backend_setting_is_checked():
    with pytest.raises(ValueError, match="model.backend"):
        RBMModule(backend="jax")
    module = RBMModule(backend="auto")
    assert module.uses_fused_kernel(torch.ones(2, 8, 8))
    assert not module.uses_fused_kernel(torch.ones(2, 8))  # a chain: the torch path
    assert not RBMModule().uses_fused_kernel(torch.ones(2, 8, 8))
    with pytest.raises(ValueError, match="backend=numba"):
        RBMModule(backend="numba").uses_fused_kernel(torch.ones(2, 8))


def test_kernel_adam_is_torch_adam_to_rounding():
    """The kernel's Adam against torch.optim.Adam on the same gradients (spanning seven decades, a
    decaying learning rate): the moments bit for bit, the filter within a few roundings."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(64, generator=generator) * 0.01)
    optimizer = torch.optim.Adam([weight], lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    mine = weight.detach().clone().numpy()
    initial = mine.copy()
    exp_avg, exp_avg_sq = np.zeros(64, np.float32), np.zeros(64, np.float32)
    for step in range(1, 801):
        grad = torch.randn(64, generator=generator) * 10.0 ** (step % 8 - 6)
        lr = 1e-3 / step**0.5
        optimizer.param_groups[0]["lr"] = lr
        weight.grad = grad.clone()
        optimizer.step()
        fast_rbm._adam_step(
            mine, grad.numpy(), exp_avg, exp_avg_sq, lr, float(step), 0.9, 0.99, 1e-8
        )
    state = optimizer.state[weight]
    assert np.array_equal(exp_avg, state["exp_avg"].numpy())
    assert np.array_equal(exp_avg_sq, state["exp_avg_sq"].numpy())
    # 800 steps of size <= 1e-3 (random directions) moved the filter; each may round differently.
    assert np.abs(mine - initial).max() > 1e-3
    torch.testing.assert_close(torch.from_numpy(mine), weight.detach(), rtol=0, atol=800 * 2e-9)


@pytest.mark.parametrize("persistent", [False, True])
def test_many_updates_in_one_call_are_the_updates_one_by_one(persistent):
    """cd_adam_updates over a chunk of M minibatches equals M single updates (cd_update, then the
    same Adam step), bit for bit: each update's seed, learning rate and chain start are its own."""
    model = make_rbm(4, 2, scale=0.3, seed=1)
    generator = torch.Generator().manual_seed(2)
    chunk = (torch.randint(0, 2, (6, 5, 8, 8), generator=generator) * 2 - 1).float()
    seeds, lrs = [11, 12, 13, 14, 15, 16], [1e-2 / (1 + t) ** 0.5 for t in range(6)]
    start = (torch.randint(0, 2, (5, 8, 8), generator=generator) * 2 - 1).float()

    weight = model.weight.detach().float().clone()
    state = {
        "step": torch.tensor(3.0),
        "exp_avg": torch.full((4, 4), 0.01),
        "exp_avg_sq": torch.full((4, 4), 1e-4),
    }
    chains = start.clone() if persistent else None
    gaps = fast_rbm.cd_adam_updates(
        weight, chunk, chains, 2, 3, seeds, lrs, state, (0.9, 0.999), 1e-8
    )

    one = model.weight.detach().float().clone()
    exp_avg, exp_avg_sq = np.full(16, 0.01, np.float32), np.full(16, 1e-4, np.float32)
    chain = start.clone()
    for t in range(6):
        result = fast_rbm.cd_update(one, chunk[t], chain if persistent else None, 2, 3, seeds[t])
        chain = result["chain_end"]
        assert gaps[t] == result["loss_typed"]
        fast_rbm._adam_step(
            one.view(-1).numpy(), result["grad_typed"].reshape(-1).numpy(), exp_avg, exp_avg_sq,
            lrs[t], 4.0 + t, 0.9, 0.999, 1e-8,
        )  # fmt: skip
    assert torch.equal(weight, one) and state["step"].item() == 9.0
    assert np.array_equal(state["exp_avg"].view(-1).numpy(), exp_avg)
    if persistent:
        assert torch.equal(chains, chain)
        # the chains really continue: restarting at the data draws other chains
        restarted = fast_rbm.cd_update(
            model.weight.detach().float(), chunk[0], None, 2, 3, seeds[0]
        )
        continued = fast_rbm.cd_update(
            model.weight.detach().float(), chunk[0], start, 2, 3, seeds[0]
        )
        assert not torch.equal(restarted["chain_end"], continued["chain_end"])


def test_lightning_fuses_adam_only_where_it_is_the_same_update(tmp_path):
    """One process, plain Adam, a schedule that does not look at the training: one kernel call a
    chunk. Weight decay (not in the kernel's Adam) falls back to the loop of optimizer steps."""
    spins = torch.randint(0, 2, (40, 8, 8), generator=torch.Generator().manual_seed(0)) * 2.0 - 1
    module = RBMModule(filter_size=4, stride=2, backend="numba")
    fit(module, spins, epochs=1, tmp_path=tmp_path)
    optimizer = module.optimizers().optimizer
    chunk = spins[:20].view(2, 10, 8, 8)
    assert module.fuses_adam(chunk, optimizer, module.lr_schedulers())
    assert optimizer.state[module.rbm.weight]["step"].item() == module.updates == 4
    optimizer.param_groups[0]["weight_decay"] = 0.1
    assert not module.fuses_adam(chunk, optimizer, module.lr_schedulers())
    assert not RBMModule(filter_size=4, backend="torch").uses_fused_kernel(chunk[0])


@pytest.mark.parametrize("persistent", [False, True])
def test_replicas_in_one_call_are_each_replicas_updates(persistent):
    """Two filters: each update is, per replica, the one-filter update with its own filter,
    minibatch, seed (seeds[t R + r]) and chains, then one Adam step over both; the gap the sum."""
    generator = torch.Generator().manual_seed(3)
    weight = (torch.rand(2, 4, 4, generator=generator) - 0.5) * 0.6
    chunk = (torch.randint(0, 2, (4, 2, 5, 8, 8), generator=generator) * 2 - 1).float()
    start = (torch.randint(0, 2, (2, 5, 8, 8), generator=generator) * 2 - 1).float()
    seeds, lrs = list(range(100, 108)), [1e-2, 8e-3, 6e-3, 5e-3]
    state = {
        "step": torch.tensor(0.0),
        "exp_avg": torch.zeros(2, 4, 4),
        "exp_avg_sq": torch.zeros(2, 4, 4),
    }
    fused, chains = weight.clone(), start.clone() if persistent else None
    gaps = fast_rbm.cd_adam_updates(
        fused, chunk, chains, 2, 3, seeds, lrs, state, (0.9, 0.999), 1e-8
    )

    one, moments = weight.clone(), (np.zeros(32, np.float32), np.zeros(32, np.float32))
    chain = [start[0].clone(), start[1].clone()]
    for t in range(4):
        grads, gap = [], torch.tensor(0.0)
        for r in range(2):
            result = fast_rbm.cd_update(
                one[r], chunk[t, r], chain[r] if persistent else None, 2, 3, seeds[2 * t + r]
            )
            chain[r] = result["chain_end"]
            grads.append(result["grad_typed"])
            gap = result["loss_typed"] if r == 0 else gap + result["loss_typed"]
        assert gaps[t] == gap
        grad = torch.stack(grads).reshape(-1).numpy()
        fast_rbm._adam_step(one.view(-1).numpy(), grad, *moments, lrs[t], t + 1.0, 0.9, 0.999, 1e-8)
    assert torch.equal(fused, one) and not torch.equal(fused[0], fused[1])
    if persistent:
        assert torch.equal(chains, torch.stack(chain))
