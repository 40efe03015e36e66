"""MCRG throughput and the time evaluate.py needs for the paper's 10^6 samples.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/mcrg.py            # quick (~1 min)
    python benchmarks/mcrg.py --threads 2 --full                              # also run 10^6 for real

Figures (configurations per second, L = 32, N_r = 2 so levels 32, 16, 8, EVEN + ODD measured):

* ``mcrg_<transform>_<device>``: transform + measure + accumulate, on a fixed set of Wolff
  configurations, for the majority rule and an 8x8 RBM filter, on the CPU and on CUDA when present;
* ``sampling``: configurations per second of evaluate.py's default sampler settings;
* ``evaluate_<transform>``: a real evaluate.py run of ``--evaluate-samples`` configurations (sampling
  + MCRG, default config otherwise) and its linear projection to 10^6; with ``--full`` the 10^6 run
  itself is timed.

Prints the figures and appends one JSON line (date, machine, versions, threads, figures) to
``benchmarks/results/mcrg.jsonl``. Timings on a shared machine are provisional.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir

import rbmrg
from rbmrg import evaluation
from rbmrg.checkpoint import save_filter
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.sampling import iterate_samples
from rbmrg.rg.mcrg import chain_blocks, run_mcrg
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import majority, rbm

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mcrg.jsonl"
PAPER_SAMPLES = 1_000_000


def fixed_configurations(n: int, L: int = 32) -> torch.Tensor:
    """n equilibrium configurations at K_c (Wolff), drawn once and reused for every timing."""
    spins = [s.clone() for s in iterate_samples(IsingModel(L), n, algorithm="wolff", n_chains=1000,
                                                n_thermalize=100, n_between=2, seed=1)]  # fmt: skip
    return torch.cat(spins)


def mcrg_rate(spins: torch.Tensor, transform, device: str, batch: int = 1000, repeats: int = 3):
    """Configurations per second through the MCRG driver: transform (2 steps), measure,
    accumulate, and the final jackknife solve (a fixed cost of milliseconds)."""
    spins = spins.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    blocks = chain_blocks(batch, 20, device)
    best = float("inf")
    for _ in range(repeats):
        batches = (
            (spins[first : first + batch], blocks[: min(batch, spins.shape[0] - first)])
            for first in range(0, spins.shape[0], batch)
        )
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a random filter is a meaningless RG map: NaN noise
            run_mcrg(batches, [transform], 2, 2.0, n_blocks=20, generator=generator)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return spins.shape[0] / best


def evaluate_run(transform: str, n_samples: int, ckpt: Path | None) -> dict:
    """Time a real evaluate.py run (compose API, default config otherwise)."""
    overrides = [
        f"transform={transform}",
        f"mcrg.n_samples={n_samples}",
        "progress=false",
        "mcrg.couplings=false",
        "data.data_dir=null",  # always sample: it is what is timed
    ]  # exponents only, as the earlier records
    if ckpt is not None:
        overrides.append(f"ckpt_path={ckpt}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("evaluate", overrides=overrides)
    record = evaluation.run(evaluation.make_plan(cfg))  # run() writes nothing
    return record["wall_time_s"] | {"n_samples": n_samples, "sampler": record["sampler"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 1)))
    parser.add_argument(
        "--configs", type=int, default=10_000, help="configurations per MCRG timing"
    )
    parser.add_argument("--evaluate-samples", type=int, default=50_000)
    parser.add_argument("--full", action="store_true", help="also time the 10^6-sample run")
    parser.add_argument("--no-save", action="store_true", help="do not append to mcrg.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    figures: dict[str, float] = {}
    spins = fixed_configurations(args.configs)
    torch.manual_seed(0)
    filter8 = ConvRBM(8, 2, init_scale=0.1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        model = filter8.to(device)
        for name, transform in (("majority", majority(2)), ("rbm8", rbm(model))):
            rate = mcrg_rate(spins, transform, device)
            figures[f"mcrg_{name}_{device}_configs_per_s"] = rate
            print(
                f"MCRG {name:8s} {device:4s}: {rate:10.0f} configurations/s (2 RG steps, 14 interactions)"
            )

    # A random 8x8 filter is a fine workload but a meaningless RG map: its NaN warnings are noise.
    logging.getLogger("evaluate").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "filter8.pt"
        save_filter(ckpt, filter8.to("cpu"))
        for transform in ("majority", "rbm"):
            use = ckpt if transform == "rbm" else None
            timing = evaluate_run(transform, args.evaluate_samples, use)
            # Thermalization is a fixed cost; the rest scales with the number of samples.
            per_sample = (timing["total"] - timing["thermalize"]) / args.evaluate_samples
            projected = timing["thermalize"] + per_sample * PAPER_SAMPLES
            figures[f"evaluate_{transform}_{args.evaluate_samples}_s"] = timing["total"]
            figures[f"evaluate_{transform}_sampling_share"] = timing["sampling"] / timing["total"]
            figures[f"evaluate_{transform}_projected_1e6_s"] = projected
            print(
                f"evaluate.py transform={transform}: {args.evaluate_samples} samples in "
                f"{timing['total']:.1f} s (sampling {timing['sampling']:.1f} s including "
                f"thermalization {timing['thermalize']:.1f} s, MCRG {timing['mcrg']:.1f} s) "
                f"-> 10^6 projected {projected:.0f} s"
            )
            if args.full:
                full = evaluate_run(transform, PAPER_SAMPLES, use)
                figures[f"evaluate_{transform}_measured_1e6_s"] = full["total"]
                print(f"evaluate.py transform={transform}: 10^6 samples in {full['total']:.0f} s")
            figures[f"evaluate_{transform}_sampling_configs_per_s"] = args.evaluate_samples / (
                timing["sampling"] - timing["thermalize"]
            )
        sampler = timing["sampler"]

    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "benchmark": "mcrg",
        "machine": {
            "node": platform.node(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "versions": {
            "rbmrg": rbmrg.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "threads": args.threads,
        "settings": {"L": 32, "n_rg_steps": 2, "configs": args.configs, "sampler": sampler},
        "figures": figures,
    }
    if not args.no_save:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with open(RESULTS, "a") as file:
            file.write(json.dumps(record) + "\n")
        print(f"appended to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
