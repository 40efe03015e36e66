"""How the order of the even interactions shapes Table 1: one MCRG pass, every order.

    python results/interaction_order.py --ckpt results/paper_filter.pt --n-samples 1000000 --threads 1

One pass (evaluate.py's sampler settings and seeds, N_r = 2, 20 jackknife blocks; see mcrg_pass.py)
measures all 8 candidate even interactions (``EVEN_CANDIDATES``: the 7 of Table 1 and the (3,0)
pair) and all 9 odd candidates on every level, for the learned filter (``--ckpt``) and for the
majority rule on the same configurations. The accumulator keeps their full covariance, so every
ordering is a choice of rows and columns, without resampling. y_t(N_c = n) depends only on *which*
n interactions come first (T = A^-1 B of a reordered set is similar to the original), so the script
solves every subset once and then:

* prints Table 1 in the two named orders (``EVEN_SETS``: ``span``, ``distance``) beside the
  paper's columns, for both transformations;
* the step y_t(N_c = 3) - y_t(N_c = 2) for each candidate as the third interaction, with the
  jackknife error of the difference;
* chi^2 = sum over (N_r, N_c) of (y - y_paper)^2 / (err^2 + err_paper^2) for every order of 7 of
  the 8 candidates, against the paper's optimal column (learned filter) and Swendsen's majority
  column (majority rule), with the best orders and the named ones;
* y_h for the odd candidates in the ``size`` order and the spread over odd sets (issue 15, part 3).

Everything also goes to a JSON file (``--out``, never overwritten).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import numpy as np
from make_table import PAPER_MAJORITY, PAPER_OPTIMAL
from mcrg_pass import add_pass_arguments, load_transform, run_pass, settings_from

from rbmrg.rg.interactions import EVEN_CANDIDATES, EVEN_SETS, ODD_CANDIDATES, ODD_SETS
from rbmrg.rg.mcrg import MCRGAccumulator, format_value

N_C = 7
SETS = {"even": tuple(EVEN_CANDIDATES.values()), "odd": tuple(ODD_CANDIDATES.values())}


def parse_printed(text: str) -> tuple[float, float]:
    """'0.9217(09)' -> (0.9217, 0.0009); '0.904(1)' -> (0.904, 0.001)."""
    value, error = text.rstrip(")").split("(")
    decimals = len(value.split(".")[1])
    return float(value), int(error) * 10.0**-decimals


def paper_table(printed: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    parsed = np.array([[parse_printed(t) for t in row] for row in printed])
    return parsed[..., 0], parsed[..., 1]


def subset_key(names) -> str:
    return ",".join(sorted(names))


def solve_subsets(acc: MCRGAccumulator, set_name: str, max_size: int, must: str | None = None):
    """{subset key: (y, err, jack)} for every subset of the set up to ``max_size`` interactions,
    y of shape (N_r,), jack (n_blocks, N_r): the N_c = |subset| entry of any order starting with it."""
    names = [i.name for i in acc.sets[set_name]]
    covariances = acc.covariances()
    table = {}
    for size in range(1, max_size + 1):
        for subset in itertools.combinations(names, size):
            if must is not None and must not in subset:
                continue
            y, err, jack = acc.ordered_exponents(set_name, list(subset), 2.0, covariances)
            table[subset_key(subset)] = (y[:, -1], err[:, -1], jack[:, :, -1])
    return table


def order_table(subsets, order: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(y, err) of shape (N_r, len(order)) for N_c = 1..len(order) in ``order``."""
    entries = [subsets[subset_key(order[:n])] for n in range(1, len(order) + 1)]
    return np.stack([e[0] for e in entries], 1), np.stack([e[1] for e in entries], 1)


def chi2(y: np.ndarray, err: np.ndarray, ref: np.ndarray, ref_err: np.ndarray) -> float:
    n_r = min(y.shape[0], ref.shape[0])
    return float((((y[:n_r] - ref[:n_r]) ** 2) / (err[:n_r] ** 2 + ref_err[:n_r] ** 2)).sum())


def rank_orders(subsets, names: list[str], ref: np.ndarray, ref_err: np.ndarray):
    """chi^2 of every order of N_C of ``names`` that starts with nn, best first.

    The N_c = n entry of an order is that of its first n interactions as a set, so each subset's
    contribution (against the paper's column N_c = its size) is computed once.
    """
    n_r = ref.shape[0]
    contribution = {}
    for key, (y, err, _) in subsets.items():
        column = key.count(",")  # N_c - 1
        contribution[key] = float(
            (((y[:n_r] - ref[:, column]) ** 2) / (err[:n_r] ** 2 + ref_err[:, column] ** 2)).sum()
        )
    ranked = []
    rest = [n for n in names if n != "nn"]
    for tail in itertools.permutations(rest, N_C - 1):
        order = ["nn", *tail]
        total = sum(contribution[subset_key(order[:n])] for n in range(1, N_C + 1))
        ranked.append((total, order))
    ranked.sort(key=lambda item: item[0])
    return ranked


def json_safe(value):
    """NaN becomes null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def markdown_orders(results: dict, paper: dict) -> str:
    """Table 1 in both named orders, each transformation beside the paper's column."""
    head = ["N_r", "N_c"]
    for transform in results:
        for order in EVEN_SETS:
            head.append(f"{transform}, `{order}`")
        head.append(f"paper, {transform}")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    n_r = min(len(next(iter(results.values()))["orders"]["span"]["y"]), 2)
    for r in range(n_r):
        for c in range(N_C):
            row = [str(r + 1), str(c + 1)]
            for transform, record in results.items():
                for order in EVEN_SETS:
                    entry = record["orders"][order]
                    row.append(format_value(entry["y"][r][c], entry["err"][r][c]))
                row.append(paper[transform][r][c])
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def analyse(acc: MCRGAccumulator, printed: list[list[str]]) -> dict:
    ref, ref_err = paper_table(printed)
    even = solve_subsets(acc, "even", N_C, must="nn")
    record: dict = {"orders": {}, "odd": {}}
    for order_name, interactions in EVEN_SETS.items():
        y, err = order_table(even, [i.name for i in interactions])
        record["orders"][order_name] = {
            "interactions": [i.name for i in interactions],
            "y": y.tolist(),
            "err": err.tolist(),
            "chi2_paper": chi2(y, err, ref, ref_err),
        }
    # The third interaction after nn, diag: y_t(N_c = 3) - y_t(N_c = 2), jackknife error.
    base = even[subset_key(["nn", "diag"])]
    steps = {}
    for name in EVEN_CANDIDATES:
        if name in ("nn", "diag"):
            continue
        entry = even[subset_key(["nn", "diag", name])]
        jack = entry[2] - base[2]
        n = jack.shape[0]
        steps[name] = {
            "step": (entry[0] - base[0]).tolist(),
            "err": np.sqrt((n - 1) / n * ((jack - jack.mean(0)) ** 2).sum(0)).tolist(),
        }
    record["step_nc3_minus_nc2"] = steps
    record["paper_step_nc3_minus_nc2"] = (ref[:, 2] - ref[:, 1]).tolist()
    ranked = rank_orders(even, list(EVEN_CANDIDATES), ref, ref_err)
    record["chi2_ranking"] = [{"chi2": c, "order": o} for c, o in ranked[:20]]
    record["n_orders_ranked"] = len(ranked)
    record["chi2_rank_of"] = {
        name: 1 + [o for _, o in ranked].index([i.name for i in interactions])
        for name, interactions in EVEN_SETS.items()
    }
    record["subsets"] = {key: {"y": v[0].tolist(), "err": v[1].tolist()} for key, v in even.items()}
    # Odd sector: the named order, and every subset that contains the magnetization.
    y_size, err_size, _ = acc.ordered_exponents("odd", [i.name for i in ODD_SETS["size"]], 2.0)
    odd = solve_subsets(acc, "odd", len(ODD_CANDIDATES), must="magnetization")
    values = np.array([v[0] for v in odd.values()])
    record["odd"] = {
        "size": {"y": y_size.tolist(), "err": err_size.tolist()},
        "all_candidates": {
            "interactions": list(ODD_CANDIDATES),
            "y": odd[subset_key(ODD_CANDIDATES)][0].tolist(),
            "err": odd[subset_key(ODD_CANDIDATES)][1].tolist(),
        },
        "n_subsets_with_magnetization": len(odd),
        "min_over_subsets": values.min(0).tolist(),
        "max_over_subsets": values.max(0).tolist(),
    }
    return record


def report(name: str, record: dict, paper_label: str) -> None:
    print(f"\n## {name}\n")
    for order, entry in record["orders"].items():
        print(
            f"chi^2 against the paper's {paper_label} column, order `{order}` "
            f"({', '.join(entry['interactions'])}): {entry['chi2_paper']:.1f} "
            f"(rank {record['chi2_rank_of'][order]} of {record['n_orders_ranked']})"
        )
    print("\nbest orders by chi^2:")
    for item in record["chi2_ranking"][:8]:
        print(f"  {item['chi2']:7.1f}  {', '.join(item['order'])}")
    print(
        "\ny_t(N_c=3) - y_t(N_c=2) after nn, diag (N_r = 1, 2); paper:",
        ", ".join(f"{s:+.4f}" for s in record["paper_step_nc3_minus_nc2"]),
    )
    for third, entry in record["step_nc3_minus_nc2"].items():
        cells = [format_value(s, e) for s, e in zip(entry["step"], entry["err"], strict=True)]
        print(f"  third = {third:10s} " + "  ".join(cells))
    odd = record["odd"]
    print("\ny_h, odd set `size` (N_c = 1..7), N_r = 1, 2:")
    for r, (ys, es) in enumerate(zip(odd["size"]["y"], odd["size"]["err"], strict=True)):
        print(
            f"  N_r={r + 1}: " + " ".join(format_value(y, e) for y, e in zip(ys, es, strict=True))
        )
    print(
        f"  all {len(odd['all_candidates']['interactions'])} odd candidates: "
        + " ".join(
            format_value(y, e)
            for y, e in zip(odd["all_candidates"]["y"], odd["all_candidates"]["err"], strict=True)
        )
    )
    print(
        f"  range over the {odd['n_subsets_with_magnetization']} subsets with the magnetization: "
        + ", ".join(
            f"N_r={r + 1}: [{lo:.5f}, {hi:.5f}]"
            for r, (lo, hi) in enumerate(
                zip(odd["min_over_subsets"], odd["max_over_subsets"], strict=True)
            )
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="filter file of the learned transformation")
    parser.add_argument("--no-majority", action="store_true", help="skip the majority rule")
    parser.add_argument("--out", default="outputs/interaction_order.json", help="JSON output")
    add_pass_arguments(parser)
    args = parser.parse_args()
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out={out} exists; choose another path (earlier results are kept)")
    settings = settings_from(args)
    transforms, printed = {}, {}
    if args.ckpt is not None:
        transforms["learned"], _ = load_transform(args.ckpt)
        printed["learned"] = PAPER_OPTIMAL
    if not args.no_majority:
        transforms["majority"], _ = load_transform("majority")
        printed["majority"] = PAPER_MAJORITY
    if not transforms:
        parser.error("nothing to do: give --ckpt or drop --no-majority")
    accumulators = {
        name: MCRGAccumulator(settings.n_rg_steps + 1, settings.n_blocks, SETS)
        for name in transforms
    }
    seconds = run_pass(
        settings, transforms, {name: [acc.update] for name, acc in accumulators.items()}
    )
    results = {}
    for name, acc in accumulators.items():
        results[name] = analyse(acc, printed[name])
        report(name, results[name], "optimal" if name == "learned" else "majority")
    if "majority" in results:
        spans = np.array(results["majority"]["orders"]["span"]["y"])[:, 2:]
        dists = np.array(results["majority"]["orders"]["distance"]["y"])[:, 2:]
        print(
            f"\nmajority rule: largest |y_t(span) - y_t(distance)| at N_c >= 3: "
            f"{np.abs(spans - dists).max():.4f}"
        )
    print("\nTable 1 in both orders:\n")
    print(markdown_orders(results, {k: v for k, v in printed.items() if k in results}))
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(sys.argv),
        "settings": vars(settings),
        "ckpt": args.ckpt,
        "seconds": seconds,
        "even_candidates": list(EVEN_CANDIDATES),
        "odd_candidates": list(ODD_CANDIDATES),
        "results": results,
    }
    with open(out, "x") as file:
        json.dump(json_safe(record), file, indent=1)
    print(f"\nwritten: {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
