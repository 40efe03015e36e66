"""Table 1 of Chung & Kao: MCRG exponents of a learned RBM filter or a fixed RG transformation.

    python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    python evaluate.py transform=majority mcrg.n_samples=100000

Fresh configurations are drawn with the evaluation's own seed (``sampler.seed``), transformed
``mcrg.n_rg_steps`` times and measured on the fly (nothing but float64 sums is kept, so memory does
not grow with ``mcrg.n_samples``). The thermal exponent y_t comes from the even interactions, the
magnetic exponent y_h from the odd ones, for N_c = 1..7 and N_r = 1..n_rg_steps, with jackknife
errors over ``mcrg.n_blocks`` blocks of independent chains (see ``rbmrg.rg.mcrg`` and docs/mcrg.md).

Every setting is checked before any sampling. Output, in the Hydra run directory only:
``mcrg.json`` (all numbers, settings, tau_int, wall time), ``mcrg.csv`` and ``table1.md``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import platform
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

import rbmrg
from rbmrg.checkpoint import load_rbm
from rbmrg.lattice.model import IsingModel, bond_sum, magnetization
from rbmrg.lattice.samplers import check_algorithm, make_sampler
from rbmrg.lattice.sampling import integrated_autocorrelation_time, iterate_samples
from rbmrg.rg import transforms as rg
from rbmrg.rg.interactions import EVEN, ODD, Interaction, interaction_names
from rbmrg.rg.mcrg import MCRGAccumulator, chain_blocks, format_value, summarize
from rbmrg.training.data import progress_display

log = logging.getLogger("evaluate")

SETS: dict[str, tuple[Interaction, ...]] = {"even": EVEN, "odd": ODD}
#: Exact 2D Ising exponents: y_t = 1/nu = 1, y_h = 15/8.
EXACT = {"y_t": 1.0, "y_h": 15 / 8}
#: Name of an exponent -> the interaction set it comes from.
EXPONENT_SET = {"y_t": "even", "y_h": "odd"}
OUTPUT_FILES = ("mcrg.json", "mcrg.csv", "table1.md")
#: Chains whose energy and |M| series are kept for tau_int (bounded memory).
TAU_CHAINS = 100
MIN_BLOCKS = 20


@dataclass
class Plan:
    """Everything a run needs, checked before any sampling."""

    transform: str
    transforms: list[rg.Transform]
    scale: int
    model: IsingModel
    lattice_sizes: list[int]
    sampler: dict[str, Any]
    n_samples: int
    n_rg_steps: int
    n_blocks: int
    batch_size: int
    mcrg_seed: int
    ckpt_paths: list[str] = field(default_factory=list)
    filter_sizes: list[int] = field(default_factory=list)
    unfit: dict[str, list[tuple[int, str]]] = field(default_factory=dict)


def _integer(value: Any, key: str, low: int) -> int:
    """``value`` as an int >= low (an integral float such as 1e6 is accepted), else name ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}={value!r}: must be an integer >= {low}")
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise ValueError(f"{key}={value!r}: must be an integer >= {low}")
    if int(value) < low:
        raise ValueError(f"{key}={int(value)}: must be an integer >= {low}")
    return int(value)


def _transforms(
    cfg: DictConfig, device: torch.device
) -> tuple[str, list[rg.Transform], int, list[str], list[int]]:
    """(name, one transform per level or one for all, scale factor b, checkpoint paths, filter sizes)."""
    name = cfg.transform
    fixed = {"majority": rg.majority, "decimation": rg.decimation}
    if name in fixed:
        if cfg.get("ckpt_path") is not None:
            raise ValueError(
                f"ckpt_path={cfg.ckpt_path!r} is given but transform={name!r} uses no checkpoint; "
                "drop ckpt_path or set transform=rbm"
            )
        b = _integer(cfg.block_size, "block_size", 2)
        return name, [fixed[name](b)], b, [], []
    if name != "rbm":
        raise ValueError(f"transform={name!r}: unknown; choose one of {['rbm', *sorted(fixed)]}")
    paths = cfg.get("ckpt_path")
    if paths is None:
        raise ValueError(
            "ckpt_path=null: transform=rbm needs a checkpoint of the learned filter "
            "(python evaluate.py ckpt_path=...), or choose transform=majority"
        )
    paths = [str(p) for p in paths] if isinstance(paths, ListConfig | list) else [str(paths)]
    n_rg_steps = _integer(cfg.mcrg.n_rg_steps, "mcrg.n_rg_steps", 1)
    if len(paths) not in (1, n_rg_steps):
        raise ValueError(
            f"ckpt_path: {len(paths)} files for mcrg.n_rg_steps={n_rg_steps}; give one file "
            "(reused at every level) or one per RG step"
        )
    models = [load_rbm(p).to(device) for p in paths]
    strides = {m.stride for m in models}
    if len(strides) != 1:
        raise ValueError(
            f"ckpt_path: the filters have different strides {sorted(strides)}; y = ln(lambda)/ln(b) "
            "needs one scale factor b"
        )
    return name, [rg.rbm(m) for m in models], strides.pop(), paths, [m.filter_size for m in models]


def _device(name: Any) -> torch.device:
    try:
        device = torch.device(str(name))
    except RuntimeError as error:
        raise ValueError(f"sampler.device={name!r}: {error}") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"sampler.device={name!r}: CUDA is not available on this machine")
    return device


def make_plan(cfg: DictConfig) -> Plan:
    """Check every setting of ``cfg`` and build the run; a ValueError names the first bad one."""
    device = _device(cfg.sampler.device)
    name, transforms, b, paths, filter_sizes = _transforms(cfg, device)
    n_rg_steps = _integer(cfg.mcrg.n_rg_steps, "mcrg.n_rg_steps", 1)
    L = _integer(cfg.ising.L, "ising.L", 4)
    try:
        model = IsingModel(L=L, coupling=cfg.ising.coupling, dim=2)
    except ValueError as error:
        raise ValueError(f"ising.{error}") from error
    sizes = [L]
    for step in range(n_rg_steps):
        if sizes[-1] % b:
            raise ValueError(
                f"ising.L={L} with mcrg.n_rg_steps={n_rg_steps}: level {step} has L={sizes[-1]}, "
                f"not divisible by the scale factor b={b}"
            )
        if filter_sizes:
            f = filter_sizes[min(step, len(filter_sizes) - 1)]
            if f > sizes[-1]:
                raise ValueError(
                    f"ising.L={L} with mcrg.n_rg_steps={n_rg_steps}: the {f}x{f} filter does not "
                    f"fit level {step} (L={sizes[-1]}); use fewer RG steps or a larger lattice"
                )
        sizes.append(sizes[-1] // b)

    s = cfg.sampler
    algorithm = str(s.algorithm)
    try:
        check_algorithm(algorithm)
    except ValueError as error:
        raise ValueError(f"sampler.{error}") from error
    n_chains = _integer(s.n_chains, "sampler.n_chains", 1)
    sampler = {
        "algorithm": algorithm,
        "n_chains": n_chains,
        "n_thermalize": _integer(s.n_thermalize, "sampler.n_thermalize", 0),
        "n_between": _integer(s.n_between, "sampler.n_between", 1),
        "seed": _integer(s.seed, "sampler.seed", 0),
        "device": str(s.device),
    }

    m = cfg.mcrg
    n_samples = _integer(m.n_samples, "mcrg.n_samples", 1)
    if n_samples % n_chains:
        raise ValueError(
            f"mcrg.n_samples={n_samples} is not a multiple of sampler.n_chains={n_chains}: every "
            "chain contributes the same number of samples"
        )
    n_blocks = _integer(m.n_blocks, "mcrg.n_blocks", 1)
    if n_blocks < MIN_BLOCKS:
        raise ValueError(
            f"mcrg.n_blocks={n_blocks}: use at least {MIN_BLOCKS} jackknife blocks for a "
            "trustworthy error bar"
        )
    if n_blocks > n_chains:
        raise ValueError(
            f"mcrg.n_blocks={n_blocks} > sampler.n_chains={n_chains}: every jackknife block needs "
            "its own independent chains"
        )
    unfit = {
        set_name: [
            (level, i.name) for level, size in enumerate(sizes) for i in ints if not i.fits(size)
        ]
        for set_name, ints in SETS.items()
    }
    return Plan(
        transform=name,
        transforms=transforms,
        scale=b,
        model=model,
        lattice_sizes=sizes,
        sampler=sampler,
        n_samples=n_samples,
        n_rg_steps=n_rg_steps,
        n_blocks=n_blocks,
        batch_size=_integer(m.batch_size, "mcrg.batch_size", 1),
        mcrg_seed=_integer(m.seed, "mcrg.seed", 0),
        ckpt_paths=paths,
        filter_sizes=filter_sizes,
        unfit={k: v for k, v in unfit.items() if v},
    )


def _progress(enabled: bool):
    """A rich progress display (or a no-op stand-in when disabled)."""
    return progress_display("samples", enabled=enabled)


def run(plan: Plan, show_progress: bool = False) -> dict[str, Any]:
    """Sample, transform, accumulate and solve; returns the record written to mcrg.json."""
    start = time.perf_counter()
    device = torch.device(plan.sampler["device"])
    generator = torch.Generator(device=device)
    generator.manual_seed(plan.mcrg_seed)
    acc = MCRGAccumulator(plan.n_rg_steps + 1, plan.n_blocks, SETS, device=device)
    n_chains = plan.sampler["n_chains"]
    blocks_of_chains = chain_blocks(n_chains, plan.n_blocks, device)
    n_tau = min(n_chains, TAU_CHAINS)
    energy, abs_magnetization = [], []
    buffer: list[torch.Tensor] = []
    mcrg_seconds = 0.0
    thermalize_seconds = 0.0

    def flush() -> None:
        nonlocal mcrg_seconds
        if not buffer:
            return
        tick = time.perf_counter()
        spins = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
        blocks = blocks_of_chains.repeat(len(buffer))
        acc.update(rg.iterate(spins, plan.transforms, plan.n_rg_steps, generator), blocks)
        buffer.clear()
        mcrg_seconds += time.perf_counter() - tick

    stack = max(1, plan.batch_size // n_chains)
    with _progress(show_progress) as progress:
        warm = progress.add_task(
            f"thermalizing {plan.sampler['n_thermalize']} sweeps", total=None, visible=True
        )
        task = progress.add_task("sampling", total=plan.n_samples, visible=False)

        def report(done: int) -> None:
            progress.update(task, completed=done)

        samples = iterate_samples(
            plan.model,
            plan.n_samples,
            algorithm=plan.sampler["algorithm"],
            n_chains=n_chains,
            n_thermalize=plan.sampler["n_thermalize"],
            n_between=plan.sampler["n_between"],
            seed=plan.sampler["seed"],
            device=device,
            progress=report,
        )
        for index, spins in enumerate(samples):
            if index == 0:
                thermalize_seconds = time.perf_counter() - start
                progress.update(warm, visible=False)
                progress.update(task, visible=True)
            energy.append(bond_sum(spins[:n_tau], 2).cpu())
            abs_magnetization.append(magnetization(spins[:n_tau]).abs().cpu())
            # Samplers may reuse their state buffer: copy what waits in the buffer.
            buffer.append(spins.clone() if stack > 1 else spins)
            if len(buffer) >= stack:
                flush()
        flush()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = summarize(acc, plan.scale)
    messages = sorted({str(w.message) for w in caught})
    for message in messages:
        log.warning(message)

    total = time.perf_counter() - start
    tau = {
        "energy": integrated_autocorrelation_time(torch.stack(energy)),
        "abs_magnetization": integrated_autocorrelation_time(torch.stack(abs_magnetization)),
        "unit": "n_between sweeps (1/2 = uncorrelated)",
        "n_chains_used": n_tau,
    }
    record: dict[str, Any] = {
        "transform": plan.transform,
        "ckpt_path": plan.ckpt_paths or None,
        "filter_size": plan.filter_sizes or None,
        "scale_factor": plan.scale,
        "L": plan.model.L,
        "coupling": plan.model.coupling,
        "n_samples": acc.n_samples,
        "n_rg_steps": plan.n_rg_steps,
        "lattice_sizes": plan.lattice_sizes,
        "n_blocks": plan.n_blocks,
        "even_set": interaction_names(EVEN),
        "odd_set": interaction_names(ODD),
    }
    for exponent, set_name in EXPONENT_SET.items():
        record[exponent] = result.y[set_name].tolist()
        record[f"{exponent}_err"] = result.err[set_name].tolist()
    record.update(
        {
            "exact": EXACT,
            "level0": result.level0,
            "sampler": {**plan.sampler, "details": _sampler_details(plan)},
            "tau_int": tau,
            "mcrg_seed": plan.mcrg_seed,
            "warnings": messages,
            "wall_time_s": {
                "total": total,
                "mcrg": mcrg_seconds,
                "sampling": total - mcrg_seconds,
                "thermalize": thermalize_seconds,
            },
            "versions": {
                "rbmrg": rbmrg.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "machine": platform.node(),
            "command": " ".join(sys.argv),
        }
    )
    return record


def _sampler_details(plan: Plan) -> dict[str, Any]:
    """Algorithm-specific settings (e.g. Wolff clusters per sweep), JSON-safe."""
    sampler = make_sampler(plan.model, plan.sampler["algorithm"], "cpu", plan.sampler["seed"])
    details = getattr(sampler, "details", {}) or {}
    return {
        str(k): v if isinstance(v, int | float | str | bool) else str(v) for k, v in details.items()
    }


def _json_safe(value: Any) -> Any:
    """NaN and inf become null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def table_markdown(record: dict[str, Any]) -> str:
    """Table 1 layout: rows N_c, columns (exponent, N_r), values in the paper's 1.0001(11) notation."""
    n_r = record["n_rg_steps"]
    n_c = len(record["y_t"][0])
    heads = [f"{e} N_r={r}" for e in EXPONENT_SET for r in range(1, n_r + 1)]
    lines = [
        f"MCRG, transform={record['transform']}, L={record['L']}, K={record['coupling']:.10g}, "
        f"{record['n_samples']} samples, {record['n_blocks']} jackknife blocks "
        f"(exact: y_t = 1, y_h = 15/8 = 1.875)",
        "",
        "| N_c | " + " | ".join(heads) + " |",
        "|---:|" + "---:|" * len(heads),
    ]
    for c in range(n_c):
        cells = [
            format_value(record[e][r][c], record[f"{e}_err"][r][c])
            for e in EXPONENT_SET
            for r in range(n_r)
        ]
        lines.append(f"| {c + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(record: dict[str, Any], output_dir: Path) -> None:
    """mcrg.json, mcrg.csv and table1.md in ``output_dir`` (which must not hold them yet)."""
    with open(output_dir / "mcrg.json", "x") as file:
        json.dump(_json_safe(record), file, indent=2)
    with open(output_dir / "mcrg.csv", "x", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["exponent", "N_r", "N_c", "value", "error", "formatted"])
        for e in EXPONENT_SET:
            for r, row in enumerate(record[e]):
                for c, value in enumerate(row):
                    error = record[f"{e}_err"][r][c]
                    writer.writerow([e, r + 1, c + 1, value, error, format_value(value, error)])
    with open(output_dir / "table1.md", "x") as file:
        file.write(table_markdown(record))


def check_output_dir(output_dir: Path) -> None:
    """Refuse a directory that already holds results (a fixed hydra.run.dir reused)."""
    existing = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if existing:
        raise FileExistsError(
            f"hydra.run.dir={str(output_dir)!r} already holds {existing}; earlier results are "
            "never overwritten, choose a new directory"
        )


def evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Validate, run and write; the body of ``main`` without Hydra's decorator (used by the tests)."""
    plan = make_plan(cfg)
    check_output_dir(output_dir)
    for set_name, where in plan.unfit.items():
        log.warning(
            "%s interactions too long-ranged for some levels (level, name): %s; those entries "
            "will be NaN",
            set_name,
            where,
        )
    log.info(
        "MCRG %s: L=%d, levels %s, %d samples from %d %s chains on %s",
        plan.transform,
        plan.model.L,
        plan.lattice_sizes,
        plan.n_samples,
        plan.sampler["n_chains"],
        plan.sampler["algorithm"],
        plan.sampler["device"],
    )
    record = run(plan, show_progress=bool(cfg.get("progress", False)))
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    write_outputs(record, output_dir)
    print(table_markdown(record))
    log.info(
        "tau_int(E) = %.2f, tau_int(|M|) = %.2f (units of n_between sweeps); wall time %.1f s; "
        "results in %s",
        record["tau_int"]["energy"],
        record["tau_int"]["abs_magnetization"],
        record["wall_time_s"]["total"],
        output_dir,
    )
    return record


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig

    output_dir = Path(HydraConfig.get().runtime.output_dir)
    record = evaluate(cfg, output_dir)
    value = record["y_t"][0][-1]
    return float("nan") if value is None else float(value)


if __name__ == "__main__":
    main()
