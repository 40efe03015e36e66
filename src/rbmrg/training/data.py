"""Lightning data module: Ising configurations for training the RBM and for MCRG while training.

A thin layer over :func:`rbmrg.lattice.sampling.draw_samples`. It draws two independent sets of the same
model, from different seeds:

* the training set (Chung & Kao: 10^4 configurations of the 32x32 lattice at K_c), served in shuffled
  minibatches of 10;
* the held-out set (5 x 10^4 configurations) that the MCRG callback measures exponents on.

Both are cached on disk by :class:`rbmrg.training.cache.SampleCache`, one file per set, named by a
hash of everything that determines its content (model, algorithm, counts, chains, sweeps, seed,
sampling device type, format version), written atomically, every stored field checksummed and checked
on load; a file that fails any check is reported with a warning and regenerated, never used. A cache
directory that cannot be written is refused in ``__init__``.

Every setting is checked in ``__init__``, before any sampling, and a bad one raises a ValueError that
names it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch

from rbmrg import checks
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.samplers import DEFAULT_ALGORITHM, resolve_sampling
from rbmrg.lattice.sampling import SampleSet, draw_samples, thermalization_drift, validate_sampling
from rbmrg.progress import progress_bar
from rbmrg.rg.mcrg import MIN_BLOCKS
from rbmrg.training.cache import CACHE_FORMAT, SampleCache


class ShuffledBatches:
    """Minibatches of a tensor of configurations, reshuffled every epoch, on one device.

    The permutation of epoch ``e`` is drawn from a ``torch.Generator`` seeded with ``(seed, e)``, so
    it is the same on every rank and after a restart. Rank ``r`` of ``world_size`` takes every
    ``world_size``-th entry of it; the tail that does not fill a whole batch on every rank is dropped,
    so all ranks run the same number of steps.

    Minibatches are handed out in *chunks* of ``chunk`` consecutive ones, as one tensor
    ``(m, batch_size, L, ..., L)`` (m = ``chunk``, or fewer at the end of an epoch): the training
    module runs one CD update per minibatch of a chunk, so the framework's per-step cost is paid once
    per chunk. The sequence of minibatches does not depend on ``chunk``.

    With ``replicas=R > 1`` (R filters trained side by side, ``model.n_replicas``) every replica
    has its own permutation of the set each epoch: the R permutations of epoch ``e`` are R
    consecutive draws of that generator (replica 0's is the single run's), each split into the
    same number of minibatches as a single run, and a chunk is ``(m, R, batch_size, L, ..., L)``,
    minibatch i of every replica side by side.

    Resumable mid-epoch: ``state_dict()`` records the epoch and how many of its minibatches were
    handed out, and after ``load_state_dict()`` the next iteration continues that epoch's permutation
    where it stopped. (Lightning does not fetch ahead from an iterable that has a length, so a chunk
    handed out is the chunk being trained on.)
    """

    def __init__(
        self,
        spins: torch.Tensor,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        epoch_of: Callable[[], int] | None = None,
        chunk: int = 1,
        replicas: int = 1,
    ) -> None:
        self.spins = spins
        self.replicas = checks.integer("model.n_replicas", replicas, 1)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.chunk = chunk
        self._epoch_of = epoch_of
        self._epochs_started = 0
        self._epoch = 0
        self._served = 0  # minibatches handed out in the current epoch
        self._resume: dict[str, int] | None = None

    @property
    def minibatches(self) -> int:
        """Minibatches (CD updates) per epoch on this rank."""
        return (self.spins.shape[0] // self.world_size) // self.batch_size

    def __len__(self) -> int:
        return -(-self.minibatches // self.chunk)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "consumed": self._served}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "consumed": int(state["consumed"])}

    def __iter__(self) -> Iterator[torch.Tensor]:
        epoch = self._epoch_of() if self._epoch_of is not None else self._epochs_started
        self._epochs_started += 1
        skip = 0
        if self._resume is not None:
            if self._resume["epoch"] == epoch:
                skip = min(self._resume["consumed"], self.minibatches)
            self._resume = None
        self._epoch, self._served = epoch, skip
        return self._chunks(epoch, skip)

    def _chunks(self, epoch: int, skip: int) -> Iterator[torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        orders = [
            torch.randperm(self.spins.shape[0], generator=generator) for _ in range(self.replicas)
        ]
        total = self.minibatches
        per_rank = total * self.batch_size
        mine = torch.stack([order[self.rank :: self.world_size][:per_rank] for order in orders]).to(
            self.spins.device
        )
        lattice = self.spins.shape[1:]
        for first in range(skip, total, self.chunk):
            count = min(self.chunk, total - first)
            rows = mine[:, first * self.batch_size : (first + count) * self.batch_size]
            self._served += count
            if self.replicas == 1:
                yield self.spins[rows[0]].view(count, self.batch_size, *lattice)
            else:
                spins = self.spins[rows].view(self.replicas, count, self.batch_size, *lattice)
                yield spins.transpose(0, 1).contiguous()


class IsingDataModule(pl.LightningDataModule):
    """Training and held-out Ising configurations (Chung & Kao, Sec. 4: 10^4 and 5 x 10^4 at K_c).

    Args:
        L: linear lattice size; even, >= 4.
        coupling: K in exp(K sum_<ij> s_i s_j); ``None`` = K_c of ``dim``.
        dim: lattice dimension (2 or 3).
        algorithm: sampler name (``rbmrg.lattice.samplers.available_algorithms()``); default Wolff clusters,
            whose kept samples are spaced by >= 2 tau_int of |m| and of the energy with the default
            ``n_between`` at L = 32, K_c (docs/sampler.md).
        n_train: configurations in the training set.
        n_val: configurations in the held-out set (MCRG during training).
        n_chains: independent chains per set; must divide ``n_train`` and ``n_val`` and be >= 20 (the
            MCRG jackknife takes blocks of whole chains).
        n_thermalize: sweeps discarded from the hot start of each chain.
        n_between: sweeps between kept configurations of a chain.
        algorithm, n_thermalize, n_between, device: ``"auto"`` takes this machine's default
            (:func:`rbmrg.lattice.samplers.resolve_sampling`): CUDA and ``metropolis-fused`` where
            a GPU is present, the CPU and Wolff otherwise, spaced by the algorithm's measured
            tau_int at L (2D only); explicit values win. The cache key holds the resolved values.
        batch_size: configurations per training minibatch.
        updates_per_step: minibatches handed to one ``training_step`` (the module makes one CD update
            per minibatch): the framework's per-step cost is paid once per this many updates; the
            trained filter does not depend on it.
        train_seed, val_seed: seeds of the two sets; must differ, so the sets are independent.
        data_dir: cache directory (created if needed; must be writable); ``None`` keeps the sets in
            memory only.
        device: torch device the sampling runs on (the compiled samplers run on the CPU regardless).
        progress: show a progress bar with ETA while sampling.
    """

    def __init__(
        self,
        L: int = 32,
        coupling: float | None = None,
        dim: int = 2,
        algorithm: str = DEFAULT_ALGORITHM,
        n_train: int = 10_000,
        n_val: int = 50_000,
        n_chains: int = 100,
        n_thermalize: int | str = 1000,
        n_between: int | str = 4,
        batch_size: int = 10,
        train_seed: int = 0,
        val_seed: int = 1,
        data_dir: str | None = "data",
        device: str = "cpu",
        progress: bool = True,
        updates_per_step: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        try:
            self.ising = IsingModel(L=L, coupling=coupling, dim=dim)
        except ValueError as error:
            raise ValueError(f"data.{error}") from None
        resolved = resolve_sampling(device, algorithm, n_thermalize, n_between, L, dim, "data.")
        algorithm, n_thermalize, n_between = (
            resolved[name] for name in ("algorithm", "n_thermalize", "n_between")
        )
        for name, count, seed in (("n_train", n_train, train_seed), ("n_val", n_val, val_seed)):
            validate_sampling(
                count,
                n_chains,
                n_thermalize,
                n_between,
                names=(f"data.{name}", "data.n_chains", "data.n_thermalize", "data.n_between"),
            )
            checks.integer(f"data.{name.replace('n_', '')}_seed", seed, 0)
        if n_chains < MIN_BLOCKS:
            raise ValueError(
                f"data.n_chains={n_chains}: the held-out set needs >= {MIN_BLOCKS} independent "
                "chains, one jackknife block each at least, for the error bars of MCRG"
            )
        checks.integer("data.batch_size", batch_size, 1, n_train)
        self.updates_per_step = checks.integer("data.updates_per_step", updates_per_step, 1)
        if train_seed == val_seed:
            raise ValueError(
                f"data.train_seed={train_seed} equals data.val_seed={val_seed}: the held-out set "
                "must be independent of the training set"
            )
        self.sampling_device = resolved["device"]
        checks.flag("data.progress", progress)
        self.algorithm = algorithm
        self.n_train, self.n_val, self.n_chains = n_train, n_val, n_chains
        self.n_thermalize, self.n_between = n_thermalize, n_between
        self.batch_size = batch_size
        self.train_seed, self.val_seed = train_seed, val_seed
        self.data_dir = None if data_dir is None else Path(data_dir)
        self.cache = None if data_dir is None else SampleCache(data_dir, "data.data_dir")
        self.show_progress = progress
        self.train_set: SampleSet | None = None
        self.val_set: SampleSet | None = None
        if self.cache is not None:
            self.cache.check_writable()  # last: every other setting is reported first

    # ----------------------------------------------------------------------------------------------
    # Cache

    def settings(self, n_samples: int, seed: int) -> dict:
        """Everything that determines a set's content; its hash names the cache file."""
        return {
            "format": CACHE_FORMAT,
            "L": self.ising.L,
            "coupling": self.ising.coupling,
            "dim": self.ising.dim,
            "algorithm": self.algorithm,
            "n_samples": n_samples,
            "n_chains": self.n_chains,
            "n_thermalize": self.n_thermalize,
            "n_between": self.n_between,
            "seed": seed,
            # The torch generators differ between devices; the compiled samplers run on the CPU.
            "sampling_device": self._sampling_device_type(),
        }

    def _sampling_device_type(self) -> str:
        if self.algorithm in ("heatbath", "metropolis"):
            return self.sampling_device.type
        return "cpu"

    def cache_path(self, n_samples: int, seed: int) -> Path | None:
        if self.cache is None:
            return None
        return self.cache.path(self.settings(n_samples, seed), f"ising_L{self.ising.L}_{n_samples}")

    def _obtain(self, n_samples: int, seed: int, label: str) -> SampleSet:
        path = self.cache_path(n_samples, seed)
        if path is not None:
            cached = self.cache.load(path, self.settings(n_samples, seed), self.ising.shape)
            if cached is not None:
                return cached
        with progress_bar(n_samples, f"sampling {label} set", self.show_progress) as update:
            samples = draw_samples(
                self.ising,
                n_samples,
                algorithm=self.algorithm,
                n_chains=self.n_chains,
                n_thermalize=self.n_thermalize,
                n_between=self.n_between,
                seed=seed,
                device=self.sampling_device,
                progress=update,
            )
        _warn_if_correlated(samples, label)
        if path is not None:
            self.cache.save(path, samples, self.settings(n_samples, seed))
        return samples

    # ----------------------------------------------------------------------------------------------
    # Lightning hooks

    def prepare_data(self) -> None:
        """Generate and cache both sets (Lightning calls this on one process per node)."""
        if self.data_dir is None:
            return  # nothing to share between processes: setup() samples in memory
        self._obtain(self.n_train, self.train_seed, "training")
        self._obtain(self.n_val, self.val_seed, "held-out")

    def setup(self, stage: str | None = None) -> None:
        """Load both sets (from the cache ``prepare_data`` filled, or by sampling)."""
        if self.train_set is None:
            self.train_set = self._obtain(self.n_train, self.train_seed, "training")
        if self.val_set is None:
            self.val_set = self._obtain(self.n_val, self.val_seed, "held-out")

    def _training_device(self) -> torch.device:
        if self.trainer is not None:
            return self.trainer.strategy.root_device
        return self.sampling_device

    def batches_per_epoch(self, world_size: int = 1) -> int:
        """Minibatches one rank trains on per epoch (the length of :meth:`train_dataloader`)."""
        return (self.n_train // world_size) // self.batch_size

    def train_dataloader(self) -> ShuffledBatches:
        """Shuffled float32 minibatches on the training device, in chunks ``(m, batch_size, L, ..., L)``
        of m <= ``updates_per_step`` consecutive minibatches (see :class:`ShuffledBatches`)."""
        if self.train_set is None:
            self.setup("fit")
        trainer = self.trainer
        rank = trainer.global_rank if trainer is not None else 0
        world_size = trainer.world_size if trainer is not None else 1
        spins = self.train_set.spins.to(self._training_device(), torch.float32)
        # The model says how many filters it trains side by side (model.n_replicas): one
        # minibatch each per update.
        model = trainer.lightning_module if trainer is not None else None
        replicas = getattr(model, "n_replicas", 1)
        return ShuffledBatches(
            spins,
            self.batch_size,
            self.train_seed,
            rank=rank,
            world_size=world_size,
            # The epoch Lightning hands to samplers (epochs whose batches all ran): unlike
            # current_epoch it is already advanced when a run resumes from an epoch-end checkpoint.
            epoch_of=(
                (lambda: trainer.fit_loop.epoch_progress.current.processed)
                if trainer is not None
                else None
            ),
            chunk=self.updates_per_step,
            replicas=replicas,
        )


def _warn_if_correlated(samples: SampleSet, label: str) -> None:
    """Warn when kept samples are closer than 2 tau_int of |m| or of the energy, or not thermalized.

    tau_int <= 1 in units of n_between means spacing >= 2 tau_int. The thermalization check compares
    the mean energy of the first and second half of every chain; they differ by more than 5 standard
    errors (chains independent) when the start is still visible.
    """
    for name, tau in (
        ("energy", samples.tau_int_energy),
        ("|m|", samples.tau_int_abs_magnetization),
    ):
        if math.isfinite(tau) and tau > 1.0:
            warnings.warn(
                f"{label} set: tau_int of {name} is {tau:.2f} in units of n_between="
                f"{samples.n_between} sweeps; kept samples are closer than 2 tau_int "
                "(raise n_between)",
                RuntimeWarning,
                stacklevel=3,
            )
    drift = thermalization_drift(samples.energy)
    if drift is not None:
        warnings.warn(f"{label} set: {drift}", RuntimeWarning, stacklevel=3)
