"""The progress display of rbmrg's long loops (sampling, MCRG): description, bar, n/total, ETA."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def progress_display(unit: str = "", enabled: bool = True) -> Progress:
    """A ``rich`` display: description, bar, n/total[, unit], elapsed, ETA; silent when disabled."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    columns += [TextColumn(unit)] if unit else []
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, disable=not enabled)


@contextlib.contextmanager
def progress_bar(
    total: int, description: str, enabled: bool = True
) -> Iterator[Callable[[int], None]]:
    """One bar with rate and ETA; yields ``update(k)``, k = items done so far.

    Pass ``update`` as the ``progress`` argument of :func:`rbmrg.lattice.sampling.draw_samples` or
    :func:`rbmrg.lattice.sampling.iterate_samples`. With ``enabled=False`` it yields a no-op.
    """
    if not enabled:
        yield lambda done: None
        return
    with progress_display() as bar:
        task = bar.add_task(description, total=total)
        yield lambda done: bar.update(task, completed=done)
