"""Cost of the renormalized-coupling histograms next to MCRG's own sums, per configuration.

    OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/couplings.py

Critical 32 x 32 configurations (Wolff), majority rule, N_r = 2 (levels 32, 16, 8), batches of 1000
as evaluate.py feeds them. Times ``CouplingAccumulator.update`` for the 8 even candidates and for
the 7 of the default set, and ``MCRGAccumulator.update`` for the 14 default interactions, in CPU
seconds of this process (so a busy machine inflates them less than wall time), after two batches
of warm-up; and the Newton solve with jackknife. Also one batch of 1000 random +-1 configurations
(many more distinct environments) for the 7 of the default set, counted by the compiled kernel and
by the torch path (``random_batch_ms``, ``random_batch_torch_ms``: CPU ms a batch, the median of
four). Prints the figures and appends a JSON line to benchmarks/results/couplings.jsonl.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from common import cpu_model

from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.sampling import draw_samples
from rbmrg.rg.couplings import CouplingAccumulator
from rbmrg.rg.interactions import EVEN, EVEN_CANDIDATES
from rbmrg.rg.mcrg import MCRGAccumulator, chain_blocks
from rbmrg.rg.transforms import iterate, majority

N_BATCHES, WARM, BATCH = 6, 2, 1000


def cpu_ms_per_configuration(update, batches) -> float:
    for levels in batches[:WARM]:
        update(levels)
    start = time.process_time()
    for levels in batches[WARM:]:
        update(levels)
    return (time.process_time() - start) / ((len(batches) - WARM) * BATCH) * 1e3


def main() -> None:
    spins = draw_samples(
        IsingModel(L=32),
        N_BATCHES * BATCH,
        algorithm="wolff",
        n_chains=BATCH,
        n_thermalize=200,
        n_between=4,
        seed=1,
    ).spins
    blocks = chain_blocks(BATCH, 20)
    generator = torch.Generator().manual_seed(0)
    batches = [
        iterate(spins[i : i + BATCH].float(), [majority(2)], 2, generator)
        for i in range(0, len(spins), BATCH)
    ]
    record = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "L": 32,
        "levels": [32, 16, 8],
        "unit": "CPU ms per configuration (all levels)",
    }
    for label, interactions in (
        ("couplings_8_even", tuple(EVEN_CANDIDATES.values())),
        ("couplings_7_span", EVEN),
    ):
        acc = CouplingAccumulator(interactions, 3, 20)
        record[label] = cpu_ms_per_configuration(lambda lv, a=acc: a.update(lv, blocks), batches)
        start = time.process_time()
        result = acc.result()
        record[f"{label}_solve_s"] = time.process_time() - start
        record[f"{label}_environments"] = result.n_environments
    noise = torch.Generator().manual_seed(2)
    random_batches = [
        iterate(
            torch.randint(0, 2, (BATCH, 32, 32), generator=noise) * 2.0 - 1, [majority(2)], 2, noise
        )
        for _ in range(5)
    ]
    for label, compiled in (("random_batch_ms", True), ("random_batch_torch_ms", False)):
        acc = CouplingAccumulator(EVEN, 3, 20)
        acc._compiled = compiled  # False: the torch path, as on other devices
        acc.update(random_batches[0], blocks)
        times = []
        for levels in random_batches[1:]:
            start = time.process_time()
            acc.update(levels, blocks)
            times.append((time.process_time() - start) * 1e3)
        record[label] = float(np.median(times))
    mcrg = MCRGAccumulator(3, 20)
    record["mcrg_14_interactions"] = cpu_ms_per_configuration(
        lambda lv: mcrg.update(lv, blocks), batches
    )
    for key, value in record.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    out = Path(__file__).resolve().parent / "results" / "couplings.jsonl"
    with open(out, "a") as file:
        file.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
