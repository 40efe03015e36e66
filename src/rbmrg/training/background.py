"""Measurements that run beside training: one worker thread, snapshots in, results out in order.

:class:`rbmrg.training.callbacks.MCRGCallback` hands every epoch's MCRG to a :class:`Background`:
the filter is copied (a snapshot, so training may go on changing it) and measured by the worker
thread while the main thread trains; the main thread collects the results in the order they were
submitted and records them (history, logs, files) itself, so only the measurement runs on the
worker. What keeps the two from slowing each other:

* The CD kernel (numba) releases the GIL, and so do torch's operators, so the threads run at once.
* On the CPU the cores are shared out: training gets one thread (the numba CD kernel's measured
  setting), the worker's torch operators the remaining cores (``torch.set_num_threads`` in each
  thread; OpenMP keeps a thread count per thread). With two cores: one core trains, the other
  measures. The main thread's count is restored when the fit ends.
* On CUDA the worker queues its kernels on a stream of its own, after the snapshot was taken on the
  main stream.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import torch


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def resolve_background(setting: bool | str, device: torch.device, world_size: int) -> bool:
    """``mcrg.background``: true, false, or ``auto`` = true on one process training on a GPU.

    Not on the CPU by default: with the numba backend an epoch of the paper's training (~0.3 s)
    is far shorter than its MCRG, so splitting two cores costs the MCRG its second thread for
    almost no overlap (measured: the paper run took longer beside than in line, docs/training.md).
    """
    if setting == "auto":
        return world_size == 1 and device.type == "cuda"
    if isinstance(setting, bool):
        return setting
    raise ValueError(f"mcrg.background={setting!r}: expected true, false or auto")


class Pending(NamedTuple):
    """A submitted measurement: where in training its snapshot was taken, and its future."""

    where: dict[str, Any]
    future: Future


class Background:
    """One worker thread running ``measure(*args)`` calls in submission order (see module doc)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.pending: deque[Pending] = deque()
        self._restore_threads: int | None = None
        self._worker_threads = max(1, available_cores() - 1)
        if device.type == "cpu":
            self._restore_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="mcrg", initializer=self._init_worker
        )

    def _init_worker(self) -> None:
        if self.device.type == "cpu":
            torch.set_num_threads(self._worker_threads)

    def submit(self, where: dict[str, Any], measure: Callable[..., Any], *args: Any) -> None:
        """Measure in the worker; ``where`` (epoch, step, ...) comes back with the result."""
        stream = None
        if self.device.type == "cuda":
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))  # the snapshot is taken
        self.pending.append(Pending(where, self._executor.submit(self._run, stream, measure, args)))

    @staticmethod
    def _run(stream: Any, measure: Callable[..., Any], args: tuple) -> Any:
        if stream is None:
            return measure(*args)
        with torch.cuda.stream(stream):
            result = measure(*args)
        stream.synchronize()
        return result

    def finished(self, keep: int = 0) -> list[tuple[dict[str, Any], Any]]:
        """The results of all but the newest ``keep`` submissions, oldest first, waiting for them
        (a measurement that failed raises its exception here)."""
        done = []
        while len(self.pending) > keep:
            where, future = self.pending.popleft()
            done.append((where, future.result()))
        return done

    def close(self) -> None:
        """Stop the worker (measurements not started are dropped) and give training its threads
        back."""
        for pending in self.pending:
            pending.future.cancel()
        self._executor.shutdown(wait=True)
        if self._restore_threads is not None:
            torch.set_num_threads(self._restore_threads)
            self._restore_threads = None
