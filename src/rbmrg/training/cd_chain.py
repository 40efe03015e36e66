"""One configuration's CD-k chain, compiled (numba): the building blocks of the fused kernel.

:func:`cd_one` takes configuration i of a minibatch through k Gibbs steps sigma -> mu -> sigma and
scores the data and the chain end (free energies and dF/dW); :mod:`rbmrg.training.cd_numba` runs it
over minibatches.

Layout: a configuration is kept *phase split and padded*: for row and column phases r, s < b,
``padded[r, s, a Q + m] = sigma[(b a + r) mod L, (b m + s) mod L]`` with Q = L/b + D - 1,
D = ceil(f / b), and L/b + D rows a (one spare). Window (p, q) entry (u, v) is then
``padded[u mod b, v mod b, (p + u // b) Q + q + v // b]``, so for one filter entry the entries of
all windows form a single contiguous run (the columns q >= L/b of the (L/b, Q) field are junk and
ignored): each inner loop is one long unit-stride loop without modulo, which LLVM vectorises. The
visible field, the adjoint, is computed per phase (r, s) of the sites from the block spins padded
the same way on the other side (see :func:`_visible_field`), again one contiguous run per filter
entry; the chain's visible spins live phase split, ``split[r, s, a L/b + m]``, between steps, and
padding them again is a run of row copies.

Random numbers: one 62-bit seed per update is drawn from a torch generator (the default one unless
given), so ``seed_everything`` makes a run reproducible. Configuration i of the minibatch draws from
its own group of 64 xoshiro256++ streams (:func:`rbmrg.lattice.rng.fill_uniforms`; stream
64 i + l of the seed), advanced side by side so that the loop runs in SIMD lanes; results depend
on (seed, i) only, not on the number of threads. A unit is +1 with probability sigmoid(2 x) (x its
field), decided by ``U < sigmoid(2 x)`` with U a float64 uniform of 53 random bits.

Vectorisation: numba's LLVM has no vector math library, so ``np.exp`` keeps a loop scalar; the
probabilities, tanh and log 2cosh use :func:`rbmrg.fastmath.exp_nonpositive` instead (within 1 ulp
of libm), and the loops are compiled with ``error_model="numpy"``, which drops the division-by-zero
branch that also keeps a loop scalar. The per-unit functions run in float64 (more precise than the
torch path's float32); free energies and the gradient are accumulated in float64.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from rbmrg.fastmath import exp_nonpositive, exp_nonpositive_float32
from rbmrg.lattice.rng import LANES, fill_uniforms, seed_lanes


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
def _visible_field(block_spins, weight, Q, block_padded, field):
    """field = sum_(windows over a site) W[u, v] mu[p, q], the adjoint of _hidden_field, for each
    phase (r, s) of the sites (b a + r, b m + s): ``field[r, s, a Q + m]``, columns m >= L/b junk.

    Site (b a + r, b m + s) is entry (u, v) = (r + b du, s + b dv) of window (a - du, m - dv), so
    phase (r, s) takes the filter entries u = r, v = s (mod b), and each of them adds one shifted
    contiguous run of the block spins, padded periodically by D - 1 rows and columns in front
    (``block_padded``, (L/b + D) x Q). ``block_spins`` is in the (L/b, Q) layout of _hidden_field.
    """
    b, f = field.shape[0], weight.shape[0]
    D = (f + b - 1) // b
    M = Q - D + 1
    for a in range(block_padded.shape[0] // Q):
        row = ((a - D + 1) % M) * Q
        for m in range(Q):
            block_padded[a * Q + m] = block_spins[row + (m - D + 1) % M]
    n = M * Q
    field[:] = 0
    for u in range(f):
        for v in range(f):
            w = weight[u, v]
            shift = (D - 1 - u // b) * Q + D - 1 - v // b
            source = block_padded[shift : shift + n]
            target = field[u % b, v % b]
            for j in range(n):
                target[j] += w * source[j]


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
    """sigmoid(2 x) = P(unit = +1 | field x), in float64 through the vectorisable exp, to float32
    accuracy (relative error < 6e-9, below the rounding of a float32 field)."""
    x = float(x)
    e = exp_nonpositive_float32(-2.0 * abs(x))
    return 1.0 / (1.0 + e) if x >= 0 else e / (1.0 + e)


@njit(cache=True, error_model="numpy")
def _draw(field, rows, width, stride, lanes, prob, uniforms, out, out_stride):
    """out = +1 with probability sigmoid(2 field), else -1, for ``rows`` rows of ``width`` units:
    unit (p, q) is ``field[p stride + q]`` and ``out[p out_stride + q]``; the other entries of a
    row of ``out`` (junk columns) get 0.

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
        source, target = p * stride, p * out_stride
        for q in range(width):
            out[target + q] = 1.0 if uniforms[p * width + q] < prob[source + q] else -1.0
        for q in range(width, out_stride):
            out[target + q] = 0.0


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
def layout_tables(L, f, b):
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
def cd_one(i, data, start, weight, k, seed, row_of, col_of, chain_end, block_spins, out):
    """CD-k for configuration i: the chain from ``start[i]`` to ``chain_end[i]``, the last hidden
    draw to ``block_spins[i]``, and ``out[i] = (dF/dW(data_i) - dF/dW(chain end_i) flattened,
    F(data_i), F(chain end_i))``. ``start`` is ``data`` itself for CD (chains start at the data)."""
    L = data.shape[1]
    f, b = weight.shape[0], row_of.shape[0]
    M = L // b
    Q = col_of.shape[1]
    rows = row_of.shape[1]
    padded = np.empty((b, b, rows * Q), dtype=data.dtype)
    block_padded = np.empty(rows * Q, dtype=data.dtype)
    field = np.empty(M * Q, dtype=data.dtype)
    mu = np.empty(M * Q, dtype=data.dtype)
    visible = np.empty((b, b, M * Q), dtype=data.dtype)  # phase split, junk columns
    split = np.empty((b, b, M * M), dtype=data.dtype)
    tanh_field = np.empty(M * Q, dtype=np.float64)
    one_plus = np.empty(M * Q, dtype=np.float64)
    prob = np.empty(b * b * M * Q, dtype=np.float64)
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
        _draw(field, M, M, Q, lanes, prob, uniforms, mu, Q)
        _visible_field(mu, weight, Q, block_padded, visible)
        _draw(
            visible.reshape(b * b * M * Q),
            b * b * M,
            M,
            Q,
            lanes,
            prob,
            uniforms,
            split.reshape(L * L),
            M,
        )
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
