"""Triton kernels of the fused checkerboard Metropolis sampler (:mod:`rbmrg.lattice.fused`).

Import this module only through :func:`rbmrg.lattice.fused.kernels`, which decides first whether the
kernels are compiled for the GPU or run by Triton's interpreter on the CPU (the choice is made when
``@triton.jit`` decorates them, i.e. when this module is imported).

Layout: ``spins`` is the sampler's ``(n_chains, L, ..., L)`` int8 tensor, row-major (the last axis
is x), values +1/-1. One *program* owns ``chains_per_program`` whole chains and carries them
through all the half-sweeps of a launch; no two programs touch the same chain, so the only
synchronisation needed is between the threads of one program, between two half-sweeps.

Random numbers come from Philox4x32-10 (Salmon et al., SC'11) evaluated inside the kernel, keyed by
the seed and indexed by a counter that names what the numbers are for:
``counter = (group, chain, half_sweep mod 2^32, half_sweep div 2^32)`` with ``half_sweep = 2 sweep +
parity`` counted from the start of the run. The ``HALF = L^dim / 2`` sites of the active sublattice
are numbered by a *slot* (row-major order of the sublattice); with ``Q = ceil(HALF / 4)`` groups,
the four 32-bit words of group ``g`` go to the slots ``g, g + Q, g + 2Q, g + 3Q``. Nothing depends
on the launch configuration (block size, chains per program, sweeps per launch, device).

A tile is a 1D block of groups: Philox runs once per group, then four passes update the slots
``w Q + group`` (w = 0..3), each with its own word. Consecutive groups are consecutive slots, so every
pass reads memory in order, and no value is shared between threads (no layout conversion, no Philox
computed twice). Only what shapes the code is constexpr (L, dim, tile size, sign of K); chains per
program, tiles, half-sweeps and thresholds are runtime arguments, so one compiled kernel serves
every chain count and coupling of a lattice.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Philox4x32 constants (Random123's PHILOX_M4x32_0/1 and the Weyl key increments W32_0/1).
# (Triton kernels read globals only when they are tl.constexpr instances.)
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)
#: Counter word of the hot start's half-sweep index (never reached by a run: half-sweeps < 2^63).
INIT_COUNTER_WORD = tl.constexpr(0xFFFFFFFF)


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 of the counter (c0, c1, c2, c3) under the key (k0, k1), all uint32.

    Each round: (hi0, lo0) = M0 * c0, (hi1, lo1) = M1 * c2 (64-bit products split in halves),
    c <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0), then the key is raised by the Weyl constants.
    Checked against Random123's known-answer vectors in tests/test_fused.py.
    """
    for _ in tl.static_range(10):
        prev0 = c0
        prev2 = c2
        c0 = tl.umulhi(PHILOX_M1, prev2) ^ c1 ^ k0
        c2 = tl.umulhi(PHILOX_M0, prev0) ^ c3 ^ k1
        c1 = tl.mul(PHILOX_M1, prev2, sanitize_overflow=False)
        c3 = tl.mul(PHILOX_M0, prev0, sanitize_overflow=False)
        k0 = tl.add(k0, PHILOX_W0, sanitize_overflow=False)
        k1 = tl.add(k1, PHILOX_W1, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def philox_kernel(counters_ptr, key_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """Philox4x32-10 of ``n`` counters (``(n, 4)`` int64 holding uint32 values) -> ``(n, 4)``."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rows < n
    c0 = tl.load(counters_ptr + 4 * rows + 0, mask=ok, other=0).to(tl.uint32)
    c1 = tl.load(counters_ptr + 4 * rows + 1, mask=ok, other=0).to(tl.uint32)
    c2 = tl.load(counters_ptr + 4 * rows + 2, mask=ok, other=0).to(tl.uint32)
    c3 = tl.load(counters_ptr + 4 * rows + 3, mask=ok, other=0).to(tl.uint32)
    k0 = tl.load(key_ptr + 0).to(tl.uint32)
    k1 = tl.load(key_ptr + 1).to(tl.uint32)
    r0, r1, r2, r3 = philox4x32(c0, c1, c2, c3, k0, k1)
    tl.store(out_ptr + 4 * rows + 0, r0.to(tl.int64), mask=ok)
    tl.store(out_ptr + 4 * rows + 1, r1.to(tl.int64), mask=ok)
    tl.store(out_ptr + 4 * rows + 2, r2.to(tl.int64), mask=ok)
    tl.store(out_ptr + 4 * rows + 3, r3.to(tl.int64), mask=ok)


@triton.jit
def hot_start_kernel(
    spins_ptr,
    params_ptr,
    n_chains,
    chains_per_program,
    n_tiles,
    N: tl.constexpr,
    GROUPS: tl.constexpr,
    TILE: tl.constexpr,
):
    """Independent uniform +1/-1 on every site: the top bit of a Philox word of (site, chain).

    ``params = (key_lo, key_hi, ...)`` int64. Here the slots are all ``N`` sites of the chain
    (row-major), ``GROUPS = ceil(N / 4)``, and both half-sweep words of the counter are
    INIT_COUNTER_WORD, a value no half-sweep of a run reaches.
    """
    k0 = tl.load(params_ptr + 0).to(tl.uint32)
    k1 = tl.load(params_ptr + 1).to(tl.uint32)
    rows = tl.arange(0, TILE)
    chain0 = tl.program_id(0) * chains_per_program
    spare = tl.full([TILE], INIT_COUNTER_WORD, tl.uint32)
    tile = 0
    while tile < n_tiles:  # (a while loop: see metropolis_kernel)
        flat = tile * TILE + rows
        chain_local = flat // GROUPS
        group = flat % GROUPS
        chain = chain0 + chain_local
        chain_ok = (chain_local < chains_per_program) & (chain < n_chains)
        words = philox4x32(group.to(tl.uint32), chain.to(tl.uint32), spare, spare, k0, k1)
        base = spins_ptr + chain.to(tl.int64) * N
        for w in tl.static_range(4):
            site = w * GROUPS + group
            spin = (1 - 2 * (words[w] >> 31).to(tl.int32)).to(tl.int8)
            tl.store(base + site, spin, mask=chain_ok & (site < N))
        tile += 1


@triton.jit
def _metropolis_pass(
    base,
    slot,
    ok,
    parity,
    word,
    L: tl.constexpr,
    DIM: tl.constexpr,
    SIGN: tl.constexpr,
    threshold_2,
    threshold_4,
    threshold_6,
):
    """Metropolis update of the sublattice sites ``slot`` (where ``ok``) of parity ``parity``."""
    ROW: tl.constexpr = L // 2
    # Slot -> coordinates: along x the sublattice takes every other site, starting at the parity
    # of the other coordinates' sum plus the sublattice's parity.
    if DIM == 1:
        x = 2 * slot + parity
        site = x
        up = tl.where(x == L - 1, 0, x + 1)
        down = tl.where(x == 0, L - 1, x - 1)
        field = tl.load(base + up, mask=ok, other=0).to(tl.int32) + tl.load(
            base + down, mask=ok, other=0
        ).to(tl.int32)
    elif DIM == 2:
        y = slot // ROW
        x = 2 * (slot % ROW) + ((y + parity) & 1)
        row = y * L
        site = row + x
        x_up = tl.where(x == L - 1, 0, x + 1)
        x_down = tl.where(x == 0, L - 1, x - 1)
        y_up = tl.where(y == L - 1, 0, y + 1) * L
        y_down = tl.where(y == 0, L - 1, y - 1) * L
        field = (
            tl.load(base + row + x_up, mask=ok, other=0).to(tl.int32)
            + tl.load(base + row + x_down, mask=ok, other=0).to(tl.int32)
            + tl.load(base + y_up + x, mask=ok, other=0).to(tl.int32)
            + tl.load(base + y_down + x, mask=ok, other=0).to(tl.int32)
        )
    else:
        z = slot // (L * ROW)
        y = (slot // ROW) % L
        x = 2 * (slot % ROW) + ((z + y + parity) & 1)
        plane = z * (L * L)
        row = y * L
        site = plane + row + x
        x_up = tl.where(x == L - 1, 0, x + 1)
        x_down = tl.where(x == 0, L - 1, x - 1)
        y_up = tl.where(y == L - 1, 0, y + 1) * L
        y_down = tl.where(y == 0, L - 1, y - 1) * L
        z_up = tl.where(z == L - 1, 0, z + 1) * (L * L)
        z_down = tl.where(z == 0, L - 1, z - 1) * (L * L)
        field = (
            tl.load(base + plane + row + x_up, mask=ok, other=0).to(tl.int32)
            + tl.load(base + plane + row + x_down, mask=ok, other=0).to(tl.int32)
            + tl.load(base + plane + y_up + x, mask=ok, other=0).to(tl.int32)
            + tl.load(base + plane + y_down + x, mask=ok, other=0).to(tl.int32)
            + tl.load(base + z_up + row + x, mask=ok, other=0).to(tl.int32)
            + tl.load(base + z_down + row + x, mask=ok, other=0).to(tl.int32)
        )
    spin = tl.load(base + site, mask=ok, other=1).to(tl.int32)
    cost = SIGN * spin * field  # -ln(weight ratio of the flip) / (2 |K|)
    threshold = tl.where(cost == 2, threshold_2, tl.where(cost == 4, threshold_4, threshold_6))
    # Top 31 bits of the word: a non-negative int32, compared with the int32 thresholds.
    flip = (cost <= 0) | ((word >> 1).to(tl.int32) < threshold)
    tl.store(base + site, (-spin).to(tl.int8), mask=ok & flip)


@triton.jit
def metropolis_kernel(
    spins_ptr,
    params_ptr,
    n_chains,
    chains_per_program,
    n_tiles,
    n_half_sweeps,
    threshold_2,
    threshold_4,
    threshold_6,
    L: tl.constexpr,
    DIM: tl.constexpr,
    N: tl.constexpr,
    HALF: tl.constexpr,
    GROUPS: tl.constexpr,
    TILE: tl.constexpr,
    SIGN: tl.constexpr,
    SYNC: tl.constexpr,
):
    """``n_half_sweeps`` checkerboard Metropolis half-sweeps of every chain, in place.

    ``params = (key_lo, key_hi, first_half_sweep)`` int64. Half-sweep ``t`` updates the sites of
    parity ``t mod 2`` (coordinate sum), each flipped with probability min(1, exp(-2 K s h)), h the
    sum of its 2 DIM neighbours. With ``cost = sign(K) s h`` the flip is always taken for
    cost <= 0; for cost = 2, 4, 6 it is taken when the top 31 bits of its Philox word are below
    ``threshold_cost = floor(exp(-2 |K| cost) 2^31)`` (int32 arguments, not constexpr, so one
    compiled kernel serves every coupling): an exact integer comparison, so the acceptance
    probability is exp(-2 |K| cost) to within 2^-31.
    """
    k0 = tl.load(params_ptr + 0).to(tl.uint32)
    k1 = tl.load(params_ptr + 1).to(tl.uint32)
    first = tl.load(params_ptr + 2)
    rows = tl.arange(0, TILE)
    chain0 = tl.program_id(0) * chains_per_program
    # While loops, not range(n): Triton 3.6's interpreter cannot take a runtime bound in range()
    # with numpy >= 2.4 (it converts a 1-element array with int()).
    step = 0
    while step < n_half_sweeps:
        half_sweep = first + step
        parity = (half_sweep & 1).to(tl.int32)
        sweep_low = tl.full([TILE], 0, tl.uint32) + half_sweep.to(tl.uint32)  # low 32 bits
        sweep_high = tl.full([TILE], 0, tl.uint32) + (half_sweep >> 32).to(tl.uint32)
        tile = 0
        while tile < n_tiles:
            flat = tile * TILE + rows
            chain_local = flat // GROUPS
            group = flat % GROUPS
            chain = chain0 + chain_local
            chain_ok = (chain_local < chains_per_program) & (chain < n_chains)
            words = philox4x32(
                group.to(tl.uint32), chain.to(tl.uint32), sweep_low, sweep_high, k0, k1
            )
            base = spins_ptr + chain.to(tl.int64) * N
            for w in tl.static_range(4):
                slot = w * GROUPS + group
                _metropolis_pass(
                    base,
                    slot,
                    chain_ok & (slot < HALF),
                    parity,
                    words[w],
                    L,
                    DIM,
                    SIGN,
                    threshold_2,
                    threshold_4,
                    threshold_6,
                )
            tile += 1
        if SYNC:
            # The next half-sweep reads what this one wrote, from other threads of the program.
            tl.debug_barrier()
        step += 1
