"""Learning-rate schedules for training the RBM, one small object per law.

A schedule carries the initial learning rate ``lr`` (Adam is built with it) and turns an optimizer into
the Lightning scheduler dict with ``build(optimizer, steps_per_epoch)``. Time ``t`` counts optimizer
steps from 0; the step with index ``t`` runs with ``lr(t)``. Each Hydra file in ``conf/schedule/``
instantiates one of these, so a new law is a new class (or a torch scheduler via :class:`TorchSchedule`)
and a new yaml file, never an ``if`` in the training code.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def _check_lr(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name}={value!r}: the learning rate must be a positive number")
    return float(value)


class Schedule:
    """Base class: a learning rate ``lr`` and a multiplier ``factor(t, steps_per_epoch)`` of it."""

    lr: float

    def factor(self, step: int, steps_per_epoch: int) -> float:
        raise NotImplementedError

    def learning_rate(self, step: int, steps_per_epoch: int) -> float:
        """lr(t) in absolute units, for plots and tests."""
        return self.lr * self.factor(step, steps_per_epoch)

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> dict[str, Any]:
        """Lightning ``lr_scheduler`` dict, stepped after every optimizer step."""
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch={steps_per_epoch}: need at least one step an epoch")
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: self.factor(step, steps_per_epoch)
        )
        return {"scheduler": scheduler, "interval": "step", "frequency": 1}


class Constant(Schedule):
    """lr(t) = lr for all t."""

    def __init__(self, lr: float = 1e-3):
        self.lr = _check_lr("schedule.lr", lr)

    def factor(self, step: int, steps_per_epoch: int) -> float:
        return 1.0

    def __repr__(self) -> str:
        return f"Constant(lr={self.lr:g})"


class SqrtDecay(Schedule):
    """The paper's law: square-root decay from ``lr`` to ``lr_final`` at ``decay_epochs``, then flat.

    With t the optimizer step and T = decay_epochs * steps_per_epoch,

        lr(t) = lr / sqrt(1 + a t)   for t < T,    lr(t) = lr_final   for t >= T,
        a     = ((lr / lr_final)^2 - 1) / T,

    so lr(T) = lr_final exactly and the curve is continuous. Chung & Kao: lr = 1e-3, lr_final = 1e-4 at
    epoch 25 of 50 (Sec. 4).
    """

    def __init__(self, lr: float = 1e-3, lr_final: float = 1e-4, decay_epochs: float = 25):
        self.lr = _check_lr("schedule.lr", lr)
        self.lr_final = _check_lr("schedule.lr_final", lr_final)
        if not decay_epochs > 0:
            raise ValueError(f"schedule.decay_epochs={decay_epochs!r}: must be > 0")
        self.decay_epochs = float(decay_epochs)

    def factor(self, step: int, steps_per_epoch: int) -> float:
        decay_steps = self.decay_epochs * steps_per_epoch
        if step >= decay_steps:
            return self.lr_final / self.lr
        a = ((self.lr / self.lr_final) ** 2 - 1.0) / decay_steps
        return 1.0 / math.sqrt(1.0 + a * step)

    def __repr__(self) -> str:
        return (
            f"SqrtDecay(lr={self.lr:g}, lr_final={self.lr_final:g}, "
            f"decay_epochs={self.decay_epochs:g})"
        )


class SqrtInterpolation(SqrtDecay):
    """Another reading of the paper's "square root decay": lr falls from ``lr`` to ``lr_final`` as the
    square root of elapsed time, then stays flat. With T = decay_epochs * steps_per_epoch,

        lr(t) = lr - (lr - lr_final) sqrt(t / T)   for t < T,    lr(t) = lr_final   for t >= T.

    Over the decay it has 2.2 times the area of :class:`SqrtDecay` for 1e-3 -> 1e-4 (0.40 against
    0.18 lr T), i.e. it moves the filter further per epoch; docs/results.md compares the two.
    """

    def factor(self, step: int, steps_per_epoch: int) -> float:
        decay_steps = self.decay_epochs * steps_per_epoch
        if step >= decay_steps:
            return self.lr_final / self.lr
        return 1.0 - (1.0 - self.lr_final / self.lr) * math.sqrt(step / decay_steps)

    def __repr__(self) -> str:
        return (
            f"SqrtInterpolation(lr={self.lr:g}, lr_final={self.lr_final:g}, "
            f"decay_epochs={self.decay_epochs:g})"
        )


class TorchSchedule(Schedule):
    """Any ``torch.optim.lr_scheduler`` class, given as a partial (Hydra ``_partial_: true``).

    Args:
        lr: initial learning rate.
        scheduler: ``scheduler(optimizer) -> LRScheduler``, the remaining arguments already bound.
        interval: ``"step"`` or ``"epoch"``: when Lightning calls ``scheduler.step()``.
    """

    def __init__(
        self,
        lr: float,
        scheduler: Callable[[torch.optim.Optimizer], Any],
        interval: str = "epoch",
    ):
        self.lr = _check_lr("schedule.lr", lr)
        if interval not in ("step", "epoch"):
            raise ValueError(f"schedule.interval={interval!r}: must be 'step' or 'epoch'")
        self.scheduler = scheduler
        self.interval = interval

    def build(self, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> dict[str, Any]:
        return {"scheduler": self.scheduler(optimizer), "interval": self.interval, "frequency": 1}

    def __repr__(self) -> str:
        return (
            f"TorchSchedule(lr={self.lr:g}, scheduler={self.scheduler}, interval={self.interval})"
        )
