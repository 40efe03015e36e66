"""The RG flow in coupling space: renormalized couplings K^(n) of the learned filter and the
majority rule, started at K_c and a little above and below it.

    python results/rg_flow.py --ckpt results/paper_filter.pt --n-samples 200000 --threads 1

For each starting coupling K in (K_c - delta, K_c, K_c + delta) one Monte Carlo pass (evaluate.py's
sampler settings, see mcrg_pass.py) is transformed N_r times by each transformation, and on every
renormalized level the couplings of the 8 even candidate interactions (``EVEN_CANDIDATES``) are
solved from Swendsen's equations (``rbmrg.rg.couplings``), with jackknife errors over 20 blocks
of independent chains. Level 0 is the nearest-neighbour model, K^(0) = (K, 0, ..., 0) exactly; it
is measured too with ``--level0`` (a check that costs 3/4 of the run; tests/test_couplings.py makes
the same check). The script prints the couplings, the same at K_c for shorter truncations (the
projection of the renormalized Hamiltonian depends on the set), writes a JSON file (``--out``,
never overwritten; ``couplings``/``couplings_err`` indexed [level][interaction]) and a figure
(``--figure``): K_nn against K_diag, one trajectory per transformation and starting point, and the
couplings of levels 1 and 2 at K_c side by side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from interaction_order import json_safe
from mcrg_pass import add_pass_arguments, load_transform, run_pass, settings_from

from rbmrg.lattice.model import K_C_2D
from rbmrg.rg.couplings import CouplingAccumulator, CouplingResult
from rbmrg.rg.interactions import EVEN_CANDIDATES, EVEN_SETS, interaction_names
from rbmrg.rg.mcrg import format_value

INTERACTIONS = tuple(EVEN_CANDIDATES.values())
#: Shorter truncations solved from the same histograms at K_c.
TRUNCATIONS = {
    "distance (7)": interaction_names(EVEN_SETS["distance"]),
    "span (7)": interaction_names(EVEN_SETS["span"]),
    "nn, diag, plaquette (3)": ["nn", "diag", "plaquette"],
    "nn, diag (2)": ["nn", "diag"],
}


def with_level0(result: CouplingResult, coupling: float) -> tuple[np.ndarray, np.ndarray]:
    """Prepend the exact level 0 (K, 0, ..., 0) to the measured renormalized levels."""
    exact = np.zeros((1, len(result.names)))
    exact[0, result.names.index("nn")] = coupling
    return (
        np.concatenate([exact, result.couplings]),
        np.concatenate([np.zeros_like(exact), result.errors]),
    )


def table(
    name: str, couplings: np.ndarray, errors: np.ndarray, names: list[str], first: int = 0
) -> str:
    lines = [f"| {name}: level | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for level, (values, errs) in enumerate(zip(couplings, errors, strict=True)):
        cells = [
            format_value(v, e) if e > 0 else f"{v:.5f}" for v, e in zip(values, errs, strict=True)
        ]
        lines.append(f"| {first + level} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure(records: dict, path: Path, delta: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"learned": "tab:blue", "majority": "tab:red"}
    styles = {"below": (":", "v"), "critical": ("-", "o"), "above": ("--", "^")}
    fig, (flow, bars) = plt.subplots(1, 2, figsize=(12, 5))
    names = None
    for transform, by_start in records.items():
        for start, record in by_start.items():
            couplings = np.array(record["couplings"])
            errors = np.array(record["couplings_err"])
            names = record["names"]
            nn, diag = names.index("nn"), names.index("diag")
            line, marker = styles[start]
            flow.errorbar(
                couplings[:, nn],
                couplings[:, diag],
                xerr=errors[:, nn],
                yerr=errors[:, diag],
                ls=line,
                marker=marker,
                color=colours.get(transform, "k"),
                label=f"{transform}, K = {record['coupling']:.4f}",
            )
            if start == "critical":
                for level, (x, y) in enumerate(
                    zip(couplings[:, nn], couplings[:, diag], strict=True)
                ):
                    flow.annotate(
                        f"n={level}",
                        (x, y),
                        textcoords="offset points",
                        xytext=(6, 4),
                        color=colours.get(transform, "k"),
                        fontsize=8,
                    )
    flow.set_xlabel("K_nn")
    flow.set_ylabel("K_diag (next-nearest pair)")
    flow.set_title(f"RG flow from K_c and K_c ± {delta:g} (levels n = 0, 1, 2)")
    flow.legend(fontsize=7)
    flow.grid(alpha=0.3)
    width = 0.2
    x = np.arange(len(names))
    offset = -1.5 * width
    for transform, by_start in records.items():
        couplings = np.array(by_start["critical"]["couplings"])
        errors = np.array(by_start["critical"]["couplings_err"])
        for level, hatch in ((1, ""), (2, "//")):
            if level < len(couplings):
                bars.bar(
                    x + offset,
                    couplings[level],
                    width,
                    yerr=errors[level],
                    hatch=hatch,
                    color=colours.get(transform, "k"),
                    alpha=0.7,
                    label=f"{transform}, K^({level})",
                )
                offset += width
    bars.axhline(0, color="k", lw=0.5)
    bars.set_xticks(x, names, rotation=30)
    bars.set_title("renormalized couplings at K_c")
    bars.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="filter file of the learned transformation")
    parser.add_argument("--no-majority", action="store_true", help="skip the majority rule")
    parser.add_argument("--delta", type=float, default=0.01, help="K_c -/+ delta start points")
    parser.add_argument("--level0", action="store_true", help="measure level 0 too (a check)")
    parser.add_argument("--out", default="outputs/rg_flow.json", help="JSON output")
    parser.add_argument("--figure", default="outputs/rg_flow.png", help="PNG output")
    add_pass_arguments(parser, n_samples=200_000)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out={out} exists; choose another path (earlier results are kept)")
    transforms = {}
    if args.ckpt is not None:
        transforms["learned"] = load_transform(args.ckpt)[0]
    if not args.no_majority:
        transforms["majority"] = load_transform("majority")[0]
    if not transforms:
        parser.error("nothing to do: give --ckpt or drop --no-majority")
    starts = {"below": K_C_2D - args.delta, "critical": K_C_2D, "above": K_C_2D + args.delta}
    first = 0 if args.level0 else 1
    records: dict = {name: {} for name in transforms}
    seconds = 0.0
    truncations = {}
    for start, coupling in starts.items():
        settings = settings_from(args, coupling=coupling)
        n_levels = settings.n_rg_steps + 1 - first
        accumulators = {
            name: CouplingAccumulator(INTERACTIONS, n_levels, settings.n_blocks)
            for name in transforms
        }
        consumers = {
            name: [lambda levels, blocks, acc=acc: acc.update(levels[first:], blocks)]
            for name, acc in accumulators.items()
        }
        seconds += run_pass(settings, transforms, consumers)
        for name, acc in accumulators.items():
            result = acc.result()
            if first:
                couplings, errors = with_level0(result, coupling)
            else:
                couplings, errors = result.couplings, result.errors
            records[name][start] = {
                "coupling": coupling,
                "names": result.names,
                "couplings": couplings.tolist(),
                "couplings_err": errors.tolist(),
                "level0": "measured" if not first else "exact (K, 0, ..., 0), not measured",
                "n_environments": result.n_environments,
            }
            print(f"\n{table(f'{name}, K = {coupling:.6f}', couplings, errors, result.names)}")
            if start == "critical":
                truncations[name] = {}
                for label, names in TRUNCATIONS.items():
                    short = acc.result(names)
                    truncations[name][label] = {
                        "names": names,
                        "couplings": short.couplings.tolist(),
                        "couplings_err": short.errors.tolist(),
                    }
                    title = f"{name}, K_c, {label}"
                    print(f"\n{table(title, short.couplings, short.errors, names, first)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(sys.argv),
        "settings": vars(settings_from(args)),
        "ckpt": args.ckpt,
        "delta": args.delta,
        "seconds": seconds,
        "flows": records,
        "truncations_at_kc": truncations,
    }
    with open(out, "x") as file:
        json.dump(json_safe(record), file, indent=1)
    figure(records, Path(args.figure), args.delta)
    print(f"\nwritten: {out}, {args.figure} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
