"""On-disk cache of the configurations evaluate.py draws, so that a second evaluation with the same
sampling settings (another transformation, another filter) reads them instead of sampling them.

The stream of an evaluation is fully determined by its sampling settings (model L, K, dim; the
resolved algorithm, chains, thermalization, spacing, seed and device; the number of samples), so
one file holds it, named ``sweeps_L{L}_{n_samples}_{hash}.bits`` by a hash of those settings and
:data:`SWEEP_FORMAT` (:meth:`rbmrg.training.cache.SampleCache.path`). The convention:

* the file is a fixed :data:`HEADER_BYTES` header, :data:`MAGIC` followed by a JSON object padded
  with spaces (format, settings, the shape ``(n_chains, L, ..., L)`` of one sweep, the number of
  sweeps, the bytes per sweep and the BLAKE2b checksum of the payload), then the payload: every
  sweep in stream order, each chain's spins bit-packed (``np.packbits`` of ``spins > 0``, one bit
  a site, L^d/8 bytes a configuration rounded up to whole bytes). Nothing in it is executed or
  unpickled;
* it is read in two streamed passes over one open file: the first checks the size and hashes the
  payload in chunks, the second yields the sweeps, so a damaged file is found before any
  configuration is used, and memory does not grow with the number of samples. The file stays open
  between the passes, so a file that another run renames into place meanwhile is not mixed in;
* a file whose header, settings, size or checksum do not match is reported with a RuntimeWarning
  naming it and ignored: the run samples and rewrites it;
* it is written while sampling, to a temporary file renamed into place (after an fsync) only when
  the whole stream is written (:class:`rbmrg.training.cache.AtomicFile`): an interrupted run
  leaves no file, never a partial one.

The sweeps read back are float32 +1/-1 on the evaluation's device, as the samplers hand them over
(:func:`rbmrg.lattice.sampling.iterate_samples`), so the results are bit-identical either way.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

import numpy as np
import torch

from rbmrg.training.cache import AtomicFile, SampleCache

#: Bump when the file layout or a sampler's stream for given settings changes.
SWEEP_FORMAT = 1
#: The first bytes of every file.
MAGIC = b"RBMRG sweeps\n"
#: Fixed header size: the checksum is written into it once the payload is complete.
HEADER_BYTES = 4096
#: Bytes hashed per read in the verifying pass.
CHUNK_BYTES = 1 << 23


def pack(spins: torch.Tensor) -> bytes:
    """One sweep ``(n_chains, L, ..., L)`` of +1/-1 as bytes: each chain's sites bit-packed."""
    up = spins.reshape(spins.shape[0], -1).gt(0).cpu().numpy()
    return np.packbits(up, axis=1).tobytes()


def unpack(data: bytes, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The float32 +1/-1 sweep of ``shape`` on ``device`` that :func:`pack` turned into ``data``."""
    sites = int(np.prod(shape[1:]))
    rows = np.frombuffer(data, dtype=np.uint8).reshape(shape[0], -1)
    bits = torch.from_numpy(np.unpackbits(rows, axis=1, count=sites)).to(device)
    return bits.reshape(shape).to(torch.float32).mul_(2).sub_(1)


class SweepCache:
    """The cached stream of one evaluation's sampling ``settings`` in ``directory``.

    ``settings`` must hold ``L`` and ``n_samples`` (they name the file) and everything else that
    determines the stream; ``sweep_shape`` is ``(n_chains, L, ..., L)`` and ``n_sweeps`` the number
    of sweeps the stream yields. ``setting`` is the configuration key that chose the directory.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        settings: dict[str, Any],
        sweep_shape: tuple[int, ...],
        n_sweeps: int,
        setting: str = "data.data_dir",
    ) -> None:
        self.files = SampleCache(directory, setting)
        self.sweep_shape = tuple(sweep_shape)
        self.n_sweeps = n_sweeps
        self.bytes_per_sweep = sweep_shape[0] * -(-int(np.prod(sweep_shape[1:])) // 8)
        self.header = {
            "format": SWEEP_FORMAT,
            "settings": settings,
            "sweep_shape": list(self.sweep_shape),
            "n_sweeps": n_sweeps,
            "bytes_per_sweep": self.bytes_per_sweep,
        }
        stem = f"sweeps_L{settings['L']}_{settings['n_samples']}"
        self.path = self.files.path(self.header, stem, suffix=".bits")

    @property
    def file_bytes(self) -> int:
        return HEADER_BYTES + self.n_sweeps * self.bytes_per_sweep

    def check_writable(self) -> None:
        """ValueError naming the setting unless the directory can take the file (creates nothing)."""
        self.files.check_writable()

    def open(self) -> SweepReader | None:
        """The verified file, ready to stream; None if there is none or it fails a check (warned)."""
        try:
            stream = self.path.open("rb")
        except FileNotFoundError:
            return None
        except OSError as error:
            return self._ignore(f"unreadable ({error.strerror or error})")
        try:
            problem = self._verify(stream)
        except (OSError, ValueError, RecursionError) as error:  # JSON nested too deep
            problem = f"unreadable ({type(error).__name__}: {error})"
        if problem is None:
            return SweepReader(self, stream)
        stream.close()
        return self._ignore(problem)

    def _ignore(self, problem: str) -> None:
        warnings.warn(
            f"sample cache file {self.path} is corrupt or stale: {problem}; sampling the "
            "configurations again and rewriting it",
            RuntimeWarning,
            stacklevel=3,
        )

    def _verify(self, stream: BinaryIO) -> str | None:
        """None if the open file is this stream's, complete and intact; else what is wrong."""
        size = os.fstat(stream.fileno()).st_size
        head = stream.read(HEADER_BYTES)
        if not head.startswith(MAGIC):
            return "not a sweep cache file"
        text = head[len(MAGIC) :].rstrip(b" ")
        if len(head) < HEADER_BYTES or not text:
            return "truncated header"
        header = json.loads(text.decode())
        if not isinstance(header, dict):
            return "header is not a JSON object"
        checksum = header.pop("checksum", None)
        if header != self.header:
            return "written for other settings, shape or count"
        if size != self.file_bytes:
            return f"{size} bytes, expected {self.file_bytes}"
        hasher = hashlib.blake2b()
        buffer = bytearray(CHUNK_BYTES)
        view = memoryview(buffer)
        while count := stream.readinto(buffer):
            hasher.update(view[:count])
        if checksum != hasher.hexdigest():
            return "checksum mismatch"
        stream.seek(HEADER_BYTES)
        return None

    def writer(self) -> SweepWriter:
        """A new temporary file that :meth:`SweepWriter.commit` renames onto :attr:`path`."""
        return SweepWriter(self)

    def _header_bytes(self, checksum: str) -> bytes:
        text = MAGIC + json.dumps({**self.header, "checksum": checksum}, sort_keys=True).encode()
        if len(text) > HEADER_BYTES:
            raise ValueError(f"sweep cache header of {len(text)} bytes > {HEADER_BYTES}")
        return text.ljust(HEADER_BYTES, b" ")


class SweepReader:
    """A verified cache file positioned at its payload; :meth:`sweeps` streams it once."""

    def __init__(self, cache: SweepCache, stream: BinaryIO) -> None:
        self.cache = cache
        self.stream = stream

    def sweeps(self, device: torch.device) -> Iterator[torch.Tensor]:
        """The float32 +1/-1 sweeps ``(n_chains, L, ..., L)`` on ``device``, one read per sweep."""
        cache = self.cache
        try:
            for _ in range(cache.n_sweeps):
                data = self.stream.read(cache.bytes_per_sweep)
                if len(data) != cache.bytes_per_sweep:  # verified: only a change in place does this
                    raise RuntimeError(f"sample cache file {cache.path} shrank while being read")
                yield unpack(data, cache.sweep_shape, device)
        finally:
            self.close()

    def close(self) -> None:
        self.stream.close()


class SweepWriter:
    """Writes a stream's sweeps to a temporary file; :meth:`commit` puts it in place when complete.

    A write that fails (a full disk, a directory removed meanwhile) costs only the file: it is
    reported with a RuntimeWarning, the temporary file is removed and the rest of the stream is not
    written, so the run that draws the configurations goes on.
    """

    def __init__(self, cache: SweepCache) -> None:
        self.cache = cache
        self.file: AtomicFile | None = None
        self.hasher = hashlib.blake2b()
        self.n_written = 0
        #: True once the complete file is in place.
        self.written = False
        self._attempt(self._create)

    def _create(self) -> None:
        self.file = AtomicFile(self.cache.path)
        self.file.stream.write(bytes(HEADER_BYTES))  # filled in by commit()

    def write(self, spins: torch.Tensor) -> None:
        """Append one sweep (``cache.sweep_shape``, +1/-1)."""
        if tuple(spins.shape) != self.cache.sweep_shape:
            raise ValueError(
                f"sweep of shape {tuple(spins.shape)}, expected {self.cache.sweep_shape}"
            )
        if self.file is not None:
            self._attempt(self._append, pack(spins))

    def _append(self, data: bytes) -> None:
        self.hasher.update(data)
        self.file.stream.write(data)
        self.n_written += 1

    def commit(self) -> bool:
        """Write the header and rename the file into place; returns :attr:`written`. Refused
        (ValueError, the file removed) unless every sweep of the stream was written."""
        if self.file is None:
            return self.written
        if self.n_written != self.cache.n_sweeps:
            self.discard()
            raise ValueError(f"{self.n_written} sweeps written, expected {self.cache.n_sweeps}")
        self._attempt(self._finish)
        return self.written

    def _finish(self) -> None:
        self.file.stream.seek(0)
        self.file.stream.write(self.cache._header_bytes(self.hasher.hexdigest()))
        self.file.commit()
        self.file, self.written = None, True

    def _attempt(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except OSError as error:
            self.discard()
            warnings.warn(
                f"sample cache file {self.cache.path} not written "
                f"({error.strerror or error}); the run goes on without it",
                RuntimeWarning,
                stacklevel=3,
            )

    def discard(self) -> None:
        """Remove the temporary file (nothing after :meth:`commit`; may be repeated)."""
        if self.file is not None:
            self.file.discard()
            self.file = None
