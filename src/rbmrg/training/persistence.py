"""What a training run leaves on disk, written so that a kill at any moment loses nothing done before.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file and renames it over the old
  one: ``last.ckpt`` is always a complete checkpoint, even after ``kill -9`` in the middle of a save.
* :class:`StepCheckpoint` refreshes ``last.ckpt`` every N updates, except at the last step of an
  epoch, where Lightning would resume as if the epoch's end (MCRG, the epoch checkpoint) had run.
* :class:`ResumableCSVLogger` is Lightning's CSV logger without its habit of deleting an existing
  ``metrics.csv``: it refuses another run's file, and a run resumed in place continues its own (the
  rows the resumed run logs again, those after the checkpoint, are replaced by the new ones).
* :func:`wandb_run_id` keeps a run's wandb id in ``<output_dir>/wandb_run_id``, so a run resumed in
  place continues the same wandb run (``resume="allow"``).
* :class:`FlushLoggersAtCheckpoint` flushes the loggers whenever a checkpoint is written, so what was
  logged before a checkpoint is on disk with it (TensorBoard otherwise buffers events for minutes).

``rbmrg.training.run.train`` wires these in; the TensorBoard logger gets ``purge_step`` on a resume in
place, which hides the events of the killed run after its last checkpoint.
"""

from __future__ import annotations

import csv
import os
import secrets
import string
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

WANDB_ID_FILE = "wandb_run_id"


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.partial-<pid>``, fsync, then ``os.replace`` onto the real name."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if "://" in str(path):  # a remote file system: no rename there
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
        super().save_checkpoint(checkpoint, partial, storage_options)
        with open(partial, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(partial, path)


class StepCheckpoint(pl.Callback):
    """Refresh ``<dirpath>/last.ckpt`` whenever the run passes a multiple of ``every_n_train_steps``
    updates, except at the last training step of an epoch.

    A training step makes several updates (``data.updates_per_step``), so the update count passes
    a multiple of N inside a step and the checkpoint is written at the end of that step: a killed run
    loses at most N + updates_per_step updates. Lightning (2.x) resumes a checkpoint written after
    the last step of an epoch as if that epoch had ended: a run killed during the epoch's end (MCRG
    takes seconds) would lose the epoch's MCRG and one whole epoch of updates. The epoch checkpoint
    follows a moment later in any case; a kill before it resumes from the previous step checkpoint
    and redoes the updates in between.

    Args:
        dirpath: the run's checkpoint directory.
        every_n_train_steps: N, in updates (optimizer steps), >= 1.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_train_steps: int = 500):
        super().__init__()
        if isinstance(every_n_train_steps, bool) or not (
            isinstance(every_n_train_steps, int) and every_n_train_steps >= 1
        ):
            raise ValueError(
                f"callbacks.step_checkpoint.every_n_train_steps={every_n_train_steps!r}: must be "
                "an integer >= 1"
            )
        self.dirpath = Path(dirpath)
        self.every_n_train_steps = every_n_train_steps
        self._steps_before = 0

    @staticmethod
    def _updates(trainer, pl_module) -> int:
        # RBMModule counts CD updates itself (several per training step); otherwise optimizer steps.
        return int(getattr(pl_module, "updates", trainer.global_step))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._steps_before = self._updates(trainer, pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 >= trainer.num_training_batches:
            return
        n = self.every_n_train_steps
        if self._updates(trainer, pl_module) // n > self._steps_before // n:
            trainer.save_checkpoint(self.dirpath / "last.ckpt", weights_only=False)


class FlushLoggersAtCheckpoint(pl.Callback):
    """Write every logger's buffered records to disk whenever a checkpoint is saved."""

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint):
        for logger in trainer.loggers:
            logger.save()


def _row_key(row: dict[str, Any]) -> tuple[int, int, frozenset[str]]:
    """(step, epoch, names of the metrics in it): what identifies a logged row across a resume."""
    names = frozenset(
        k for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None)
    )
    epoch = row.get("epoch")
    return int(float(row["step"])), -1 if epoch in ("", None) else int(float(epoch)), names


class ResumableCSVLogger(CSVLogger):
    """``<save_dir>/<name>/metrics.csv`` that is never deleted.

    Args:
        continue_run: the run is resumed in place: keep the earlier rows of ``metrics.csv``. Without
            it an existing ``metrics.csv`` (another run's) is an error, never overwritten.
        *args, **kwargs: as for :class:`pytorch_lightning.loggers.CSVLogger`.

    A resumed run logs again what the killed run logged after its last checkpoint (bit-identically,
    see docs/training.md). The earlier rows are kept up to the first row the resumed run logs, found
    by (step, epoch, metric names); that row and all later earlier rows are replaced by the new ones.
    Until then the earlier file waits as ``metrics.csv.before-resume`` (picked up again if this run is
    killed too).
    """

    def __init__(self, *args: Any, continue_run: bool = False, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.continue_run = continue_run
        self._earlier: tuple[list[str], list[dict[str, str]]] | None = None

    @property
    def metrics_path(self) -> Path:
        return Path(self.log_dir) / "metrics.csv"

    @property
    def _backup_path(self) -> Path:
        return self.metrics_path.with_name("metrics.csv.before-resume")

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is not None:
            return self._experiment
        path, backup = self.metrics_path, self._backup_path
        if path.exists() or backup.exists():
            if not self.continue_run:
                raise FileExistsError(
                    f"{path} holds the metrics of another run: a new run never overwrites them "
                    "(resume that run in place with ckpt_path=..., or choose another hydra.run.dir)"
                )
            if path.exists():
                os.replace(path, backup)  # the newer of the two, if an earlier resume was killed
            with backup.open(newline="") as handle:
                reader = csv.DictReader(handle)
                self._earlier = (list(reader.fieldnames or []), list(reader))
        with warnings.catch_warnings():
            # Lightning warns that it will delete metrics.csv: there is none left to delete.
            warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
            return super().experiment

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.experiment  # noqa: B018 - reads the earlier rows before the first new one
        if self._earlier is not None:
            first = {"step": 0 if step is None else step, **metrics}
            self._continue_earlier(_row_key({k: str(v) for k, v in first.items()}))
        super().log_metrics(metrics, step)

    def _continue_earlier(self, first_new: tuple[int, int, frozenset[str]]) -> None:
        fieldnames, rows = self._earlier
        keys = [_row_key(row) for row in rows]
        if first_new in keys:
            kept = rows[: keys.index(first_new)]
        else:  # the killed run died before logging it: keep everything logged before it
            kept = [row for row, key in zip(rows, keys, strict=True) if key[:2] < first_new[:2]]
        writer = self._experiment
        writer.metrics_keys = sorted(set(fieldnames))
        writer.metrics = [{k: v for k, v in row.items() if v != ""} for row in kept]
        writer.save()
        self._backup_path.unlink(missing_ok=True)
        self._earlier = None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._earlier is not None:  # nothing new was logged: the earlier file stays as it was
            os.replace(self._backup_path, self.metrics_path)
            self._earlier = None
        super().finalize(status)


def wandb_run_id(output_dir: str | os.PathLike, continue_run: bool) -> str:
    """The wandb run id of the run in ``output_dir``: read back on a resume in place, else new."""
    path = Path(output_dir) / WANDB_ID_FILE
    if continue_run and path.exists():
        return path.read_text().strip()
    if path.exists():
        raise FileExistsError(f"{path}: this directory belongs to wandb run {path.read_text()}")
    # wandb's own form of id: 8 characters of [a-z0-9].
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id
