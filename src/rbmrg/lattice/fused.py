"""Fused checkerboard Metropolis for torch devices: ``"metropolis-fused"`` (Triton kernels).

The same Markov chain as the torch reference ``"metropolis"`` (:mod:`.checkerboard`): a sweep is a
half-sweep of the even sublattice (coordinate sum even) then one of the odd sublattice, each site
flipped with probability min(1, exp(-2 K s_i h_i)), h_i the sum of its 2 dim neighbours. What
differs is how it runs (:mod:`.fused_kernels`):

* one kernel launch carries every chain through all the sweeps of a ``step`` call (the threads of
  a program synchronise between half-sweeps; each program owns whole chains);
* only the active sublattice is visited; spins stay int8 in memory (1 byte per site);
* random numbers are drawn inside the kernel from Philox4x32-10 keyed by ``seed`` and indexed by
  (chain, half-sweep, site), so a run is reproducible for a seed on any device and whatever the
  launch configuration (``chains_per_program``, ``block_size``, ``half_sweeps_per_launch``), and
  adding chains leaves the existing ones unchanged;
* the accept/reject test is an exact integer comparison of 31 random bits with
  ``floor(exp(-2 |K| a) 2^31)``, a = 2, 4, 6 (no floating point in the update at all).

Where it runs: with CUDA, the kernels are compiled by Triton for the GPU (spins requested on the CPU
are computed on the current GPU and copied back). Without CUDA they run on the CPU under Triton's
interpreter, which executes the same kernel code with numpy: exact but slow (use it for tests, not
for production runs). The interpreter is chosen when ``@triton.jit`` decorates the kernels, i.e.
when :mod:`.fused_kernels` is first imported; this module therefore imports it lazily, after setting
``TRITON_INTERPRET=1`` in the environment when no CUDA device is present (set ``TRITON_INTERPRET=1``
yourself before the first use to interpret on a GPU machine). Triton is an optional dependency (the
``dev`` extras install it); without it the sampler raises an error naming the algorithm.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import numbers
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from rbmrg.lattice.base import Sampler
from rbmrg.lattice.model import IsingModel

ALGORITHM = "metropolis-fused"
#: Default spins per block (tile) on the GPU: 256 groups of 4 sites, 4 warps -> 8 spins per thread.
GPU_BLOCK_SIZE = 1024
#: Default spins per block under the interpreter: large numpy arrays amortise its per-op overhead.
INTERPRETER_BLOCK_SIZE = 1 << 18
#: Programs per streaming multiprocessor the automatic ``chains_per_program`` aims for.
PROGRAMS_PER_SM = 4
#: Bytes of spins one program keeps in flight at most (stays in the SM's L1 cache).
PROGRAM_BYTES = 16 * 1024


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def check_available() -> None:
    """Raise a ValueError naming the algorithm unless Triton can run its kernels here."""
    if not triton_available():
        raise ValueError(
            f"algorithm={ALGORITHM!r} needs the triton package (pip install triton, or "
            "pip install -e '.[dev]'); on this machine choose another sampler, e.g. 'wolff'"
        )


_kernels: ModuleType | None = None
_interpreted = False


def kernels() -> ModuleType:
    """The kernel module, imported on first use (see the module docstring for why lazily)."""
    global _kernels, _interpreted
    if _kernels is None:
        check_available()
        if not torch.cuda.is_available():
            # No GPU backend: the kernels can only run under the interpreter.
            os.environ.setdefault("TRITON_INTERPRET", "1")
        import triton

        from rbmrg.lattice import fused_kernels

        _kernels = fused_kernels
        knobs = getattr(triton, "knobs", None)  # (Triton >= 3.4; older ones read the variable)
        _interpreted = bool(
            knobs.runtime.interpret
            if knobs is not None
            else os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
        )
    return _kernels


def interpreting() -> bool:
    """Whether the kernels run under Triton's interpreter (fixed when they are first imported)."""
    kernels()
    return _interpreted


@dataclass
class FusedState:
    """Spins of all chains (int8, on the device the kernels run on) and the half-sweeps done."""

    spins: torch.Tensor  # (n_chains, L, ..., L) int8
    half_sweeps: int = 0


@dataclass(frozen=True)
class LaunchConfig:
    """How a launch is cut into programs; none of it changes the numbers drawn."""

    chains_per_program: int
    block_size: int  # spins per tile, a power of 2 >= 4
    half_sweeps_per_launch: int  # 0: all the half-sweeps of a step call in one launch
    num_warps: int

    @property
    def tile_groups(self) -> int:
        return self.block_size // 4


def _power_of_two_at_least(value: int) -> int:
    return 1 << max(0, (value - 1).bit_length())


def _check_knob(name: str, value, low: int, power_of_two: bool = False) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name}={value!r}: must be an integer >= {low} (or None for automatic)")
    if power_of_two and value & (value - 1):
        raise ValueError(f"{name}={value!r}: must be a power of 2")


def philox_key(seed: int) -> tuple[int, int]:
    """The Philox key (low, high 32 bits) of a seed, taken modulo 2^64."""
    seed = int(seed) % (1 << 64)
    return seed & 0xFFFFFFFF, seed >> 32


def acceptance_thresholds(coupling: float) -> tuple[int, int, int, int]:
    """(sign K, T_2, T_4, T_6): an uphill move of cost a = sign(K) s h is taken when the top 31
    bits of its random word are below ``T_a = floor(exp(-2 |K| a) 2^31)``."""
    sign = (coupling > 0) - (coupling < 0)
    thresholds = [math.floor(math.exp(-2.0 * abs(coupling) * a) * 2**31) for a in (2, 4, 6)]
    return (sign, *(min(t, 2**31 - 1) for t in thresholds))


def metropolis_fused(
    model: IsingModel,
    device: torch.device | str,
    seed: int,
    *,
    chains_per_program: int | None = None,
    block_size: int | None = None,
    half_sweeps_per_launch: int | None = None,
    num_warps: int = 4,
) -> Sampler:
    """Fused checkerboard Metropolis (module docstring); spins come back int8 on ``device``.

    Launch knobs (``None``: automatic; results are identical for every choice):

    * ``chains_per_program``: whole chains one program updates (GPU default: enough programs for
      ``PROGRAMS_PER_SM`` per multiprocessor, at most ``PROGRAM_BYTES`` of spins each; interpreter
      default: all chains in one program);
    * ``block_size``: spins per tile, a power of 2 >= 4 (GPU: 1024; interpreter: 2^18);
    * ``half_sweeps_per_launch``: split a step call into launches of this many half-sweeps
      (``None``: one launch per step call; 1: no synchronisation inside the kernel at all);
    * ``num_warps``: warps per program on the GPU.
    """
    check_available()
    _check_knob("chains_per_program", chains_per_program, 1)
    _check_knob("block_size", block_size, 4, power_of_two=True)
    _check_knob("half_sweeps_per_launch", half_sweeps_per_launch, 1)
    _check_knob("num_warps", num_warps, 1, power_of_two=True)
    device = torch.device(device)
    module = kernels()
    interpreted = interpreting()
    if interpreted:
        run_device = torch.device("cpu")
    elif device.type == "cuda":
        run_device = device
    elif torch.cuda.is_available():
        run_device = torch.device("cuda", torch.cuda.current_device())
    else:
        raise ValueError(
            f"algorithm={ALGORITHM!r}: no CUDA device and TRITON_INTERPRET is off; "
            "unset TRITON_INTERPRET (or set it to 1) to run the kernels on the CPU"
        )
    n_sites, half = model.n_sites, model.n_sites // 2
    groups = -(-half // 4)  # Philox calls per chain per half-sweep (4 sites each)
    init_groups = -(-n_sites // 4)
    sign, *thresholds = acceptance_thresholds(model.coupling)
    key_low, key_high = philox_key(seed)

    def launch_config(n_chains: int, groups_per_chain: int) -> LaunchConfig:
        if chains_per_program is not None:
            per_program = chains_per_program
        elif interpreted:
            per_program = n_chains
        else:
            processors = torch.cuda.get_device_properties(run_device).multi_processor_count
            most = max(1, PROGRAM_BYTES // n_sites)
            per_program = max(1, min(most, n_chains // (PROGRAMS_PER_SM * processors)))
        default_block = INTERPRETER_BLOCK_SIZE if interpreted else GPU_BLOCK_SIZE
        spins = _power_of_two_at_least(4 * groups_per_chain * per_program)
        size = block_size if block_size is not None else max(4, min(default_block, spins))
        return LaunchConfig(per_program, size, half_sweeps_per_launch or 0, num_warps)

    def on_run_device():
        if run_device.type == "cuda":
            return torch.cuda.device(run_device)
        return contextlib.nullcontext()

    def params(first_half_sweep: int) -> torch.Tensor:
        return torch.tensor([key_low, key_high, first_half_sweep], dtype=torch.int64).to(run_device)

    def grid(n_chains: int, config: LaunchConfig) -> tuple[int]:
        return (-(-n_chains // config.chains_per_program),)

    def init(n_chains: int) -> FusedState:
        if isinstance(n_chains, bool) or not isinstance(n_chains, numbers.Integral) or n_chains < 1:
            raise ValueError(f"n_chains={n_chains!r}: must be an integer >= 1")
        if n_chains >= 2**31:
            raise ValueError(f"n_chains={n_chains}: at most 2^31 - 1 chains (int32 chain index)")
        n_chains = int(n_chains)
        spins = torch.empty((n_chains, *model.shape), dtype=torch.int8, device=run_device)
        config = launch_config(n_chains, init_groups)
        with on_run_device():
            module.hot_start_kernel[grid(n_chains, config)](
                spins,
                params(0),
                n_chains,
                config.chains_per_program,
                -(-config.chains_per_program * init_groups // config.tile_groups),
                N=n_sites,
                GROUPS=init_groups,
                TILE=config.tile_groups,
                num_warps=config.num_warps,
            )
        return FusedState(spins, 0)

    def step(state: FusedState, n_sweeps: int = 1) -> FusedState:
        if isinstance(n_sweeps, bool) or not isinstance(n_sweeps, numbers.Integral) or n_sweeps < 0:
            raise ValueError(f"n_sweeps={n_sweeps!r}: must be an integer >= 0")
        n_chains = state.spins.shape[0]
        config = launch_config(n_chains, groups)
        total = 2 * int(n_sweeps)  # half-sweeps
        per_launch = config.half_sweeps_per_launch or max(total, 1)
        with on_run_device():
            for first in range(0, total, per_launch):
                count = min(per_launch, total - first)
                module.metropolis_kernel[grid(n_chains, config)](
                    state.spins,
                    params(state.half_sweeps + first),
                    n_chains,
                    config.chains_per_program,
                    -(-config.chains_per_program * groups // config.tile_groups),
                    count,
                    *thresholds,
                    L=model.L,
                    DIM=model.dim,
                    N=n_sites,
                    HALF=half,
                    GROUPS=groups,
                    TILE=config.tile_groups,
                    SIGN=sign,
                    SYNC=count > 1,
                    num_warps=config.num_warps,
                )
        state.half_sweeps += total
        return state

    def spins_of(state: FusedState) -> torch.Tensor:
        # A copy: the kernels update state.spins in place.
        return state.spins.to(device=device, copy=True)

    details = {"backend": "triton interpreter (CPU)" if interpreted else "triton (CUDA)"}
    return Sampler(init, step, spins_of, device=device, details=details)
