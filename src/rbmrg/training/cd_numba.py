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

import numba
import numpy as np
import torch
from numba import njit, prange

from rbmrg.fastmath import exp_nonpositive, fma
from rbmrg.lattice.rng import LANES, fill_uniforms, seed_lanes, set_threads

_TAG_CD = np.uint64(0x43442D6B)  # keeps these streams apart from the samplers' ones


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
def _visible_field(block_spins, weight, Q, scratch, field):
    """field = sum_(windows over a site) W[u, v] mu[p, q], the adjoint of _hidden_field, in the
    phase-split layout ``field[r, s, a M + m]`` = site (b a + r, b m + s), M = L/b.

    ``block_spins`` is in the (L/b, Q) layout with zeros in the junk columns; the products are added
    into the padded layout ``scratch`` and then folded back: padded rows a >= M and columns
    m >= M are the periodic images of rows a - M and columns m - M.
    """
    b, f = scratch.shape[0], weight.shape[0]
    n = block_spins.shape[0]
    M = Q - (f + b - 1) // b + 1
    scratch[:] = 0
    for u in range(f):
        for v in range(f):
            w = weight[u, v]
            shift = (u // b) * Q + v // b
            target = scratch[u % b, v % b, shift : shift + n]
            for j in range(n):
                target[j] += w * block_spins[j]
    rows = scratch.shape[2] // Q
    for r in range(b):
        for s in range(b):
            plane, out = scratch[r, s], field[r, s]
            for a in range(M):
                for m in range(M):
                    out[a * M + m] = plane[a * Q + m]
            for a in range(rows):
                image = (a % M) * M
                if a >= M:
                    for m in range(M):
                        out[image + m] += plane[a * Q + m]
                for m in range(M, Q):
                    out[image + m - M] += plane[a * Q + m]


@njit(cache=True)
def _fill_split(split, padded, M, Q):
    """padded[r, s, a Q + m] = split[r, s, (a mod M) M + (m mod M)]: the padded layout of spins
    held phase split (see :func:`_visible_field`); row and column runs are plain copies."""
    b = padded.shape[0]
    rows = padded.shape[2] // Q
    for r in range(b):
        for s in range(b):
            source, plane = split[r, s], padded[r, s]
            for a in range(rows):
                row = (a % M) * M
                for m in range(M):
                    plane[a * Q + m] = source[row + m]
                for m in range(M, Q):
                    plane[a * Q + m] = source[row + m - M]


@njit(cache=True, inline="always", fastmath={"contract"})
def _up_probability(x):
    """sigmoid(2 x) = P(unit = +1 | field x), in float64 through the vectorisable exp."""
    x = float(x)
    e = exp_nonpositive(-2.0 * abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


@njit(cache=True, error_model="numpy")
def _draw(field, rows, width, stride, lanes, prob, uniforms, out):
    """out = +1 with probability sigmoid(2 field), else -1, on a flat layout of ``rows`` rows of
    ``stride`` entries of which the first ``width`` are units; the others (junk columns) get 0.

    Unit (p, q) draws uniform ``p width + q`` of :func:`fill_uniforms` from the stream group
    ``lanes``. Every loop here is free of calls and of dependences between iterations, so all
    of them run in SIMD lanes (``error_model="numpy"`` drops the division-by-zero branch that
    would otherwise keep the first one scalar)."""
    n = rows * stride
    for j in range(n):
        prob[j] = _up_probability(field[j])
    count = rows * width
    fill_uniforms(lanes, uniforms[: (count + LANES - 1) // LANES * LANES])
    for p in range(rows):
        row = p * stride
        for q in range(width):
            out[row + q] = 1.0 if uniforms[p * width + q] < prob[row + q] else -1.0
        for q in range(width, stride):
            out[row + q] = 0.0


@njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _score(padded, field, weight, Q, M, sign, grad, tanh_field, one_plus):
    """grad += sign dF/dW (summed in float64); returns F = -sum_j log 2cosh(h_j).

    One exponential serves both: with e = exp(-2|x|), log 2cosh x = |x| + log(1 + e) and
    tanh|x| = (1 - e) / (1 + e) (the absolute error of the latter is one rounding of 1 - e). The
    logarithms are summed as the logarithm of one product per row of hidden units (each factor is
    in (1, 2], so a row of M factors stays far from overflow), which leaves M calls to log instead
    of M^2. ``reassoc`` lets the sums run in vector lanes (a fixed order, so reproducible)."""
    b, f = padded.shape[0], weight.shape[0]
    n = field.shape[0]
    for j in range(n):
        x = float(field[j])
        a = abs(x)
        e = exp_nonpositive(-(a + a))
        t = (1.0 - e) / (1.0 + e)
        tanh_field[j] = t if x >= 0 else -t
        one_plus[j] = 1.0 + e
    free = 0.0
    for p in range(M):
        row = p * Q
        for q in range(M, Q):  # the junk columns carry no hidden unit
            tanh_field[row + q] = 0.0
        total, product = 0.0, 1.0
        for q in range(M):
            total += abs(float(field[row + q]))
            product *= one_plus[row + q]
        free -= total + np.log(product)
    for u in range(f):
        for v in range(f):
            shift = (u // b) * Q + v // b
            source = padded[u % b, v % b, shift : shift + n]
            total = 0.0
            for j in range(n):
                total += tanh_field[j] * source[j]
            grad[u, v] -= sign * total
    return free


@njit(cache=True)
def _layout_tables(L, f, b):
    """row_of[r, a] = (b a + r) mod L and col_of[s, m] = (b m + s) mod L (see the module doc)."""
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
    return row_of, col_of


@njit(cache=True)
def _cd_one(i, data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out):
    """CD-k for configuration i: the chain from ``start[i]`` to ``chain_end[i]``, the last hidden
    draw to ``block_spins[i]``, and ``out[i] = (dF/dW(data_i) - dF/dW(chain end_i) flattened,
    F(data_i), F(chain end_i))``. ``start`` is ``data`` itself for CD (chains start at the data)."""
    L = data.shape[1]
    f, b = weight.shape[0], row_of.shape[0]
    M = L // b
    Q = col_of.shape[1]
    rows = row_of.shape[1]
    padded = np.empty((b, b, rows * Q), dtype=data.dtype)
    scratch = np.empty((b, b, rows * Q), dtype=data.dtype)
    field = np.empty(M * Q, dtype=data.dtype)
    mu = np.empty(M * Q, dtype=data.dtype)
    visible = np.empty((b, b, M * M), dtype=data.dtype)  # phase split, as the chain's spins
    split = np.empty((b, b, M * M), dtype=data.dtype)
    tanh_field = np.empty(M * Q, dtype=np.float64)
    one_plus = np.empty(M * Q, dtype=np.float64)
    prob = np.empty(L * L, dtype=np.float64)
    uniforms = np.empty((L * L + LANES - 1) // LANES * LANES, dtype=np.float64)
    grad = np.zeros((f, f), dtype=np.float64)
    lanes = seed_lanes(seed, i)
    # Data term first; with CD (chains start at the data) its hidden field is the first step's.
    _fill(data[i], padded, row_of, col_of)
    _hidden_field(padded, weight, Q, field)
    free_data = _score(padded, field, weight, Q, M, 1.0, grad, tanh_field, one_plus)
    if start is not data:
        _fill(start[i], padded, row_of, col_of)
        _hidden_field(padded, weight, Q, field)
    for step in range(k):
        if step > 0:
            _hidden_field(padded, weight, Q, field)
        _draw(field, M, M, Q, lanes, prob, uniforms, mu)
        _visible_field(mu, weight, Q, scratch, visible)
        _draw(visible.reshape(L * L), 1, L * L, L * L, lanes, prob, uniforms, split.reshape(L * L))
        _fill_split(split, padded, M, Q)
    _hidden_field(padded, weight, Q, field)
    free_chain = _score(padded, field, weight, Q, M, -1.0, grad, tanh_field, one_plus)
    spins = chain_end[i]
    if k == 0:
        spins[:, :] = start[i]
    else:
        for r in range(b):
            for s in range(b):
                for a in range(M):
                    for m in range(M):
                        spins[b * a + r, b * m + s] = split[r, s, a * M + m]
    for p in range(M):
        for q in range(M):
            block_spins[i, p, q] = mu[p * Q + q]
    for u in range(f):
        for v in range(f):
            out[i, u * f + v] = grad[u, v]
    out[i, f * f] = free_data
    out[i, f * f + 1] = free_chain


@njit(cache=True)
def _minibatch_mean(out, mean):
    """Means over the minibatch in a fixed order: the same result for any number of threads."""
    n = out.shape[0]
    for c in range(out.shape[1]):
        total = 0.0
        for i in range(n):
            total += out[i, c]
        mean[c] = total / n


# The loop over the minibatch, twice: numba's parallel loop even with one thread hands the work
# to its pool, which costs milliseconds a call when the other core is busy (measured: 8 ms instead
# of 0.5), so one thread runs a plain loop instead.
@njit(cache=True, parallel=True)
def _cd_parallel(data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out, mean):
    for i in prange(data.shape[0]):
        _cd_one(i, data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out)
    _minibatch_mean(out, mean)


@njit(cache=True)
def _cd_serial(data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out, mean):
    for i in range(data.shape[0]):
        _cd_one(i, data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out)
    _minibatch_mean(out, mean)


def _minibatch_loop():
    """The kernel for the current thread count (see :func:`rbmrg.lattice.rng.set_threads`)."""
    set_threads()
    return _cd_parallel if numba.get_num_threads() > 1 else _cd_serial


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
    row_of, col_of = _layout_tables(L, weight.shape[-1], stride)
    f = weight.shape[-1]
    # numpy buffers, wrapped without a copy: cheaper than torch allocations at this size.
    chain_end = np.empty_like(data)
    block_spins = np.empty((n, L // stride, L // stride), dtype=data.dtype)
    out = np.empty((n, f * f + 2))
    mean = np.empty(f * f + 2)
    _minibatch_loop()(
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
def _after_update(
    t, mean, weight, exp_avg, exp_avg_sq, lrs, first_step, hyper, gaps, chains, chain_end
):
    """Update t of a chunk, once the minibatch means are in: the gap, Adam, the persistent chains."""
    f2 = weight.shape[0]
    grad = np.empty(f2, dtype=weight.dtype)
    for c in range(f2):
        grad[c] = mean[c]
    gaps[t] = weight.dtype.type(mean[f2]) - weight.dtype.type(mean[f2 + 1])
    _adam_step(
        weight, grad, exp_avg, exp_avg_sq, lrs[t], first_step + t, hyper[0], hyper[1], hyper[2]
    )
    if chains.shape[0] > 0:
        chains[:] = chain_end


@njit(cache=True, parallel=True)
def _chunk_parallel(
    chunk, chains, weight, exp_avg, exp_avg_sq, lrs, first_step, hyper, k, seeds,
    row_of, col_of, chain_end, block_spins, out, mean, gaps,
):  # fmt: skip
    f = int(np.sqrt(weight.shape[0]) + 0.5)
    square = weight.reshape((f, f))
    for t in range(chunk.shape[0]):
        data = chunk[t]
        start = chains if chains.shape[0] > 0 else data
        for i in prange(data.shape[0]):
            _cd_one(
                i, data, start, square, k, seeds[t], row_of, col_of, chain_end, block_spins, out
            )
        _minibatch_mean(out, mean)
        _after_update(
            t, mean, weight, exp_avg, exp_avg_sq, lrs, first_step, hyper, gaps, chains, chain_end
        )


@njit(cache=True)
def _chunk_serial(
    chunk, chains, weight, exp_avg, exp_avg_sq, lrs, first_step, hyper, k, seeds,
    row_of, col_of, chain_end, block_spins, out, mean, gaps,
):  # fmt: skip
    f = int(np.sqrt(weight.shape[0]) + 0.5)
    square = weight.reshape((f, f))
    for t in range(chunk.shape[0]):
        data = chunk[t]
        start = chains if chains.shape[0] > 0 else data
        for i in range(data.shape[0]):
            _cd_one(
                i, data, start, square, k, seeds[t], row_of, col_of, chain_end, block_spins, out
            )
        _minibatch_mean(out, mean)
        _after_update(
            t, mean, weight, exp_avg, exp_avg_sq, lrs, first_step, hyper, gaps, chains, chain_end
        )


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
    """
    if weight.device.type != "cpu" or chunk.ndim != 4 or chunk.shape[2] != chunk.shape[3]:
        raise ValueError(
            f"the fused CD kernel runs on square 2D lattices on the CPU, got {tuple(chunk.shape)} "
            f"on {chunk.device}"
        )
    dtype = weight.dtype
    m, n, L = chunk.shape[0], chunk.shape[1], chunk.shape[-1]
    f = weight.shape[-1]
    data = chunk.detach().to(dtype).contiguous().numpy()
    persistent = chains is not None
    chain_array = chains.detach().numpy() if persistent else np.empty((0, L, L), dtype=data.dtype)
    row_of, col_of = _layout_tables(L, f, stride)
    first_step = float(adam_state["step"].item()) + 1.0
    gaps = np.empty(m, dtype=data.dtype)
    set_threads()
    kernel = _chunk_parallel if numba.get_num_threads() > 1 else _chunk_serial
    kernel(
        data,
        chain_array,
        weight.detach().view(-1).numpy(),
        adam_state["exp_avg"].view(-1).numpy(),
        adam_state["exp_avg_sq"].view(-1).numpy(),
        np.asarray(lrs, dtype=np.float64),
        first_step,
        np.array([betas[0], betas[1], eps], dtype=np.float64),
        k,
        np.array([np.uint64(seed) ^ _TAG_CD for seed in seeds], dtype=np.uint64),
        row_of,
        col_of,
        np.empty((n, L, L), dtype=data.dtype),
        np.empty((n, L // stride, L // stride), dtype=data.dtype),
        np.empty((n, f * f + 2)),
        np.empty(f * f + 2),
        gaps,
    )
    adam_state["step"].fill_(first_step + m - 1)
    return torch.from_numpy(gaps)
