"""Exact checks of the convolutional RBM (issue #3) on lattices small enough to enumerate.

The reference is always the *dense* weight matrix W_ij of Eq. (3), built here site by site from the
f x f filter, never the convolution code under test. A 4 x 4 lattice has 2^16 = 65,536 visible
states and, with stride 2, 2^4 = 16 hidden states, so every sum of Eqs. (3), (4) and (8) is done
exactly in float64.
"""

from __future__ import annotations

import itertools
import math

import pytest
import scipy.stats
import torch

from rbmrg.lattice.model import K_C_2D, bond_sum
from rbmrg.rg.rbm import ConvRBM, hidden_field, validate_geometry, visible_field
from rbmrg.rg.transforms import rbm as rbm_transform

L = 4


def all_states(n_sites: int) -> torch.Tensor:
    """Every +1/-1 configuration of ``n_sites`` spins, shape (2^n_sites, n_sites), float64."""
    bits = (torch.arange(2**n_sites)[:, None] >> torch.arange(n_sites)) & 1
    return (2 * bits - 1).to(torch.float64)


def dense_weights(weight: torch.Tensor, L: int, stride: int) -> torch.Tensor:
    """W_ij of Eq. (3), shape (L*L, (L/b)^2): hidden unit (p, q) sees site (b p + u, b q + v) mod L."""
    f, m = weight.shape[0], L // stride
    dense = torch.zeros(L * L, m * m, dtype=torch.float64)
    for p, q, u, v in itertools.product(range(m), range(m), range(f), range(f)):
        site = ((stride * p + u) % L) * L + (stride * q + v) % L
        dense[site, p * m + q] += weight[u, v]
    return dense


def make_rbm(filter_size: int, stride: int = 2, scale: float = 0.4, seed: int = 0) -> ConvRBM:
    torch.manual_seed(seed)
    model = ConvRBM(filter_size, stride, init_scale=scale).double()
    return model


def ising_distribution(coupling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All 4x4 configurations and their exact Boltzmann probabilities exp(K S_nn) / Z (Eq. 9)."""
    states = all_states(L * L).view(-1, L, L)
    log_weight = coupling * bond_sum(states, 2)
    return states, torch.softmax(log_weight, 0)


# ------------------------------------------------------------------------------------------------
# Free energy and conditionals against the dense W


@pytest.mark.parametrize("filter_size", [1, 2, 3, 4])
def test_free_energy_is_the_sum_over_all_hidden_states(filter_size):
    """F(sigma) = -log sum_mu exp(sigma^T W mu) over all 16 hidden states (Eq. 4), all 65,536 sigma."""
    model = make_rbm(filter_size)
    states = all_states(L * L)
    dense = dense_weights(model.weight.detach(), L, 2)
    hidden = all_states(4)
    brute = -torch.logsumexp(states @ dense @ hidden.T, dim=1)
    with torch.no_grad():
        conv = model.free_energy(states.view(-1, L, L))
    torch.testing.assert_close(conv, brute, rtol=1e-12, atol=1e-12)


def test_hidden_field_is_the_dense_product():
    model = make_rbm(3, scale=1.0)
    spins = torch.randn(7, L, L, dtype=torch.float64)
    dense = dense_weights(model.weight.detach(), L, 2)
    with torch.no_grad():
        conv = model.hidden_field(spins).flatten(1)
    torch.testing.assert_close(conv, spins.flatten(1) @ dense, rtol=1e-12, atol=1e-12)


def chi_square_pvalue(codes: torch.Tensor, probabilities: torch.Tensor) -> float:
    """Chi-square goodness of fit of the integer ``codes`` against exact ``probabilities``."""
    observed = torch.bincount(codes, minlength=probabilities.numel()).double()
    expected = probabilities * codes.numel()
    assert expected.min() > 5, "too few draws for the chi-square approximation"
    return scipy.stats.chisquare(observed.numpy(), expected.numpy()).pvalue


def test_sampled_block_spins_follow_p_mu_given_sigma():
    """Joint frequencies of the 4 hidden spins (16 states) against exact P(mu|sigma), Eq. (3)."""
    model = make_rbm(3, scale=0.5)
    generator = torch.Generator().manual_seed(1)
    sigma = (torch.randint(0, 2, (1, L, L), generator=generator) * 2 - 1).double()
    dense = dense_weights(model.weight.detach(), L, 2)
    hidden = all_states(4)
    exact = torch.softmax(sigma.flatten(1) @ dense @ hidden.T, dim=1)[0]
    n_draws = 40_000
    with torch.no_grad():
        mu = model.sample_hidden(sigma.expand(n_draws, L, L), generator).flatten(1)
    codes = ((mu > 0).long() << torch.arange(4)).sum(1)  # same bit order as all_states
    assert chi_square_pvalue(codes, exact) > 1e-3


def test_visible_conditional_matches_enumeration():
    """P(sigma|mu) by enumerating all 65,536 sigma: single-site marginals and a 2x2 patch.

    The patch test (16 joint states sampled by ``sample_visible``) also checks that the visible
    spins are conditionally independent, which the sigmoid formula takes for granted.
    """
    model = make_rbm(3, scale=0.5)
    generator = torch.Generator().manual_seed(2)
    mu = torch.tensor([[1.0, -1.0], [-1.0, -1.0]], dtype=torch.float64)
    dense = dense_weights(model.weight.detach(), L, 2)
    states = all_states(L * L)
    exact = torch.softmax(states @ (dense @ mu.flatten()), 0)  # P(sigma | mu), 65,536 entries
    marginal_up = exact @ (states > 0).double()
    with torch.no_grad():
        conv_up = model.visible_probability(mu[None], L).flatten()
    torch.testing.assert_close(conv_up, marginal_up, rtol=1e-10, atol=1e-12)

    patch = [0, 1, L, L + 1]  # sites (0,0), (0,1), (1,0), (1,1)
    patch_codes = ((states[:, patch] > 0).long() << torch.arange(4)).sum(1)
    patch_exact = torch.zeros(16, dtype=torch.float64).index_add_(0, patch_codes, exact)
    n_draws = 40_000
    with torch.no_grad():
        sigma = model.sample_visible(mu.expand(n_draws, 2, 2), L, generator).flatten(1)
    codes = ((sigma[:, patch] > 0).long() << torch.arange(4)).sum(1)
    assert chi_square_pvalue(codes, patch_exact) > 1e-3


# ------------------------------------------------------------------------------------------------
# The periodic fold


@pytest.mark.parametrize(
    "size, filter_size, stride",
    [
        (8, 3, 2),  # f > b, f does not divide L
        (12, 5, 3),  # f > b, f does not divide L
        (10, 7, 2),  # overhang f - b = 5 > L / 2
        (6, 6, 2),  # filter as large as the lattice
        (8, 1, 2),  # f < b: sites without any hidden unit
        (9, 2, 3),  # f < b, odd lattice
        (5, 3, 1),  # stride 1
    ],
)
def test_visible_field_is_the_adjoint_of_hidden_field(size, filter_size, stride):
    """<hidden_field(sigma), mu> == <sigma, visible_field(mu)> for random real tensors (float64)."""
    generator = torch.Generator().manual_seed(size * 100 + filter_size * 10 + stride)
    weight = torch.randn(filter_size, filter_size, generator=generator, dtype=torch.float64)
    sigma = torch.randn(3, size, size, generator=generator, dtype=torch.float64)
    mu = torch.randn(3, size // stride, size // stride, generator=generator, dtype=torch.float64)
    left = (hidden_field(sigma, weight, stride) * mu).sum((1, 2))
    right = (sigma * visible_field(mu, weight, stride, size)).sum((1, 2))
    torch.testing.assert_close(left, right, rtol=1e-12, atol=1e-12)
    # And both agree with the dense matrix, so the pair is not merely consistently wrong.
    dense = dense_weights(weight, size, stride)
    torch.testing.assert_close(
        visible_field(mu, weight, stride, size).flatten(1), mu.flatten(1) @ dense.T
    )


# ------------------------------------------------------------------------------------------------
# Geometry errors


@pytest.mark.parametrize(
    "size, filter_size, stride, setting",
    [
        (4, 8, 2, "filter_size"),
        (9, 3, 2, "stride"),
        (10, 3, 4, "stride"),
        (8, 0, 2, "filter_size"),
        (8, 2, 1, "model.stride=1"),  # b = 1: no scale factor, y = ln(lambda) / ln(b) undefined
    ],
)
def test_geometry_errors_name_the_setting(size, filter_size, stride, setting):
    with pytest.raises(ValueError, match=setting):
        validate_geometry(size, filter_size, stride)


def test_rbm_transform_rejects_a_lattice_smaller_than_the_filter():
    transform = rbm_transform(ConvRBM(8, 2))
    with pytest.raises(ValueError, match="filter_size=8"):
        transform(torch.ones(2, 4, 4), None)
    with pytest.raises(ValueError, match="stride"):
        ConvRBM(3, 0)


# ------------------------------------------------------------------------------------------------
# Gradients and training against the exact KL divergence of Eq. (8)


def exact_kl_and_gradient(model: ConvRBM, states, target) -> tuple[float, torch.Tensor]:
    """D(p || Y / sum Y) by enumeration (Eq. 8) and its gradient with respect to the filter.

    log q(sigma) = -F(sigma) - log sum_sigma' exp(-F(sigma')), so
    dD/dW = E_p[dF/dW] - E_q[dF/dW].
    """
    model.zero_grad()
    free = model.free_energy(states)
    log_q = -free - torch.logsumexp(-free, 0)
    kl = (target * (torch.log(target) - log_q)).sum()
    kl.backward()
    return float(kl.detach()), model.weight.grad.detach().clone()


def cd_gradient_groups(model, data, k, n_groups, generator) -> torch.Tensor:
    """CD-k estimate of dD/dW = <dF/dW>_data - <dF/dW>_chain end, one estimate per group of chains."""
    estimates = []
    for part in data.chunk(n_groups):
        with torch.no_grad():
            end = model.gibbs(part, k, generator)
        model.zero_grad()
        (model.free_energy(part).mean() - model.free_energy(end).mean()).backward()
        estimates.append(model.weight.grad.detach().clone())
    return torch.stack(estimates)


def test_long_chain_cd_gradient_equals_the_exact_gradient():
    """With k large, the chain end is a sample of q(sigma) ~ Y(sigma) and CD-k is unbiased.

    Data are drawn exactly from the enumerated 4x4 Ising distribution at K_c. Each of the 40 groups
    of 1000 chains gives an independent estimate; the group means have a standard error from their
    spread, and every filter entry must agree with the exact gradient within 4 of them.
    """
    model = make_rbm(3, scale=0.3)
    states, target = ising_distribution(K_C_2D)
    _, exact = exact_kl_and_gradient(model, states, target)
    generator = torch.Generator().manual_seed(3)
    n_groups, n_chains = 40, 40_000
    data = states[torch.multinomial(target, n_chains, replacement=True, generator=generator)]
    groups = cd_gradient_groups(model, data, k=30, n_groups=n_groups, generator=generator)
    mean = groups.mean(0)
    stderr = groups.std(0) / math.sqrt(n_groups)
    assert (stderr < 0.2 * exact.abs().max()).all(), "too noisy to test anything"
    assert ((mean - exact).abs() < 4 * stderr).all(), (mean, exact, stderr)
    # The test resolves the gradient: a zero or sign-flipped estimate would be many errors away.
    assert (exact.abs() > 4 * stderr).any()
    assert ((mean + exact).abs() > 4 * stderr).any()


def test_short_cd_training_lowers_the_exact_kl():
    """A plain Adam + CD-3 loop on exact Ising samples lowers D(p_Ising || Y / sum Y) of Eq. (8)."""
    model = make_rbm(2, scale=0.01)
    states, target = ising_distribution(K_C_2D)
    kl_start, _ = exact_kl_and_gradient(model, states, target)
    generator = torch.Generator().manual_seed(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        batch = states[torch.multinomial(target, 200, replacement=True, generator=generator)]
        with torch.no_grad():
            end = model.gibbs(batch, 3, generator)
        optimizer.zero_grad()
        (model.free_energy(batch).mean() - model.free_energy(end).mean()).backward()
        optimizer.step()
    kl_end, _ = exact_kl_and_gradient(model, states, target)
    assert kl_end < 0.7 * kl_start, (kl_start, kl_end)


# ------------------------------------------------------------------------------------------------
# The simple cubic lattice (dim = 3)


def dense_weights_3d(weight: torch.Tensor, L: int, stride: int) -> torch.Tensor:
    """W_ij of Eq. (3) on the L^3 lattice, shape (L^3, (L/b)^3), built site by site from the filter."""
    f, m = weight.shape[0], L // stride
    dense = torch.zeros(L**3, m**3, dtype=torch.float64)
    for p, q, r, u, v, w in itertools.product(*[range(m)] * 3, *[range(f)] * 3):
        i, j, k = ((stride * c + o) % L for c, o in zip((p, q, r), (u, v, w), strict=True))
        dense[(i * L + j) * L + k, (p * m + q) * m + r] += weight[u, v, w]
    return dense


@pytest.mark.parametrize(
    "size, filter_size, stride", [(4, 1, 2), (4, 2, 2), (4, 3, 2), (4, 4, 2), (6, 5, 3), (6, 2, 3)]
)
def test_3d_fields_are_the_dense_products_and_adjoint(size, filter_size, stride):
    """h = W^T sigma and g = W mu against the dense W of the cubic lattice; <h, mu> = <sigma, g>."""
    generator = torch.Generator().manual_seed(size * 100 + filter_size * 10 + stride)
    weight = torch.randn((filter_size,) * 3, generator=generator, dtype=torch.float64)
    m = size // stride
    sigma = torch.randn(3, size, size, size, generator=generator, dtype=torch.float64)
    mu = torch.randn(3, m, m, m, generator=generator, dtype=torch.float64)
    dense = dense_weights_3d(weight, size, stride)
    hidden = hidden_field(sigma, weight, stride)
    visible = visible_field(mu, weight, stride, size)
    assert hidden.shape == (3, m, m, m) and visible.shape == (3, size, size, size)
    torch.testing.assert_close(hidden.flatten(1), sigma.flatten(1) @ dense)
    torch.testing.assert_close(visible.flatten(1), mu.flatten(1) @ dense.T)
    left = (hidden * mu).sum((1, 2, 3))
    right = (sigma * visible).sum((1, 2, 3))
    torch.testing.assert_close(left, right, rtol=1e-12, atol=1e-12)


def test_3d_free_energy_is_the_sum_over_all_hidden_states():
    """F(sigma) = -log sum_mu exp(sigma^T W mu) over all 2^8 block spins of the 4^3 lattice (Eq. 4)."""
    torch.manual_seed(3)
    model = ConvRBM(3, 2, init_scale=0.5, dim=3).double()
    sigma = torch.randint(0, 2, (20, 4, 4, 4), dtype=torch.float64) * 2 - 1
    dense = dense_weights_3d(model.weight.detach(), 4, 2)
    mus = all_states(8)  # (256, 8)
    exact = -torch.logsumexp((sigma.flatten(1) @ dense) @ mus.T, dim=1)
    torch.testing.assert_close(model.free_energy(sigma).detach(), exact)


def test_3d_block_spins_follow_p_mu_given_sigma():
    """Chi-square of the drawn mu of one block against sigmoid(2 h) for a fixed sigma."""
    torch.manual_seed(5)
    model = ConvRBM(2, 2, init_scale=0.6, dim=3).double()
    sigma = (torch.randint(0, 2, (1, 4, 4, 4), dtype=torch.float64) * 2 - 1).expand(
        20000, -1, -1, -1
    )
    generator = torch.Generator().manual_seed(7)
    draws = model.sample_hidden(sigma, generator)
    p_up = model.hidden_probability(sigma[:1]).detach()[0]
    ups = (draws == 1).sum(0).to(torch.float64)
    expected = p_up * draws.shape[0]
    chi2 = (((ups - expected) ** 2) / (expected * (1 - p_up))).sum().item()
    # 8 independent binomials: chi2 with 8 degrees of freedom; p > 1e-4 for a fixed seed.
    assert scipy.stats.chi2.sf(chi2, 8) > 1e-4
