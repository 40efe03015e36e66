"""On-disk cache of Monte Carlo sample sets: one file per set, named by what determines it.

A set (:class:`~rbmrg.lattice.sampling.SampleSet`) is costly to draw and is the same every time its
settings are the same, so runs share it through a directory (``data.data_dir``). The convention:

* the file name carries a hash of the *settings* dictionary (model, sampler, counts, chains, sweeps,
  seed, sampling device, :data:`CACHE_FORMAT`), so different settings never meet in one file;
* the file is a ``torch.save`` dictionary of plain tensors and numbers, read back with
  ``torch.load(weights_only=True)`` (no code from the file runs);
* every stored field that is used (spins, energy, magnetization, chain count, spacing, the
  autocorrelation times and their errors, the settings) has its own BLAKE2 checksum, over its dtype,
  shape and bytes; a file whose settings, shapes, dtypes, spin values or any checksum do not match is
  reported with a RuntimeWarning and regenerated, never used;
* files are written atomically (:class:`AtomicFile`: a temporary file in the same directory, fsync,
  ``os.replace``), so a crash leaves the old file or none, and with the mode an ordinary new file
  gets (0666 minus the umask), so a group sharing the directory can read them;
* a directory that cannot be written is refused (ValueError naming ``data.data_dir``) when the cache
  is set up, before anything is sampled.

Nothing here imports Lightning; :class:`rbmrg.training.data.IsingDataModule` is the user, and
:mod:`rbmrg.sweep_cache` (evaluate.py's configurations) shares the directory check, the file
names and :class:`AtomicFile`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch

from rbmrg.lattice.sampling import SampleSet

#: Bump when the stored layout or the sampler's output for given settings changes. 2: a checksum
#: for every stored field (1 checksummed the spins only).
CACHE_FORMAT = 2

#: Stored fields of a SampleSet, each with its own checksum.
TENSOR_FIELDS = ("spins", "energy", "magnetization")
NUMBER_FIELDS = (
    "n_chains",
    "n_between",
    "tau_int_energy",
    "tau_int_energy_error",
    "tau_int_abs_magnetization",
    "tau_int_abs_magnetization_error",
)


def digest(value: Any) -> str:
    """BLAKE2 digest of a tensor (dtype, shape, bytes), a number or a string (type and repr)."""
    hasher = hashlib.blake2b(digest_size=16)
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous()
        hasher.update(f"tensor {array.dtype} {tuple(array.shape)}\n".encode())
        hasher.update(array.numpy().tobytes())
    elif value is None or isinstance(value, bool | int | float | str):
        hasher.update(f"{type(value).__name__} {value!r}".encode())
    else:
        raise TypeError(f"cannot checksum a {type(value).__name__}")
    return hasher.hexdigest()


class SampleCache:
    """The sample sets cached in ``directory`` (see the module docstring for the conventions).

    ``setting`` is the configuration key that chose the directory; errors name it.
    """

    def __init__(self, directory: str | os.PathLike, setting: str = "data.data_dir") -> None:
        self.directory = Path(directory)
        self.setting = setting

    def _refuse(self, why: str) -> ValueError:
        return ValueError(
            f"{self.setting}={str(self.directory)!r}: {why}; choose a writable directory "
            f"({self.setting}=... or $RBMRG_DATA_DIR), or null to keep the samples in memory"
        )

    def check_writable(self) -> None:
        """ValueError naming the setting unless cache files can be written in the directory.

        Called before anything is sampled, so that a cache which cannot take the result does not
        cost a sampling run first; it creates nothing. An existing directory is proved writable
        with a probe file (created exclusively, removed at once), which also catches read-only
        mounts and ACLs; a directory still to be created needs its nearest existing ancestor to
        be a directory that the user may write into (``save`` creates the rest).
        """
        existing = next(p for p in (self.directory, *self.directory.parents) if p.exists())
        if not existing.is_dir():
            where = "is a file" if existing == self.directory else f"lies under the file {existing}"
            raise self._refuse(f"{where}, not a directory")
        if existing != self.directory:
            if not os.access(existing, os.W_OK | os.X_OK):
                raise self._refuse(f"cannot be created (no write permission in {existing})")
            return
        probe = self.directory / f".rbmrg-write-test-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except OSError as error:
            raise self._refuse(f"cannot be written ({error.strerror or error})") from None
        os.unlink(probe)

    def path(self, settings: dict, stem: str, suffix: str = ".pt") -> Path:
        """The file of the set with ``settings``: ``<stem>_<hash of the settings><suffix>``."""
        text = json.dumps(settings, sort_keys=True)
        return self.directory / f"{stem}_{hashlib.sha256(text.encode()).hexdigest()[:20]}{suffix}"

    def load(self, path: Path, settings: dict, spin_shape: tuple[int, ...]) -> SampleSet | None:
        """The set stored at ``path`` if it exists and passes every check, else None (warned).

        ``settings`` must contain ``n_samples``, ``n_chains`` and ``n_between``; ``spin_shape`` is
        the shape of one configuration, ``(L, ..., L)``.
        """
        if not path.exists():
            return None
        try:
            stored = torch.load(path, map_location="cpu", weights_only=True)
            problem = validate(stored, settings, spin_shape)
        except Exception as error:  # truncated, not a torch file, or a refused object
            problem = f"unreadable ({type(error).__name__}: {str(error).splitlines()[0]})"
        if problem is not None:
            warnings.warn(
                f"cache file {path} is corrupt or stale: {problem}; regenerating it",
                RuntimeWarning,
                stacklevel=3,
            )
            return None
        return SampleSet(**{name: stored[name] for name in TENSOR_FIELDS + NUMBER_FIELDS})

    def save(self, path: Path, samples: SampleSet, settings: dict) -> None:
        """Write ``samples`` to ``path`` atomically, every field checksummed."""
        fields: dict[str, Any] = {
            name: getattr(samples, name).cpu().contiguous() for name in TENSOR_FIELDS
        }
        fields.update({name: getattr(samples, name) for name in NUMBER_FIELDS})
        fields["n_chains"], fields["n_between"] = int(samples.n_chains), int(samples.n_between)
        for name in NUMBER_FIELDS[2:]:
            fields[name] = float(fields[name])
        fields["settings"] = json.dumps(settings, sort_keys=True)
        payload = {**fields, "checksums": {name: digest(value) for name, value in fields.items()}}
        with AtomicFile(path) as file:
            torch.save(payload, file.stream)


class AtomicFile:
    """A new file that appears under ``path`` only when complete.

    It is written under a temporary name in the same directory (created with its parents) and
    renamed onto ``path`` by :meth:`commit` after an fsync, so a crash leaves the old file or none,
    never half a file under the final name; :meth:`discard` removes it. As a context manager it
    commits on success and discards on any exception. ``stream`` is the open binary file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.temporary: Path | None = path.with_name(
            f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        )
        # os.open with 0o666 lets the umask (and a default ACL) decide the mode, as for any new
        # file; mkstemp would force 0600.
        handle = os.open(self.temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self.stream: BinaryIO = os.fdopen(handle, "wb")

    def commit(self) -> None:
        """Flush, fsync and rename onto ``path`` (discarded if any of it fails)."""
        try:
            self.stream.flush()
            os.fsync(self.stream.fileno())
            self.stream.close()
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        self.temporary = None

    def discard(self) -> None:
        """Close and remove the temporary file (nothing after :meth:`commit`; may be repeated)."""
        if self.temporary is None:
            return
        with contextlib.suppress(OSError):
            self.stream.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temporary)
        self.temporary = None

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, kind: type[BaseException] | None, *rest: Any) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


def validate(stored: Any, settings: dict, spin_shape: tuple[int, ...]) -> str | None:
    """None if ``stored`` is a complete, intact set with ``settings``, else what is wrong with it."""
    if not isinstance(stored, dict):
        return "not a dictionary"
    fields = (*TENSOR_FIELDS, *NUMBER_FIELDS, "settings")
    if missing := {*fields, "checksums"} - set(stored):
        return f"missing {sorted(missing)}"
    if stored["settings"] != json.dumps(settings, sort_keys=True):
        return "written for other settings"
    checksums = stored["checksums"]
    if not isinstance(checksums, dict):
        return "no checksum table"
    for name in fields:
        try:
            intact = checksums.get(name) == digest(stored[name])
        except TypeError as error:
            return f"{name}: {error}"
        if not intact:
            return f"checksum mismatch in {name}"
    spins = stored["spins"]
    expected = (settings["n_samples"], *spin_shape)
    if not isinstance(spins, torch.Tensor) or tuple(spins.shape) != expected:
        return f"spins of shape {getattr(spins, 'shape', None)}, expected {expected}"
    if spins.dtype != torch.int8:
        return f"spins of dtype {spins.dtype}, expected torch.int8"
    if not bool((spins.abs() == 1).all()):
        return "spins other than +1/-1"
    for name in ("n_chains", "n_between"):
        if stored[name] != settings[name]:
            return f"{name}={stored[name]!r}, expected {settings[name]}"
    per_chain = settings["n_samples"] // settings["n_chains"]
    for name in ("energy", "magnetization"):
        value = stored[name]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != (
            per_chain,
            settings["n_chains"],
        ):
            return f"{name} of shape {tuple(getattr(value, 'shape', ()))}"
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            return f"{name} is not finite floating point"
    for name in NUMBER_FIELDS[2:]:
        if not isinstance(stored[name], float):
            return f"{name}={stored[name]!r} is not a float"
    return None
