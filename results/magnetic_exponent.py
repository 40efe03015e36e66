"""Why the learned filter's y_h is further from 15/8 than the majority rule's: one pass, many
transformations, MCRG exponents and the flow of the odd couplings.

    python results/magnetic_exponent.py --ckpt results/paper_filter.pt --n-samples 100000 --threads 1

One Monte Carlo pass at K_c (evaluate.py's sampler settings, mcrg_pass.py) is transformed by each
transformation below, each with its own generator seeded like evaluate.py's, and measured with
MCRG (the default even set for y_t, the 9 odd candidates for y_h):

* ``learned``: mu drawn from P(mu|sigma) of the filter W (``--ckpt``);
* ``learned x c``: the same filter scaled, W -> c W: the same block-spin field, less noise;
* ``learned sign``: mu = sign(h), the c -> infinity limit (deterministic);
* ``learned 3x3``, ``learned 5x5``: W cut to the 3 x 3 (5 x 5) weights around its largest one;
* ``learned symmetrized``: W averaged over the 8 symmetries of the square about its largest weight
  (the learned filter is not symmetric: its window reaches 4 sites one way and 3 the other);
* ``majority``, ``decimation``; ``soft majority p``: P(mu|sigma) ~ exp(p mu sum_block sigma),
  the 2 x 2 filter of equal weights p (Swendsen's 1984 family; p -> infinity is the majority rule).

For the transformations named by ``--flow`` it also solves the renormalized couplings of levels
1..N_r for a small set (nn, diag, plaquette, magnetization, plaquette3, row3) and their linear
response dK^(n)/dh to a field h M added to the level-0 Hamiltonian (reweighting, no field in the
sampler; ``rbmrg.rg.couplings``): at a fixed point the field coupling grows by b^{y_h} per step, so
log2 of the ratio of dK_magnetization/dh on successive levels is a second estimate of y_h, from
the coupling flow instead of MCRG's correlation matrices. Level 0 is exact: dK^(0)/dh = (0,...,0,
1, 0, 0). Results: printed and a JSON file (``--out``, never overwritten).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from interaction_order import json_safe
from mcrg_pass import add_pass_arguments, run_pass, settings_from

from rbmrg.checkpoint import load_rbm
from rbmrg.lattice.model import magnetization
from rbmrg.rg import transforms as rg
from rbmrg.rg.couplings import CouplingAccumulator
from rbmrg.rg.interactions import EVEN, EVEN_CANDIDATES, ODD_CANDIDATES
from rbmrg.rg.mcrg import MCRGAccumulator, format_value
from rbmrg.rg.rbm import ConvRBM

SETS = {"even": EVEN, "odd": tuple(ODD_CANDIDATES.values())}
FLOW_SET = (
    EVEN_CANDIDATES["nn"],
    EVEN_CANDIDATES["diag"],
    EVEN_CANDIDATES["plaquette"],
    ODD_CANDIDATES["magnetization"],
    ODD_CANDIDATES["plaquette3"],
    ODD_CANDIDATES["row3"],
)

FLOW_TRUNCATIONS = (
    ["nn", "magnetization"],
    ["nn", "diag", "magnetization"],
    ["nn", "diag", "plaquette", "magnetization"],
    ["nn", "diag", "plaquette", "magnetization", "plaquette3"],
)


def scaled(rbm: ConvRBM, factor: float) -> ConvRBM:
    copy = ConvRBM(rbm.filter_size, rbm.stride, 0.0)
    copy.weight.data = rbm.weight.detach() * factor
    return copy


def cut(rbm: ConvRBM, radius: int = 1) -> ConvRBM:
    """The filter with only the (2 radius + 1)^2 weights around its largest one kept."""
    weight = rbm.weight.detach()
    row, col = divmod(int(weight.abs().argmax()), weight.shape[1])
    kept = torch.zeros_like(weight)
    rows = slice(max(row - radius, 0), row + radius + 1)
    cols = slice(max(col - radius, 0), col + radius + 1)
    kept[rows, cols] = weight[rows, cols]
    copy = ConvRBM(rbm.filter_size, rbm.stride, 0.0)
    copy.weight.data = kept
    return copy


def symmetrized(rbm: ConvRBM) -> ConvRBM:
    """The filter averaged over the 8 rotations and reflections about its largest weight, on the
    largest square around it that the f x f window holds (weights outside it dropped)."""
    weight = rbm.weight.detach()
    f = weight.shape[0]
    row, col = divmod(int(weight.abs().argmax()), weight.shape[1])
    radius = min(row, col, f - 1 - row, f - 1 - col)
    square = weight[row - radius : row + radius + 1, col - radius : col + radius + 1]
    images = [torch.rot90(image, k) for image in (square, square.T) for k in range(4)]
    kept = torch.zeros_like(weight)
    kept[row - radius : row + radius + 1, col - radius : col + radius + 1] = torch.stack(
        images
    ).mean(0)
    copy = ConvRBM(rbm.filter_size, rbm.stride, 0.0)
    copy.weight.data = kept
    return copy


def sign_of_field(rbm: ConvRBM) -> rg.Transform:
    """mu = sign(h), h the filter's block-spin field; h = 0 (measure zero) gets a random sign."""

    @torch.no_grad()
    def transform(spins: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        field = rbm.hidden_field(spins)
        coin = torch.randint(0, 2, field.shape, generator=generator) * 2.0 - 1
        return torch.where(field == 0, coin, torch.sign(field)).to(torch.float32)

    return transform


def soft_majority(strength: float) -> rg.Transform:
    rbm = ConvRBM(2, 2, 0.0)
    rbm.weight.data = torch.full((2, 2), float(strength))
    return rg.rbm(rbm)


def transformations(ckpt: str | None, names: list[str] | None) -> dict[str, rg.Transform]:
    found: dict[str, rg.Transform] = {}
    if ckpt is not None:
        rbm = load_rbm(ckpt)
        found["learned"] = rg.rbm(rbm)
        for factor in (2, 4):
            found[f"learned x {factor}"] = rg.rbm(scaled(rbm, factor))
        found["learned sign"] = sign_of_field(rbm)
        found["learned 3x3"] = rg.rbm(cut(rbm, 1))
        found["learned 5x5"] = rg.rbm(cut(rbm, 2))
        found["learned symmetrized"] = rg.rbm(symmetrized(rbm))
    found["majority"] = rg.majority(2)
    for strength in (0.5, 1.0, 2.0):
        found[f"soft majority {strength:g}"] = soft_majority(strength)
    found["decimation"] = rg.decimation(2)
    if names is not None:
        unknown = [n for n in names if n not in found]
        if unknown:
            raise SystemExit(f"--transforms: unknown {unknown}; choose from {list(found)}")
        found = {n: found[n] for n in names}
    return found


def figure(records: dict, path: Path) -> None:
    """y_h (all odd candidates) against y_t (N_c = 7) for every transformation, N_r = 1 and 2.

    The axes show the transformations with |y_t - 1| < 0.1; the others (decimation, very soft
    block spins) are listed in the title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_r = len(next(iter(records.values()))["y_t"])
    markers = "osD^v<>phX*P8"
    fig, axes = plt.subplots(1, n_r, figsize=(6.5 * n_r, 5), squeeze=False)
    for r, ax in enumerate(axes[0]):
        outside = []
        for index, (name, record) in enumerate(records.items()):
            y_t, e_t = record["y_t"][r][-1], record["y_t_err"][r][-1]
            y_h, e_h = record["y_h"][r][-1], record["y_h_err"][r][-1]
            if abs(y_t - 1) >= 0.1:
                outside.append(f"{name} ({y_t:.3f}, {y_h:.3f})")
                continue
            colour = "tab:blue" if name.startswith("learned") else "tab:red"
            ax.errorbar(
                y_t,
                y_h,
                xerr=e_t,
                yerr=e_h,
                color=colour,
                label=name,
                marker=markers[index % len(markers)],
                ls="none",
            )
        ax.axvline(1.0, color="k", lw=0.5)
        ax.axhline(15 / 8, color="k", lw=0.5)
        ax.set_xlabel("y_t (N_c = 7)")
        ax.set_ylabel("y_h (all odd candidates)")
        title = f"N_r = {r + 1} (exact: y_t = 1, y_h = 15/8)"
        if outside:
            title += "\nnot shown: " + "; ".join(outside)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", default=None, help="filter file of the learned transformation")
    parser.add_argument("--transforms", nargs="*", default=None, help="a subset, by name")
    parser.add_argument(
        "--flow", nargs="*", default=["learned", "majority"], help="couplings + odd flow for these"
    )
    parser.add_argument("--out", default="outputs/magnetic_exponent.json", help="JSON output")
    parser.add_argument("--figure", default=None, help="PNG of y_h against y_t")
    parser.add_argument("--from-json", default=None, help="only redraw --figure from this JSON")
    add_pass_arguments(parser, n_samples=100_000)
    args = parser.parse_args()
    if args.from_json is not None:
        if args.figure is None:
            parser.error("--from-json needs --figure")
        figure(json.loads(Path(args.from_json).read_text())["results"], Path(args.figure))
        return
    out = Path(args.out)
    if out.exists():
        parser.error(f"--out={out} exists; choose another path (earlier results are kept)")
    settings = settings_from(args)
    transforms = transformations(args.ckpt, args.transforms)
    n_levels = settings.n_rg_steps + 1
    mcrg = {name: MCRGAccumulator(n_levels, settings.n_blocks, SETS) for name in transforms}
    flows = {
        name: CouplingAccumulator(FLOW_SET, settings.n_rg_steps, settings.n_blocks, response=True)
        for name in args.flow
        if name in transforms
    }

    def consumers(name):
        feed = [mcrg[name].update]
        if name in flows:
            # Renormalized levels only; the perturbation is the level-0 magnetization.
            feed.append(
                lambda levels, blocks, acc=flows[name]: acc.update(
                    levels[1:], blocks, perturbation=magnetization(levels[0])
                )
            )
        return feed

    seconds = run_pass(settings, transforms, {name: consumers(name) for name in transforms})
    odd_names = [i.name for i in SETS["odd"]]
    records = {}
    print(
        f"\nL = {settings.L}, {settings.n_samples} configurations at K_c; exact y_t = 1, y_h = 1.875"
    )
    head = "| transformation | " + " | ".join(
        f"{e} N_r={r}"
        for e in ("y_t (N_c=7)", "y_h (N_c=1)", "y_h (N_c=9)")
        for r in range(1, n_levels)
    )
    print(head + " |\n|---|" + "---:|" * (3 * (n_levels - 1)))
    for name, acc in mcrg.items():
        y_t, err_t = acc.exponents("even", 2.0)
        y_h, err_h, _ = acc.ordered_exponents("odd", odd_names, 2.0)
        records[name] = {
            "y_t": y_t.tolist(),
            "y_t_err": err_t.tolist(),
            "y_h": y_h.tolist(),
            "y_h_err": err_h.tolist(),
            "odd_set": odd_names,
            "even_set": [i.name for i in EVEN],
        }
        cells = [format_value(y_t[r, -1], err_t[r, -1]) for r in range(n_levels - 1)]
        cells += [format_value(y_h[r, 0], err_h[r, 0]) for r in range(n_levels - 1)]
        cells += [format_value(y_h[r, -1], err_h[r, -1]) for r in range(n_levels - 1)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, acc in flows.items():
        result = acc.result()
        mag = result.names.index("magnetization")
        response = np.concatenate([np.eye(len(FLOW_SET))[mag][None], result.response])
        errors = np.concatenate([np.zeros((1, len(FLOW_SET))), result.response_errors])
        couplings = result.couplings
        # y_h from the flow: log2 of the growth of the field coupling per step, error from the
        # jackknife of the two levels treated as independent (an upper bound: they are correlated).
        ratio_y = [
            math.log2(ratio) if (ratio := response[n + 1, mag] / response[n, mag]) > 0 else math.nan
            for n in range(n_levels - 1)
        ]
        records[name]["flow"] = {
            "names": result.names,
            "couplings_levels_1_to_Nr": couplings.tolist(),
            "couplings_err": result.errors.tolist(),
            "dK_dh": response.tolist(),
            "dK_dh_err": errors.tolist(),
            "y_h_from_field_growth": ratio_y,
        }
        print(f"\n{name}: couplings of levels 1..{n_levels - 1} ({', '.join(result.names)})")
        for level, (values, errs) in enumerate(zip(couplings, result.errors, strict=True)):
            print(
                f"  n={level + 1}: "
                + "  ".join(format_value(v, e) for v, e in zip(values, errs, strict=True))
            )
        print(f"{name}: dK^(n)/dh for a field h M at level 0")
        for level, (values, errs) in enumerate(zip(response, errors, strict=True)):
            print(
                f"  n={level}: "
                + "  ".join(
                    format_value(v, e) if e > 0 else f"{v:.4f}"
                    for v, e in zip(values, errs, strict=True)
                )
            )
        print(f"{name}: log2(dK_mag^(n+1)/dK_mag^(n)) = " + ", ".join(f"{y:.4f}" for y in ratio_y))
        # The same response for shorter truncations of the same histograms.
        records[name]["flow"]["truncations"] = {}
        for names in FLOW_TRUNCATIONS:
            short = acc.result(names)
            column = names.index("magnetization")
            records[name]["flow"]["truncations"][", ".join(names)] = {
                "dK_dh": short.response.tolist(),
                "dK_dh_err": short.response_errors.tolist(),
            }
            print(
                f"  truncated to {', '.join(names)}: dK_mag^(n)/dh, n = 1..: "
                + ", ".join(
                    format_value(v, e)
                    for v, e in zip(
                        short.response[:, column], short.response_errors[:, column], strict=True
                    )
                )
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "command": " ".join(sys.argv),
        "settings": vars(settings),
        "ckpt": args.ckpt,
        "seconds": seconds,
        "results": records,
    }
    with open(out, "x") as file:
        json.dump(json_safe(record), file, indent=1)
    if args.figure is not None:
        figure(records, Path(args.figure))
    print(f"\nwritten: {out} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
