"""A fused CPU kernel (numba) for one CD-k update of :class:`rbmrg.rg.rbm.ConvRBM`.

The reference CD-k update is plain PyTorch (``ConvRBM.gibbs`` then ``ConvRBM.free_energy`` and
autograd). At the paper's size (L = 32, 8 x 8 filter, minibatch 10) every tensor op of it is tiny and
its fixed cost dominates. Here the whole no-grad part runs in one compiled call, per configuration:

    sigma_0 -> mu_1 -> sigma_1 -> ... -> sigma_k        (k Gibbs steps, Eqs. (3)-(4))
    F(sigma)         = -sum_j log 2cosh(h_j)
    dF/dW_(u,v)      = -sum_(p,q) tanh(h_(p,q)) sigma_(b p + u, b q + v)   (indices mod L)

for the data sigma and the chain end sigma_k, and returns the surrogate loss
``mean F(data) - mean F(chain end)`` with its gradient, the CD-k estimate
``<dF/dW>_data - <dF/dW>_chain end``. :class:`SurrogateLoss` hands both to autograd, so Lightning's
automatic optimisation (``loss.backward()``, Adam, schedules, DDP, checkpoints) works unchanged.

Layout: a configuration is kept *phase split and padded*: for row and column phases r, s < b,
``padded[r, s, a Q + m] = sigma[(b a + r) mod L, (b m + s) mod L]`` with Q = L/b + D - 1,
D = ceil(f / b), and L/b + D rows a (one spare). Window (p, q) entry (u, v) is then
``padded[u mod b, v mod b, (p + u // b) Q + q + v // b]``, so for one filter entry the entries of
all windows form a single contiguous run (the columns q >= L/b of the (L/b, Q) field are junk and
ignored): each inner loop is one long unit-stride loop without modulo, which LLVM vectorises. The
visible field is the adjoint: ``W[u, v] mu[p, q]`` is added into the same layout, then folded back
mod L.

Random numbers: one 62-bit seed per call is drawn from a torch generator (the default one unless
given), so ``seed_everything`` makes a run reproducible. Configuration i of the minibatch draws from
its own xoshiro256++ stream (:mod:`rbmrg.lattice.rng`), seeded by (seed, i) only, so results do not depend
on the number of threads. A unit is +1 with probability sigmoid(2 x) (x its field), decided by
``U < sigmoid(2 x)`` with U a float64 uniform of 53 random bits.

Precision follows the inputs (float32 or float64 fields and probabilities, as in the torch path);
free energies and the gradient are accumulated in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange

from rbmrg.lattice.rng import seed_streams, set_threads, xoshiro_next

_TAG_CD = np.uint64(0x43442D6B)  # keeps these streams apart from the samplers' ones
_TO_UNIT = 2.0**-53


@njit(cache=True, inline="always")
def _uniform(s0, s1, s2, s3):
    x, s0, s1, s2, s3 = xoshiro_next(s0, s1, s2, s3)
    return float(x >> np.uint64(11)) * _TO_UNIT, s0, s1, s2, s3


@njit(cache=True)
def _fill(spins, padded, row_of, col_of):
    """padded[r, s, a Q + m] = spins[(b a + r) mod L, (b m + s) mod L] (see the module doc)."""
    b, Q = col_of.shape
    for r in range(b):
        for s in range(b):
            plane = padded[r, s]
            for a in range(row_of.shape[1]):
                i = row_of[r, a]
                for m in range(Q):
                    plane[a * Q + m] = spins[i, col_of[s, m]]


@njit(cache=True)
def _hidden_field(padded, weight, Q, field):
    """field[p Q + q] = sum_(u,v) W[u, v] sigma_(b p + u, b q + v); columns q >= L/b are junk.

    For one filter entry (u, v) the window entries of all hidden units form one contiguous run of
    the padded plane of phases (u mod b, v mod b), shifted by (u // b) Q + v // b: one long loop.
    """
    b, f = padded.shape[0], weight.shape[0]
    n = field.shape[0]
    field[:] = 0
    for u in range(f):
        for v in range(f):
            w = weight[u, v]
            shift = (u // b) * Q + v // b
            source = padded[u % b, v % b, shift : shift + n]
            for j in range(n):
                field[j] += w * source[j]


@njit(cache=True)
def _visible_field(block_spins, weight, Q, scratch, field, row_of, col_of):
    """field[i, j] = sum_(windows over (i, j)) W[u, v] mu[p, q], the adjoint of _hidden_field.

    ``block_spins`` is in the (L/b, Q) layout with zeros in the junk columns; the products are added
    into the padded layout ``scratch`` and then folded back onto the L x L lattice.
    """
    b, f = scratch.shape[0], weight.shape[0]
    n = block_spins.shape[0]
    scratch[:] = 0
    for u in range(f):
        for v in range(f):
            w = weight[u, v]
            shift = (u // b) * Q + v // b
            target = scratch[u % b, v % b, shift : shift + n]
            for j in range(n):
                target[j] += w * block_spins[j]
    field[:] = 0
    for r in range(b):
        for s in range(b):
            plane = scratch[r, s]
            for a in range(row_of.shape[1]):
                i = row_of[r, a]
                for m in range(Q):
                    field[i, col_of[s, m]] += plane[a * Q + m]


@njit(cache=True)
def _draw_hidden(field, Q, M, out, s0, s1, s2, s3):
    """out = +1 with probability sigmoid(2 field), else -1, on the (M, Q) layout; junk columns 0."""
    for p in range(M):
        for q in range(Q):
            if q < M:
                x = field[p * Q + q]
                prob = 1.0 / (1.0 + np.exp(-(x + x)))  # in the field's precision, as in torch
                uniform, s0, s1, s2, s3 = _uniform(s0, s1, s2, s3)
                out[p * Q + q] = 1.0 if uniform < prob else -1.0
            else:
                out[p * Q + q] = 0.0
    return s0, s1, s2, s3


@njit(cache=True)
def _draw_visible(field, out, s0, s1, s2, s3):
    """out = +1 with probability sigmoid(2 field), else -1, elementwise (L x L)."""
    for i in range(field.shape[0]):
        for j in range(field.shape[1]):
            x = field[i, j]
            prob = 1.0 / (1.0 + np.exp(-(x + x)))
            uniform, s0, s1, s2, s3 = _uniform(s0, s1, s2, s3)
            out[i, j] = 1.0 if uniform < prob else -1.0
    return s0, s1, s2, s3


@njit(cache=True, fastmath={"reassoc"})
def _score(padded, field, weight, Q, M, sign, one, grad, tanh_field):
    """grad += sign dF/dW (summed in float64); returns F = -sum_j log 2cosh(h_j).

    The per-unit functions run in the field's precision (``one`` is 1 in that dtype), as the torch
    path does. ``reassoc`` lets the dot products be summed in vector lanes (a fixed order, so the
    result is reproducible)."""
    b, f = padded.shape[0], weight.shape[0]
    n = field.shape[0]
    free = 0.0
    for p in range(M):
        for q in range(Q):
            j = p * Q + q
            if q < M:
                x = field[j]
                a = abs(x)
                # One exponential serves both: log 2cosh x = |x| + log1p(e), tanh|x| = (1 - e) / (1 + e)
                # with e = exp(-2|x|); the absolute error of the latter is one rounding of 1 - e.
                e = np.exp(-(a + a))
                free -= float(a + np.log1p(e))
                t = (one - e) / (one + e)
                tanh_field[j] = float(t) if x >= 0 else -float(t)
            else:
                tanh_field[j] = 0.0
    for u in range(f):
        for v in range(f):
            shift = (u // b) * Q + v // b
            source = padded[u % b, v % b, shift : shift + n]
            total = 0.0
            for j in range(n):
                total += tanh_field[j] * source[j]
            grad[u, v] -= sign * total
    return free


@njit(cache=True, parallel=True)
def _cd_kernel(data, start, same_start, weight, stride, k, seed, chain_end, block_spins, out, mean):
    """CD-k for every configuration i of the minibatch, written to ``chain_end[i]``, ``block_spins[i]``
    (the last hidden draw) and ``out[i] = (dF/dW(data_i) - dF/dW(chain end_i) flattened, F(data_i),
    F(chain end_i))``, and ``mean`` = the mean of ``out`` over the minibatch; see :func:`cd_update`."""
    n, L = data.shape[0], data.shape[1]
    f, b = weight.shape[0], stride
    M = L // b
    D = (f + b - 1) // b
    Q = M + D - 1
    # One spare row: the shifted runs of the last window row reach D - 1 entries past the plane.
    rows = M + D
    row_of = np.empty((b, rows), dtype=np.int64)
    for r in range(b):
        for a in range(rows):
            row_of[r, a] = (b * a + r) % L
    col_of = np.empty((b, Q), dtype=np.int64)
    for s in range(b):
        for m in range(Q):
            col_of[s, m] = (b * m + s) % L
    streams = seed_streams(seed, n)
    one = np.ones(1, dtype=data.dtype)[0]
    f2 = f * f
    for i in prange(n):
        padded = np.empty((b, b, rows * Q), dtype=data.dtype)
        scratch = np.empty((b, b, rows * Q), dtype=data.dtype)
        field = np.empty(M * Q, dtype=data.dtype)
        mu = np.empty(M * Q, dtype=data.dtype)
        visible = np.empty((L, L), dtype=data.dtype)
        tanh_field = np.empty(M * Q, dtype=np.float64)
        grad = np.zeros((f, f), dtype=np.float64)
        s0, s1, s2, s3 = streams[i, 0], streams[i, 1], streams[i, 2], streams[i, 3]
        # Data term first; with CD (chains start at the data) its hidden field is the first step's.
        _fill(data[i], padded, row_of, col_of)
        _hidden_field(padded, weight, Q, field)
        free_data = _score(padded, field, weight, Q, M, 1.0, one, grad, tanh_field)
        spins = chain_end[i]
        spins[:, :] = start[i]
        if not same_start:
            _fill(spins, padded, row_of, col_of)
            _hidden_field(padded, weight, Q, field)
        for step in range(k):
            if step > 0:
                _hidden_field(padded, weight, Q, field)
            s0, s1, s2, s3 = _draw_hidden(field, Q, M, mu, s0, s1, s2, s3)
            _visible_field(mu, weight, Q, scratch, visible, row_of, col_of)
            s0, s1, s2, s3 = _draw_visible(visible, spins, s0, s1, s2, s3)
            _fill(spins, padded, row_of, col_of)
        _hidden_field(padded, weight, Q, field)
        free_chain = _score(padded, field, weight, Q, M, -1.0, one, grad, tanh_field)
        for p in range(M):
            for q in range(M):
                block_spins[i, p, q] = mu[p * Q + q]
        for u in range(f):
            for v in range(f):
                out[i, u * f + v] = grad[u, v]
        out[i, f2] = free_data
        out[i, f2 + 1] = free_chain
    # Minibatch means in a fixed order: the same result for any number of threads.
    for c in range(f2 + 2):
        total = 0.0
        for i in range(n):
            total += out[i, c]
        mean[c] = total / n


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
    f = weight.shape[-1]
    # numpy buffers, wrapped without a copy: cheaper than torch allocations at this size.
    chain_end = np.empty_like(data)
    block_spins = np.empty((n, L // stride, L // stride), dtype=data.dtype)
    out = np.empty((n, f * f + 2))
    mean = np.empty(f * f + 2)
    set_threads()
    _cd_kernel(
        data,
        start,
        same_start,
        weight.detach().contiguous().numpy(),
        stride,
        k,
        np.uint64(seed) ^ _TAG_CD,
        chain_end,
        block_spins,
        out,
        mean,
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
