"""Train the RG weight factor of Chung & Kao by CD-k and follow y_t by MCRG (Hydra entry point).

    python train.py                                   # the paper's setup (conf/train.yaml)
    python train.py experiment=smoke                  # end to end in under a minute
    python train.py -m model.filter_size=4,8 schedule=constant,sqrt_decay   # a sweep
    python train.py hydra.run.dir=D ckpt_path=D/checkpoints/last.ckpt    # resume run D in place

The work is :func:`rbmrg.training.run.train`; this wrapper returns to a sweeper the quantity to
minimise, |optimized_metric - optimized_target| (by default |y_t(N_r=1, N_c=7) - 1|). docs/training.md.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

# Importing rbmrg.training.run registers the ${rbmrg.*} resolvers of conf/train.yaml's hydra section.
from rbmrg.training.run import get_metric_value, train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metric_dict, _ = train(cfg)
    return get_metric_value(metric_dict, cfg.get("optimized_metric"), cfg.get("optimized_target"))


if __name__ == "__main__":
    main()
