"""Every run gets a directory of its own, claimed atomically before anything is written into it.

Hydra names a run's directory after the clock (``outputs/<date>/<time>``), so two runs started in the
same second used to share it and overwrite each other; a rerun into a named directory rewrote the
earlier run's ``.hydra/`` before anything could refuse. Here a directory is *claimed* by creating the
marker file ``.rbmrg-run`` in it with ``O_CREAT | O_EXCL`` (of several processes racing for it exactly
one succeeds) and holding an exclusive ``flock`` on the marker while the run writes there. The marker
stays when the run ends: one JSON line per start (host, pid, time, command line) says whose directory it
is. A directory that holds a marker, or anything else, is never given to a new run.

Three ways in, all in this module:

* ``${rbmrg.new_dir:BASE}``, the default ``hydra.run.dir`` and ``hydra.sweep.dir``: the first of BASE,
  BASE-1, BASE-2, ... that ``os.mkdir`` creates. OmegaConf caches the value per config and Hydra copies
  that cache into every job's config (also in joblib and submitit workers), so all resolutions within
  one invocation give the same directory.
* :class:`ClaimOutputDir`, a Hydra callback whose argument ``${rbmrg.claim_output_dir:RESUME_FROM}`` is
  resolved when Hydra builds its callbacks, i.e. before it writes ``.hydra/``, the log or (multirun)
  ``multirun.yaml``. It claims the directory Hydra is about to use, including one the user named
  (``hydra.run.dir=outputs/paper``), and raises an error naming the setting if another run holds it,
  unless this is a resume of that run: RESUME_FROM (the checkpoint) lies inside it and no live process
  holds its lock.
* :func:`hold_output_dir`, the first call of a task (train, evaluate): takes over the claim made for it
  by the callback, or claims a sweep job's directory (inside the sweep's own claimed directory).

:class:`RegisterResolvers`, listed first under ``hydra.callbacks``, imports this module before Hydra
resolves any of the above, so ``conf/train.yaml`` and ``conf/evaluate.yaml`` work whatever their entry
point imports.

``flock`` locks are released by the kernel when a process dies, also by ``kill -9``, so a killed run can
be resumed at once; on NFS they work where the server supports locks (NFSv4).

The extra processes of one data-parallel run (``trainer=ddp``: Lightning restarts ``train.py`` with
``LOCAL_RANK=1, 2, ...`` and rank 0's ``hydra.run.dir``; ``srun`` and ``torchrun`` set ``SLURM_PROCID``
or ``RANK``) claim nothing: they work in rank 0's directory, which rank 0 holds.
"""

from __future__ import annotations

import fcntl
import functools
import inspect
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

MARKER = ".rbmrg-run"
#: Files Hydra writes into a job's directory before the task starts (a sweep job's own config and log).
HYDRA_JOB_FILES = (".hydra",)


class RunDirError(FileExistsError):
    """The directory holds another run, or another process is writing to it."""


@dataclass
class Claim:
    """A directory this process holds: the open, locked marker and what the claim was for."""

    path: Path
    fd: int | None  # None: a data-parallel worker's share of rank 0's claim (no lock of its own)
    resumed: bool
    taken: bool = False  # handed to a task by hold_output_dir
    config_subdir: str | None = None  # where Hydra writes this start's config (see below)


_claims: dict[str, Claim] = {}
#: BASE -> the directory claim_new claimed for it, while held: a config copy without OmegaConf's cache
#: (e.g. HydraConfig's masked copy) that resolves ${rbmrg.new_dir:BASE} again gets the same directory.
_new_dirs: dict[str, str] = {}


def _key(directory: str | os.PathLike) -> str:
    return os.path.realpath(os.path.abspath(directory))


def _lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _note(fd: int, event: str) -> None:
    """Append one JSON line about this start to the marker."""
    line = {
        "event": event,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }
    os.lseek(fd, 0, os.SEEK_END)
    os.write(fd, (json.dumps(line) + "\n").encode())


def describe(directory: str | os.PathLike) -> str:
    """Who started the run in ``directory`` (from its marker), for error messages."""
    try:
        first = (Path(directory) / MARKER).read_text().splitlines()[0]
        info = json.loads(first)
        return f"a run started {info['time']} by pid {info['pid']} on {info['host']}"
    except (OSError, IndexError, ValueError, KeyError):
        entries = sorted(os.listdir(directory))[:5] if os.path.isdir(directory) else []
        return f"files of another run ({', '.join(entries)}{', ...' if len(entries) == 5 else ''})"


def is_inside(path: str | os.PathLike | None, directory: str | os.PathLike) -> bool:
    """Whether ``path`` (e.g. a checkpoint) lies inside ``directory`` (symlinks resolved)."""
    if not path:
        return False
    return _key(path).startswith(_key(directory) + os.sep)


def is_parallel_worker() -> bool:
    """Whether this process is a rank > 0 of a data-parallel launch (see the module docstring)."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "0")
        if value.isdigit() and int(value) > 0:
            return True
    return False


def _register(path: Path, fd: int | None, resumed: bool) -> Claim:
    claim = Claim(path=Path(_key(path)), fd=fd, resumed=resumed)
    _claims[_key(path)] = claim
    return claim


def claim_new(base: str) -> str:
    """Create and claim the first free directory of BASE, BASE-1, BASE-2, ...; return its name.

    ``os.mkdir`` is atomic: of several processes that race for one name, one creates it and the others
    move on to the next suffix. Parents are created as needed.
    """
    base = str(base).rstrip("/") or "."
    earlier = _new_dirs.get(base)
    if earlier is not None and _key(earlier) in _claims:
        return earlier
    if is_parallel_worker():  # rank 0 claims; its hydra.run.dir normally reaches us by override
        Path(base).mkdir(parents=True, exist_ok=True)
        return base
    for n in range(100_000):
        candidate = Path(base if n == 0 else f"{base}-{n}")
        candidate.parent.mkdir(parents=True, exist_ok=True)
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        fd = os.open(candidate / MARKER, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        _lock(fd)  # nobody else can hold it: the directory did not exist a moment ago
        _note(fd, "start")
        _register(candidate, fd, resumed=False)
        _new_dirs[base] = str(candidate)
        return str(candidate)
    raise RunDirError(f"{base}: no free name among {base}-1 ... {base}-99999")


def claim(
    directory: str | os.PathLike,
    setting: str,
    resume_from: str | os.PathLike | None = None,
    hydra_files_ok: bool = False,
) -> Claim:
    """Claim ``directory`` for this process, or raise :class:`RunDirError` naming ``setting``.

    A directory that does not exist, or is empty (``hydra_files_ok``: holds only the ``.hydra/`` and
    log Hydra wrote for this job), becomes this run's. One that holds another run is refused, unless
    ``resume_from`` (the checkpoint a run resumes from) lies inside it and no live process holds its
    lock: then this process takes the lock and the run continues there.
    """
    key = _key(directory)
    held = _claims.get(key)
    if held is not None and not held.taken:
        return held  # claimed by ${rbmrg.new_dir:...} or the callback earlier in this invocation
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    if is_parallel_worker():  # rank 0 of this run holds the directory
        return _register(path, None, resumed=is_inside(resume_from, path))
    marker = path / MARKER
    try:
        fd = os.open(marker, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        fd = None
    if fd is not None:
        others = [
            name
            for name in os.listdir(path)
            if name != MARKER
            and not (hydra_files_ok and (name in HYDRA_JOB_FILES or name.endswith(".log")))
        ]
        if not others:
            _lock(fd)
            _note(fd, "start")
            return _register(path, fd, resumed=False)
        # Files without a marker: a run from before markers existed, or the user's own files.
        os.close(fd)
        marker.unlink()
    if not is_inside(resume_from, path):
        resume = (
            f"; to resume that run in place, add ckpt_path={path}/checkpoints/last.ckpt"
            if (path / "checkpoints").is_dir()
            else ""
        )
        raise RunDirError(
            f"{setting}={directory} already holds {describe(path)}, which is left as it is: "
            f"choose another directory, or leave {setting} at its default (a new one){resume}"
        )
    fd = os.open(marker, os.O_RDWR | os.O_CREAT, 0o644)
    if not _lock(fd):
        os.close(fd)
        raise RunDirError(
            f"{setting}={directory}: another process is still writing to it ({describe(path)}); "
            "wait for it to end, or kill it, before resuming that run in place"
        )
    _note(fd, "resume")
    return _register(path, fd, resumed=True)


def hold_output_dir(
    directory: str | os.PathLike,
    resume_from: str | os.PathLike | None = None,
    setting: str = "hydra.run.dir",
) -> Claim:
    """Hold ``directory`` for the task about to write into it (call before any work).

    Takes over the claim :class:`ClaimOutputDir` made for this run, or claims the directory now
    (a sweep job's directory, or a task called from Python); raises :class:`RunDirError` naming
    ``setting`` if another run holds it. Give the claim back with :func:`release` when the task ends.
    """
    held = _claims.get(_key(directory))
    if held is not None and not held.taken:
        held.taken = True
        return held
    taken = claim(directory, setting, resume_from, hydra_files_ok=True)
    taken.taken = True
    return taken


def release(claim_: Claim) -> None:
    """Give up the lock on a claimed directory (the marker stays: the directory remains taken)."""
    if _claims.get(str(claim_.path)) is claim_:
        del _claims[str(claim_.path)]
    if claim_.fd is not None:
        os.close(claim_.fd)


def is_resumed(directory: str | os.PathLike) -> bool:
    """Whether this process holds ``directory`` to resume the run in it."""
    held = _claims.get(_key(directory))
    return held is not None and held.resumed


class RegisterResolvers(Callback):
    """Hydra callback that only imports this module, registering its ``${rbmrg.*}`` resolvers.

    Listed first under ``hydra.callbacks``, it makes a config self-sufficient: Hydra imports a
    callback's target before it resolves the next callback's arguments or ``hydra.run.dir``, so the
    entry point need not import :mod:`rbmrg.runs` itself.
    """

    def __init__(self) -> None:
        register_resolvers()


class ClaimOutputDir(Callback):
    """Hydra callback: its argument, resolved when Hydra builds callbacks, claims the output directory.

    Use it as ``hydra.callbacks.claim_output_dir`` with
    ``directory: ${rbmrg.claim_output_dir:RESUME_FROM}`` (``null`` where the task never resumes).
    """

    def __init__(self, directory: str):
        self.directory = directory


def _resolve_claim_output_dir(resume_from: str | None, *, _root_) -> str:
    hydra_cfg = _root_.hydra
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # A sweep claims its whole directory; its jobs are never resumed in place as a sweep.
        return str(claim(hydra_cfg.sweep.dir, "hydra.sweep.dir").path)
    return str(claim(hydra_cfg.run.dir, "hydra.run.dir", resume_from).path)


def _resolve_config_subdir(*, _root_) -> str:
    """``.hydra`` for a new run; ``.hydra/resume-N`` for the N-th resume, so no config is overwritten."""
    output_dir = Path(str(_root_.hydra.runtime.output_dir))
    held = _claims.get(_key(output_dir))
    if held is None or not held.resumed:
        return ".hydra"
    if held.config_subdir is None:  # Hydra asks twice; answer the same
        n = 1
        while (output_dir / ".hydra" / f"resume-{n}").exists():
            n += 1
        held.config_subdir = f".hydra/resume-{n}"
    return held.config_subdir


def register_resolvers() -> None:
    """Register ``rbmrg.new_dir`` (cached per config), ``rbmrg.claim_output_dir``, ``rbmrg.config_subdir``."""
    register = OmegaConf.register_new_resolver  # OmegaConf 2.1 - 2.3
    if "use_cache" in inspect.signature(OmegaConf.register_resolver).parameters:  # 2.4: renamed
        register = functools.partial(OmegaConf.register_resolver, annotation_validation="off")
    for name, function, use_cache in (
        ("rbmrg.new_dir", claim_new, True),
        ("rbmrg.claim_output_dir", _resolve_claim_output_dir, False),
        ("rbmrg.config_subdir", _resolve_config_subdir, False),
    ):
        if not OmegaConf.has_resolver(name):
            register(name, function, use_cache=use_cache)


register_resolvers()
