"""A fused CPU kernel (numba) for CD-k updates of :class:`rbmrg.rg.rbm.ConvRBM`.

The reference CD-k update is plain PyTorch (``ConvRBM.gibbs`` then ``ConvRBM.free_energy`` and
autograd). At the paper's size (L = 32, 8 x 8 filter, minibatch 10) every tensor op of it is tiny and
its fixed cost dominates. Here the whole no-grad part runs in one compiled call, per configuration:

    sigma_0 -> mu_1 -> sigma_1 -> ... -> sigma_k        (k Gibbs steps, Eqs. (3)-(4))
    F(sigma)         = -sum_j log 2cosh(h_j)
    dF/dW_(u,v)      = -sum_(p,q) tanh(h_(p,q)) sigma_(b p + u, b q + v)   (indices mod L)

for the data sigma and the chain end sigma_k, and returns the surrogate loss
``mean F(data) - mean F(chain end)`` with its gradient, the CD-k estimate
``<dF/dW>_data - <dF/dW>_chain end``. :class:`SurrogateLoss` hands both to autograd, so
``loss.backward()``, any optimizer, schedules and DDP work unchanged. The chain of one
configuration (layout, random numbers, vectorisation) is in :mod:`rbmrg.training.cd_chain`; this
module runs it over a minibatch, with threads or without (numba's parallel loop even with one
thread hands the work to its pool, which costs milliseconds a call when the other core is busy).

Many updates: :func:`cd_adam_updates` runs M consecutive updates, each with its own Adam step (the
arithmetic of ``torch.optim.Adam``, see :func:`_adam_step`), in one call, so that no Python runs
between updates; :class:`rbmrg.training.module.RBMModule` uses it for a chunk of minibatches.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from rbmrg.fastmath import fma
from rbmrg.lattice.rng import set_threads
from rbmrg.training.cd_chain import cd_one, layout_tables

_TAG_CD = np.uint64(0x43442D6B)  # keeps these streams apart from the samplers' ones


@njit(cache=True)
def _minibatch_mean(out, mean):
    """Means over the minibatch in a fixed order: the same result for any number of threads."""
    n = out.shape[0]
    for c in range(out.shape[1]):
        total = 0.0
        for i in range(n):
            total += out[i, c]
        mean[c] = total / n


@njit(cache=True, nogil=True, parallel=True)
def _minibatch(
    data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out, mean, threaded
):  # fmt: skip
    """CD-k for every configuration of the minibatch (:func:`cd_one`), then the means.

    Not ``threaded`` (one thread), a plain loop: numba's parallel loop hands the work to its
    thread pool even then, which costs milliseconds a call when the other core is busy
    (measured: 8 ms instead of 0.5)."""
    if threaded:
        for i in prange(data.shape[0]):
            cd_one(i, data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out)
    else:
        for i in range(data.shape[0]):
            cd_one(i, data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out)
    _minibatch_mean(out, mean)


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A 62-bit seed from torch's random stream (so ``seed_everything`` reproduces the chains)."""
    return int(torch.randint(0, 2**62, (1,), generator=generator).item())


def cd_update(
    weight: torch.Tensor,
    data: torch.Tensor,
    start: torch.Tensor | None,
    stride: int,
    k: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """One fused CD-k pass (no autograd). ``start`` None means the chains start at the data.

    Returns ``chain_end`` (n, L, L) and ``block_spins`` (n, L/b, L/b, the last hidden draw) in the
    dtype of ``weight``, and in float64 ``free_data``, ``free_chain`` (n,) and ``grad`` (f, f) =
    mean dF/dW(data) - mean dF/dW(chain end).
    """
    if weight.device.type != "cpu":
        raise ValueError("the fused CD kernel runs on the CPU only; use backend='torch'")
    dtype = weight.dtype
    n, L = data.shape[0], data.shape[-1]
    if data.ndim != 3 or data.shape[1] != L:
        raise ValueError(f"the fused CD kernel needs square 2D lattices, got shape {data.shape}")
    same_start = start is None or start is data
    data = data.detach().to(dtype).contiguous().numpy()
    start = data if same_start else start.detach().to(dtype).contiguous().numpy()
    row_of, col_of = layout_tables(L, weight.shape[-1], stride)
    f = weight.shape[-1]
    # numpy buffers, wrapped without a copy: cheaper than torch allocations at this size.
    chain_end = np.empty_like(data)
    block_spins = np.empty((n, L // stride, L // stride), dtype=data.dtype)
    out = np.empty((n, f * f + 2))
    mean = np.empty(f * f + 2)
    set_threads()
    _minibatch(
        data,
        start,
        weight.detach().contiguous().numpy(),
        k,
        np.uint64(seed) ^ _TAG_CD,
        row_of,
        col_of,
        chain_end,
        block_spins,
        out,
        mean,
        numba.get_num_threads() > 1,
    )
    # In the weight's dtype (numpy casts are cheaper than torch ops at this size).
    typed = torch.from_numpy(mean.astype(data.dtype))
    mean = torch.from_numpy(mean)
    return {
        "grad_typed": typed[: f * f].view(f, f),
        "loss_typed": typed[f * f] - typed[f * f + 1],
        "chain_end": torch.from_numpy(chain_end),
        "block_spins": torch.from_numpy(block_spins),
        "free_data": torch.from_numpy(out[:, f * f]),
        "free_chain": torch.from_numpy(out[:, f * f + 1]),
        "grad": mean[: f * f].view(f, f),
        "loss": mean[f * f] - mean[f * f + 1],
    }


class SurrogateLoss(torch.autograd.Function):
    """Returns a precomputed loss value; its backward returns the precomputed gradient.

    ``SurrogateLoss.apply(weight, loss, grad)`` behaves, for autograd, like the surrogate loss
    mean F(data) - mean F(chain end) of :mod:`rbmrg.training.module` evaluated at ``weight``.
    """

    @staticmethod
    def forward(ctx, weight, loss, grad):  # noqa: D102
        ctx.save_for_backward(grad)
        return loss.clone()

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return grad_output * grad, None, None


def contrastive_divergence(
    weight: torch.Tensor,
    data: torch.Tensor,
    start: torch.Tensor | None,
    stride: int,
    k: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(surrogate loss with the CD-k gradient attached to ``weight``, chain end)."""
    result = cd_update(weight, data, start, stride, k, draw_seed(generator))
    loss = SurrogateLoss.apply(weight, result["loss_typed"], result["grad_typed"])
    return loss, result["chain_end"]


# ---------------------------------------------------------------------------------------------
# Many updates in one call: CD-k and Adam, M minibatches in a row


@njit(cache=True, error_model="numpy")
def _adam_step(weight, grad, exp_avg, exp_avg_sq, lr, step, beta1, beta2, eps):
    """One step of ``torch.optim.Adam`` (no weight decay, no amsgrad) on flat arrays, in place.

    The same operations in the same order and precision as torch's single-tensor Adam on the CPU:
    ``exp_avg.lerp_(grad, 1 - beta1)``, ``exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1 - beta2)``
    (both with the fused multiply-adds torch's vectorised kernels use), ``denom =
    sqrt(exp_avg_sq) / sqrt(1 - beta2^t) + eps``, ``param += (-lr / (1 - beta1^t)) * exp_avg /
    denom``, the scalars in float64 and then rounded to the weight's precision. On this project's
    CPU the moments come out bit-identical to torch's; the weight can differ by one rounding where
    torch's vectorised square root is not correctly rounded (numba's is).
    """
    one = weight.dtype.type(1)
    w = weight.dtype.type(1.0 - beta1)
    b2 = weight.dtype.type(beta2)
    c2 = weight.dtype.type(1.0 - beta2)
    root = weight.dtype.type((1.0 - beta2**step) ** 0.5)
    e = weight.dtype.type(eps)
    neg_step = weight.dtype.type(-(lr / (1.0 - beta1**step)))
    for j in range(weight.shape[0]):
        g = grad[j]
        m = exp_avg[j]
        m = fma(w, g - m, m) if w < 0.5 else g - (g - m) * (one - w)  # torch's lerp
        exp_avg[j] = m
        v = fma(c2 * g, g, exp_avg_sq[j] * b2)  # torch's mul_, then addcmul_
        exp_avg_sq[j] = v
        weight[j] = weight[j] + (neg_step * m) / (np.sqrt(v) / root + e)


@njit(cache=True)
def _replica_done(r, mean, grad, gaps, t, chains, chain_end):
    """Replica r of update t, once its minibatch means are in: its gradient, its share of the gap
    (replicas summed in order, in the weight's precision, as ``torch.stack(losses).sum()``), its
    persistent chains."""
    f2 = grad.shape[1]
    for c in range(f2):
        grad[r, c] = mean[c]
    gap = grad.dtype.type(mean[f2]) - grad.dtype.type(mean[f2 + 1])
    gaps[t] = gap if r == 0 else gaps[t] + gap
    if chains.shape[0] > 0:
        chains[r] = chain_end


@njit(cache=True, nogil=True)
def _chunk(
    chunk, chains, weight, exp_avg, exp_avg_sq, lrs, first_step, hyper, k, seeds,
    row_of, col_of, chain_end, block_spins, out, mean, grad, gaps, threaded,
):  # fmt: skip
    """The M updates of :func:`cd_adam_updates`: per update, each replica's minibatch, then one
    Adam step over all filters."""
    n_replicas, f2 = weight.shape
    f = int(np.sqrt(f2) + 0.5)
    for t in range(chunk.shape[0]):
        for r in range(n_replicas):
            data = chunk[t, r]
            start = chains[r] if chains.shape[0] > 0 else data
            square = weight[r].reshape((f, f))
            _minibatch(data, start, square, k, seeds[t, r], row_of, col_of, chain_end,
                       block_spins, out, mean, threaded)  # fmt: skip
            _replica_done(r, mean, grad, gaps, t, chains, chain_end)
        _adam_step(
            weight.reshape(-1), grad.reshape(-1), exp_avg, exp_avg_sq, lrs[t], first_step + t,
            hyper[0], hyper[1], hyper[2],
        )  # fmt: skip


def cd_adam_updates(
    weight: torch.Tensor,
    chunk: torch.Tensor,
    chains: torch.Tensor | None,
    stride: int,
    k: int,
    seeds: list[int],
    lrs: list[float],
    adam_state: dict[str, torch.Tensor],
    betas: tuple[float, float],
    eps: float,
) -> torch.Tensor:
    """M consecutive CD-k updates with Adam in one compiled call; returns the M free-energy gaps.

    Update t takes minibatch ``chunk[t]`` (chunk: (M, n, L, L)), draws its Gibbs samples from
    ``seeds[t]`` and steps Adam with learning rate ``lrs[t]``: what M rounds of
    :func:`contrastive_divergence`, ``loss.backward()`` and ``torch.optim.Adam.step`` compute, with
    the Adam arithmetic of :func:`_adam_step`. ``weight`` (the parameter) and ``adam_state``
    (torch's ``exp_avg``, ``exp_avg_sq`` and ``step`` of it) are updated in place, so the optimizer
    and its checkpoints see an ordinary Adam. ``chains`` (persistent CD) are continued in place;
    None restarts every chain at its minibatch.

    R replicas: ``weight`` (R, f, f), ``chunk`` (M, R, n, L, L), ``chains`` (R, n, L, L) and R seeds
    per update (``seeds[t R + r]`` for replica r); each replica's update is the one-filter update
    with its own filter, minibatch, seed and chains, Adam steps all R filters at once (it is
    elementwise), and the gap of update t is the sum over replicas.
    """
    replicated = weight.ndim == 3
    if (
        weight.device.type != "cpu"
        or chunk.ndim != 4 + replicated
        or chunk.shape[-1] != chunk.shape[-2]
    ):
        raise ValueError(
            f"the fused CD kernel runs on square 2D lattices on the CPU, got {tuple(chunk.shape)} "
            f"on {chunk.device}"
        )
    if not replicated:  # one filter: a replica axis of 1
        weight, chunk = weight.unsqueeze(0), chunk.unsqueeze(1)
        chains = None if chains is None else chains.unsqueeze(0)
    dtype = weight.dtype
    m, n_replicas, n, L = chunk.shape[0], chunk.shape[1], chunk.shape[2], chunk.shape[-1]
    f = weight.shape[-1]
    data = chunk.detach().to(dtype).contiguous().numpy()
    chain_array = (
        np.empty((0, n, L, L), dtype=data.dtype) if chains is None else chains.detach().numpy()
    )
    row_of, col_of = layout_tables(L, f, stride)
    first_step = float(adam_state["step"].item()) + 1.0
    gaps = np.empty(m, dtype=data.dtype)
    set_threads()
    _chunk(
        data,
        chain_array,
        weight.detach().view(n_replicas, f * f).numpy(),
        adam_state["exp_avg"].view(-1).numpy(),
        adam_state["exp_avg_sq"].view(-1).numpy(),
        np.asarray(lrs, dtype=np.float64),
        first_step,
        np.array([betas[0], betas[1], eps], dtype=np.float64),
        k,
        np.array([np.uint64(seed) ^ _TAG_CD for seed in seeds], dtype=np.uint64).reshape(m, -1),
        row_of,
        col_of,
        np.empty((n, L, L), dtype=data.dtype),
        np.empty((n, L // stride, L // stride), dtype=data.dtype),
        np.empty((n, f * f + 2)),
        np.empty(f * f + 2),
        np.empty((n_replicas, f * f), dtype=data.dtype),
        gaps,
        numba.get_num_threads() > 1,
    )
    adam_state["step"].fill_(first_step + m - 1)
    return torch.from_numpy(gaps)
