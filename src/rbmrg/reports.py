"""What evaluate writes: mcrg.json, mcrg.csv and table1.md (the paper's Table 1 layout).

Every file is created with mode ``x``: a file that exists is never overwritten. A record of R > 1
filters (``n_replicas``, see :func:`rbmrg.evaluation.replica_summary`) gives the table of the mean
± standard error over filters, then one table per filter; mcrg.csv gets a ``replica`` column
(``mean`` or the filter's index).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from rbmrg.rg.mcrg import EXPONENT_SET, format_value

OUTPUT_FILES = ("mcrg.json", "mcrg.csv", "table1.md")


def json_safe(value: Any) -> Any:
    """NaN and inf become null (strict JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def table_markdown(record: dict[str, Any]) -> str:
    """Table 1 layout: rows N_c, columns (exponent, N_r), values in the paper's 1.0001(11) notation."""
    n_r = record["n_rg_steps"]
    n_c = len(record["y_t"][0])
    exact = record["exact"]
    heads = [f"{e} N_r={r}" for e in EXPONENT_SET for r in range(1, n_r + 1)]
    lines = [
        f"MCRG, transform={record['transform']}, L={record['L']}, K={record['coupling']:.10g}, "
        f"{record['n_samples']} samples, {record['n_blocks']} jackknife blocks "
        f"(exact: y_t = {exact['y_t']:.6g}, y_h = {exact['y_h']:.6g})",
        "",
    ]
    if not record.get("thermalized", True):
        lines += ["**WARNING: the chains were not thermalized; these numbers are not valid.**", ""]
    replicas = record.get("replicas") or []
    if replicas:
        lines += [
            f"Mean over {len(replicas)} independently trained filters (model.n_replicas), "
            "measured on the same configurations; error = standard error over filters "
            "(spread / sqrt(R)), the filter-to-filter uncertainty:",
            "",
        ]
    lines += _exponent_table(record, heads, n_r, n_c)
    for index, replica in enumerate(replicas):
        lines += ["", f"Filter {index} (jackknife errors):", ""]
        lines += _exponent_table(replica, heads, n_r, n_c)
    if record.get("couplings"):
        lines += ["", *couplings_markdown(record)]
    return "\n".join(lines) + "\n"


def _exponent_table(values: dict[str, Any], heads: list[str], n_r: int, n_c: int) -> list[str]:
    """Rows N_c, columns (exponent, N_r) of ``values[e][r][c]`` with ``values[e_err]``."""
    lines = ["| N_c | " + " | ".join(heads) + " |", "|---:|" + "---:|" * len(heads)]
    for c in range(n_c):
        cells = [
            format_value(values[e][r][c], values[f"{e}_err"][r][c])
            for e in EXPONENT_SET
            for r in range(n_r)
        ]
        lines.append(f"| {c + 1} | " + " | ".join(cells) + " |")
    return lines


def couplings_markdown(record: dict[str, Any]) -> list[str]:
    """Renormalized couplings K^(n), one row per level n, one column per even interaction."""
    names = record["couplings_set"]
    lines = [
        f"Renormalized couplings K^(n) of level n (Swendsen 1984), "
        f"{record['couplings_samples']} configurations:",
        "",
        "| n | L | " + " | ".join(names) + " |",
        "|---:|---:|" + "---:|" * len(names),
    ]
    for level, (values, errors) in enumerate(
        zip(record["couplings"], record["couplings_err"], strict=True)
    ):
        cells = [format_value(*pair) for pair in zip(values, errors, strict=True)]
        size = record["lattice_sizes"][level]
        lines.append(f"| {level} | {size} | " + " | ".join(cells) + " |")
    return lines


def check_output_dir(output_dir: Path) -> None:
    """Refuse a directory that already holds results (a fixed hydra.run.dir reused)."""
    existing = [name for name in OUTPUT_FILES if (output_dir / name).exists()]
    if existing:
        raise FileExistsError(
            f"hydra.run.dir={str(output_dir)!r} already holds {existing}; earlier results are "
            "never overwritten, choose a new directory"
        )


def write_outputs(record: dict[str, Any], output_dir: Path) -> None:
    """mcrg.json, mcrg.csv and table1.md in ``output_dir`` (which must not hold them yet)."""
    with open(output_dir / "mcrg.json", "x") as file:
        json.dump(json_safe(record), file, indent=2)
    replicas = record.get("replicas") or []
    with open(output_dir / "mcrg.csv", "x", newline="") as file:
        writer = csv.writer(file)
        head = ["exponent", "N_r", "N_c", "value", "error", "formatted"]
        writer.writerow(["replica", *head] if replicas else head)
        for label, values in [("mean", record), *enumerate(replicas)]:
            for e in EXPONENT_SET:
                for r, row in enumerate(values[e]):
                    for c, value in enumerate(row):
                        error = values[f"{e}_err"][r][c]
                        cells = [e, r + 1, c + 1, value, error, format_value(value, error)]
                        writer.writerow([label, *cells] if replicas else cells)
    with open(output_dir / "table1.md", "x") as file:
        file.write(table_markdown(record))
