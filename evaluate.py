"""Table 1 of Chung & Kao by MCRG, from a learned filter or a fixed RG transformation (Hydra entry point).

    python evaluate.py ckpt_path=outputs/<date>/<time>/checkpoints/last.ckpt
    python evaluate.py transform=majority mcrg.n_samples=100000

Every setting is checked before any sampling (rbmrg.evaluation.make_plan). Output, in the Hydra run
directory only: mcrg.json, mcrg.csv, table1.md. Returns |y_t(N_r=1, N_c=7) - y_t exact| to a sweeper.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from rbmrg.evaluation import evaluate


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float:
    record = evaluate(cfg, Path(HydraConfig.get().runtime.output_dir))
    value = record["y_t"][0][-1]
    return float("nan") if value is None else abs(value - record["exact"]["y_t"])


if __name__ == "__main__":
    main()
