"""Sampler benchmark at L = 32 (or --L), K_c: spin updates/s and decorrelated samples per second.

    python benchmarks/sampler.py                  # all algorithms, CPU (+ CUDA: fused and torch)
    python benchmarks/sampler.py --threads 1      # on a shared machine
    python benchmarks/sampler.py --samples 1000000  # also time the full Table-1-sized draw
    python benchmarks/sampler.py --L 128 --algorithms wolff --samples 0  # CPU side of the L=128 GPU target

For each algorithm it measures, in one run:

* ``updates_per_s``: chains x sweeps x L^2 / wall time of ``step`` (after a warm-up). For Wolff a
  sweep is ``clusters_per_sweep`` clusters, ~L^2 flipped spins on average (rbmrg.lattice.wolff docstring),
  so its figure counts flipped spins, not visited sites; a Swendsen-Wang sweep is one SW update
  (every site's bonds drawn, every cluster labelled and flipped with probability 1/2);
* ``tau_int_energy`` and ``tau_int_abs_m`` in sweeps, from a long run with a sample every sweep or two;
* ``decorrelated_per_s``: chain-sweeps per second / (2 tau_int), for the energy and for |m|;
* ``draw_s``: wall time of ``draw_samples`` for ``--samples`` configurations from 1000 chains spaced
  by ``ceil(2 tau_int(|m|))`` sweeps, thermalization, unpacking and energies included (compiled
  samplers only; ``draw_projected_s`` is the sampling time alone from the sweep rate, for all).

Ratios are against the eager-torch checkerboard Metropolis measured in the same run. Each result is
printed and appended as one JSON line to ``benchmarks/results/sampler.jsonl``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time
from pathlib import Path

import numba
import torch
from common import cpu_model

from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.samplers import DYNAMIC_EXPONENT, default_spacing, make_sampler
from rbmrg.lattice.sampling import autocorrelation_time, draw_samples

RESULTS = Path(__file__).parent / "results" / "sampler.jsonl"

# (algorithm, chains for throughput, chains x kept samples x sweeps between them for tau_int)
CPU_CASES = [
    ("metropolis", 256, (64, 1500, 2)),
    ("heatbath", 256, (64, 1500, 4)),
    ("metropolis-msc", 1024, (256, 2000, 2)),
    ("wolff", 256, (128, 1000, 1)),
    # torch Swendsen-Wang (eager, CPU here; the GPU figures come from benchmarks/gpu_check.py)
    ("swendsen-wang", 64, (64, 1000, 1)),
]
#: Cluster samplers: short tau_int, thermalized by 200 sweeps at L = 32 (docs/sampler.md).
CLUSTER = ("wolff", "swendsen-wang")


def sweep_rate(model, algorithm, device, n_chains, seconds) -> tuple[float, dict]:
    """Chain-sweeps per second of ``step`` (compile and warm-up excluded)."""
    sampler = make_sampler(model, algorithm, device, seed=0)
    state = sampler.step(sampler.init(n_chains), 20)
    sweeps, elapsed = 1, 0.0
    while elapsed < seconds:
        sweeps *= 2
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        state = sampler.step(state, sweeps)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return n_chains * sweeps / elapsed, sampler.details


def autocorrelation(model, algorithm, device, n_chains, per_chain, n_between, n_thermalize):
    """tau_int (in sweeps) of the energy and of |m| with Madras-Sokal errors."""
    samples = draw_samples(
        model,
        n_chains * per_chain,
        algorithm=algorithm,
        n_chains=n_chains,
        n_thermalize=n_thermalize,
        n_between=n_between,
        seed=1,
        device=device,
    )
    tau_e, err_e, _ = autocorrelation_time(samples.energy)
    tau_m, err_m, _ = autocorrelation_time(samples.magnetization.abs())
    return n_between * tau_e, n_between * err_e, n_between * tau_m, n_between * err_m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per throughput figure")
    parser.add_argument("--samples", type=int, default=100_000, help="configurations to draw")
    parser.add_argument("--algorithms", nargs="*", default=None, help="subset to run")
    parser.add_argument(
        "--L",
        type=int,
        default=32,
        help="lattice size; away from 32, sweeps between samples scale as (L/32)^z and "
        "thermalization follows rbmrg.lattice.samplers.default_spacing",
    )
    parser.add_argument("--no-save", action="store_true", help="print only")
    args = parser.parse_args()
    torch.set_num_threads(
        args.threads
    )  # the numba kernels also take its numba thread count from here
    model = IsingModel(L=args.L)
    machine = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "threads": args.threads,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    common = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine,
        "torch": torch.__version__,
        "numba": numba.__version__,
        "L": model.L,
        "coupling": model.coupling,
        "command": "python benchmarks/sampler.py "
        + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v not in (None, False)
        ),
    }
    cases = [(alg, chains, tau, torch.device("cpu")) for alg, chains, tau in CPU_CASES]
    if torch.cuda.is_available():
        cases += [
            ("metropolis-fused", 65536, (4096, 1500, 2), torch.device("cuda")),
            ("swendsen-wang", 8192, (1024, 1000, 1), torch.device("cuda")),
            ("metropolis", 8192, (512, 1500, 2), torch.device("cuda")),
            ("heatbath", 8192, (512, 1500, 4), torch.device("cuda")),
        ]
    # Without CUDA, metropolis-fused runs under Triton's interpreter: exact but no speed figure.
    if args.algorithms:
        cases = [case for case in cases if case[0] in args.algorithms]
    baseline = {}
    for algorithm, n_chains, (tau_chains, tau_per_chain, tau_between), device in cases:
        if args.L == 32:  # the settings of the records so far
            tau_thermalize, n_thermalize = (200, 100) if algorithm in CLUSTER else (2000, 1000)
        else:  # sweeps between samples follow tau ~ L^z; thermalization default_spacing's rule
            tau_between = max(1, round(tau_between * (args.L / 32) ** DYNAMIC_EXPONENT[algorithm]))
            tau_thermalize = n_thermalize = default_spacing(algorithm, args.L)[0]
        rate, details = sweep_rate(model, algorithm, device, n_chains, args.seconds)
        tau_e, err_e, tau_m, err_m = autocorrelation(
            model, algorithm, device, tau_chains, tau_per_chain, tau_between, tau_thermalize
        )
        n_between = math.ceil(2 * tau_m)
        n_draw = args.samples - args.samples % 1000
        # Sampling alone, from the sweep rate: what a draw of n_draw spaced by n_between costs.
        draw_projected_s = (n_draw * n_between + 1000 * n_thermalize) / rate
        draw_s = float("nan")
        # (eager samplers: many minutes; --samples 0 skips the draw)
        if n_draw and algorithm in ("metropolis-msc", "wolff", "metropolis-fused"):
            start = time.perf_counter()
            draw_samples(
                model,
                n_draw,
                algorithm=algorithm,
                n_chains=1000,
                n_thermalize=n_thermalize,
                n_between=n_between,
                device=device,
            )
            draw_s = time.perf_counter() - start
        result = {
            **common,
            "algorithm": algorithm,
            "device": device.type,
            "details": details,
            "chains": n_chains,
            "updates_per_s": rate * model.n_sites,
            "tau_int_energy": tau_e,
            "tau_int_energy_err": err_e,
            "tau_int_abs_m": tau_m,
            "tau_int_abs_m_err": err_m,
            "decorrelated_per_s_energy": rate / (2 * tau_e),
            "decorrelated_per_s_abs_m": rate / (2 * tau_m),
            "draw_samples": n_draw,
            "draw_n_between": n_between,
            "draw_n_thermalize": n_thermalize,
            "draw_s": draw_s,
            "draw_projected_s": draw_projected_s,
        }
        if algorithm == "metropolis" and device.type == "cpu":
            baseline = result
        if baseline:
            for key in ("updates_per_s", "decorrelated_per_s_abs_m"):
                result[f"{key}_vs_eager_metropolis"] = result[key] / baseline[key]
        print(
            f"{algorithm:>15} {device.type:>4}: {rate * model.n_sites:9.3g} updates/s"
            f"  tau_int E {tau_e:6.2f}({err_e:.2f}) |m| {tau_m:6.2f}({err_m:.2f}) sweeps"
            f"  decorrelated/s E {rate / (2 * tau_e):9.3g} |m| {rate / (2 * tau_m):9.3g}"
            f"  draw {n_draw} every {n_between}: {draw_s:6.1f} s (sampling alone {draw_projected_s:.3g} s)"
            + (
                f"  x{result['updates_per_s_vs_eager_metropolis']:.1f} updates vs eager"
                if baseline
                else ""
            ),
            flush=True,
        )
        if not args.no_save:
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            with RESULTS.open("a") as stream:
                stream.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
