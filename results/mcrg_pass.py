"""One Monte Carlo pass that feeds several RG transformations: the shared core of the analysis
scripts in results/ (interaction_order.py, rg_flow.py, magnetic_exponent.py).

Configurations are drawn as ``evaluate.py`` draws them (its defaults: Wolff, 1000 chains, 200
thermalization sweeps, one configuration every 4 sweeps, seed 12345, a batch of one sweep of all
chains), and every transformation has its own generator seeded with evaluate.py's ``mcrg.seed``
(54321). A transformation therefore sees the same configurations and draws the same block spins
as ``python evaluate.py`` with the same settings, whatever else runs in the pass: its MCRG numbers
are evaluate.py's, to the last digit.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rbmrg.checkpoint import load_rbm
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.sampling import iterate_samples
from rbmrg.rg import transforms as rg
from rbmrg.rg.mcrg import chain_blocks

#: A consumer receives the levels [level 0, level 1, ...] of one batch and the block of each row.
Consumer = Callable[[list[torch.Tensor], torch.Tensor], None]


@dataclass
class PassSettings:
    """Sampling and MCRG settings; the defaults are evaluate.py's (conf/evaluate.yaml)."""

    L: int = 32
    coupling: float | None = None  # None: K_c
    n_samples: int = 1_000_000
    n_chains: int = 1000
    n_thermalize: int = 200
    n_between: int = 4
    seed: int = 12345
    mcrg_seed: int = 54321
    n_rg_steps: int = 2
    n_blocks: int = 20
    algorithm: str = "wolff"


def add_pass_arguments(parser: argparse.ArgumentParser, **defaults) -> None:
    """--n-samples, --L, --n-rg-steps, --n-chains, --seed, --threads (defaults: evaluate.py's)."""
    base = PassSettings(**defaults)
    parser.add_argument("--n-samples", type=float, default=base.n_samples)
    parser.add_argument("--L", type=int, default=base.L)
    parser.add_argument("--n-rg-steps", type=int, default=base.n_rg_steps)
    parser.add_argument("--n-chains", type=int, default=base.n_chains)
    parser.add_argument("--seed", type=int, default=base.seed, help="Monte Carlo seed")
    parser.add_argument("--threads", type=int, default=None, help="torch/numba threads")


def settings_from(args: argparse.Namespace, **overrides) -> PassSettings:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    n_samples = int(args.n_samples)
    if n_samples != args.n_samples or n_samples % args.n_chains:
        raise SystemExit(
            f"--n-samples={args.n_samples:g} must be an integer multiple of --n-chains={args.n_chains}"
        )
    return PassSettings(
        L=args.L,
        n_samples=n_samples,
        n_rg_steps=args.n_rg_steps,
        n_chains=args.n_chains,
        seed=args.seed,
        **overrides,
    )


def load_transform(spec: str) -> tuple[rg.Transform, int]:
    """``majority``, ``decimation`` (b = 2) or the path of a filter file: (transform, scale b)."""
    if spec in ("majority", "decimation"):
        return getattr(rg, spec)(2), 2
    rbm = load_rbm(spec)
    return rg.rbm(rbm), rbm.stride


def run_pass(
    settings: PassSettings,
    transforms: dict[str, rg.Transform],
    consumers: dict[str, list[Consumer]],
    log: Callable[[str], None] = print,
) -> float:
    """Sample, transform with each of ``transforms``, hand the levels to its consumers; seconds."""
    start = time.perf_counter()
    model = IsingModel(L=settings.L, coupling=settings.coupling)
    generators = {name: torch.Generator().manual_seed(settings.mcrg_seed) for name in transforms}
    blocks = chain_blocks(settings.n_chains, settings.n_blocks)
    n_batches = settings.n_samples // settings.n_chains
    report_every = max(1, n_batches // 10)
    for index, spins in enumerate(
        iterate_samples(
            model,
            settings.n_samples,
            algorithm=settings.algorithm,
            n_chains=settings.n_chains,
            n_thermalize=settings.n_thermalize,
            n_between=settings.n_between,
            seed=settings.seed,
        )
    ):
        for name, transform in transforms.items():
            levels = rg.iterate(spins, [transform], settings.n_rg_steps, generators[name])
            for consume in consumers[name]:
                consume(levels, blocks)
        if (index + 1) % report_every == 0:
            done = (index + 1) * settings.n_chains
            log(
                f"  K={model.coupling:.6f}: {done} / {settings.n_samples} configurations, "
                f"{time.perf_counter() - start:.0f} s"
            )
    return time.perf_counter() - start
