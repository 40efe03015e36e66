"""Our Table 1 beside Chung & Kao's, from the mcrg.json files that evaluate.py wrote.

    python results/make_table.py --learned outputs/evaluate/paper_seed*/mcrg.json \
        --majority outputs/evaluate/majority/mcrg.json > results/table1.md

For the learned filters (one evaluate.py run per trained filter) it prints each filter's y_t with its
jackknife error, then the mean over filters with the standard error of that mean (the spread
between independently trained filters divided by sqrt(n_filters)). The paper's values are quoted
from its Table 1 for comparison; nothing here is computed from them.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from rbmrg.rg.mcrg import format_value

#: Chung & Kao, Table 1, as printed: [N_r - 1][N_c - 1], the optimal (learned) filter.
PAPER_OPTIMAL = [
    [
        "0.9217(09)",
        "0.9910(08)",
        "0.9971(09)",
        "1.0004(09)",
        "1.0005(10)",
        "1.0009(10)",
        "1.0001(11)",
    ],
    [
        "0.9281(08)",
        "0.9875(08)",
        "0.9977(08)",
        "1.0020(10)",
        "1.0032(11)",
        "1.0018(10)",
        "1.0016(10)",
    ],
]
#: Same table, majority rule (Swendsen's values as quoted there).
PAPER_MAJORITY = [
    ["0.904(1)", "0.966(2)", "0.968(2)", "0.968(2)", "0.968(3)", "0.968(3)", "0.967(3)"],
    ["0.953(2)", "0.998(2)", "1.000(2)", "0.998(2)", "0.997(2)", "0.997(2)", "0.997(3)"],
]


def load(paths: list[str]) -> list[dict]:
    return [json.loads(Path(path).read_text()) for path in paths]


def cell(value: float | None, error: float | None) -> str:
    if value is None:
        return "n/a"
    return format_value(value, float("nan") if error is None else error)


def mean_over_filters(
    records: list[dict], n_r: int, n_c: int, key: str = "y_t"
) -> tuple[float, float]:
    """Mean of an exponent over filters and its standard error from the spread between filters."""
    values = [r[key][n_r][n_c] for r in records if r[key][n_r][n_c] is not None]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(variance / len(values))


def table(learned: list[dict], majority: dict | None, labels: list[str], key: str = "y_t") -> str:
    """Markdown table of ``key`` (y_t, or y_h which the paper does not report)."""
    paper = key == "y_t"
    n_rs = len(learned[0][key]) if learned else len(majority[key])
    header = ["N_r", "N_c"]
    header += [f"learned {label}" for label in labels]
    if len(learned) > 1:
        header.append("learned, mean ± s.e. over filters")
    header += ["paper optimal"] if paper else []
    if majority is not None:
        header += ["majority (ours)"] + (["majority (paper)"] if paper else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n_r in range(min(n_rs, 2)):
        for n_c in range(7):
            row = [str(n_r + 1), str(n_c + 1)]
            row += [cell(r[key][n_r][n_c], r[f"{key}_err"][n_r][n_c]) for r in learned]
            if len(learned) > 1:
                row.append(cell(*mean_over_filters(learned, n_r, n_c, key)))
            if paper:
                row.append(PAPER_OPTIMAL[n_r][n_c])
            if majority is not None:
                row.append(cell(majority[key][n_r][n_c], majority[f"{key}_err"][n_r][n_c]))
                if paper:
                    row.append(PAPER_MAJORITY[n_r][n_c])
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learned", nargs="*", default=[], help="mcrg.json of learned filters")
    parser.add_argument("--labels", nargs="*", default=None, help="column labels of --learned")
    parser.add_argument("--majority", default=None, help="mcrg.json of transform=majority")
    parser.add_argument("--exponent", default="y_t", choices=["y_t", "y_h"])
    args = parser.parse_args()
    learned = load(args.learned)
    majority = load([args.majority])[0] if args.majority else None
    labels = args.labels or [f"#{i + 1}" for i in range(len(learned))]
    if len(labels) != len(learned):
        parser.error("--labels needs one label per --learned file")
    print(table(learned, majority, labels, args.exponent))


if __name__ == "__main__":
    main()
