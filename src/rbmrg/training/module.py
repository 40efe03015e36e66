"""Lightning wrapper that trains the RG weight factor (:class:`rbmrg.rg.rbm.ConvRBM`) by contrastive divergence.

Training minimises D(p_Ising || Y / sum Y) (Eq. 8 of Chung & Kao), i.e. the negative log-likelihood of
the RBM whose visible marginal is Y(sigma) = exp(-F(sigma)). Its gradient is

    d NLL / dW = < dF/dW >_data - < dF/dW >_model,

and CD-k replaces the model average by the end of a k-step Gibbs chain sigma -> mu -> sigma. We
minimise the *surrogate loss*

    loss = mean_data F(sigma) - mean_chain F(sigma_k),     sigma_k detached,

whose autograd gradient is exactly the CD-k estimate. Lightning's automatic optimisation then does the
backward pass, Adam step, learning-rate schedule, DDP gradient averaging and checkpointing; the loss
value itself is the free-energy gap between data and chain end (per configuration, in units of k_B T).

Chains start at the minibatch (CD-k) or, with ``persistent=True``, continue from where the previous
step left them (persistent CD / PCD, Tieleman 2008): the module keeps one chain per minibatch slot, the
i-th configuration of every minibatch is paired with chain i. The chains start from the first
minibatch and are saved in checkpoints.

Two implementations of the same update (``backend``): ``"torch"``, the readable reference
(``ConvRBM.gibbs`` and ``ConvRBM.free_energy`` with autograd, any device), and ``"numba"``, the fused
CPU kernel of :mod:`rbmrg.training.cd_numba` (the whole Gibbs chain and the CD gradient in one compiled call,
handed to autograd through :class:`rbmrg.training.cd_numba.SurrogateLoss`). ``"auto"`` takes numba for 2D
lattices on the CPU and torch otherwise. Both draw their random numbers from torch's generator, so
``seed_everything`` reproduces a run of either; the two do not draw the same chains. Checkpoints
carry the generators' states (:func:`rng_states`), so a resumed run continues bit for bit.

``n_replicas=R > 1`` trains R independent filters in one run (:class:`rbmrg.rg.rbm.ReplicaRBM`,
state-dict key ``rbm.weight`` of shape (R, f, ..., f)): each its own initial draw, its own Gibbs
noise, its own minibatches (the data module serves chunks (m, R, batch, L, ...), replica r its own
permutation of the training set, see :class:`rbmrg.training.data.ShuffledBatches`) and its own
persistent chains (R, batch, L, ...). The loss is the sum of the R surrogate losses, so the gradient
of filter r is replica r's CD gradient alone, and one Adam over the (R, f, ...) parameter is R
independent Adams (Adam is elementwise); the learning-rate schedule is common. The torch backend
runs all R in one grouped convolution; the numba backend runs a chunk of all R in one kernel call
(:meth:`fused_updates`), or, where that does not apply, its one-filter kernel once per replica. The logged gap, reconstruction cross-entropy and filter norm are means over
the replicas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import rank_zero_warn

from rbmrg import checks
from rbmrg.rg.rbm import ConvRBM, ReplicaRBM
from rbmrg.training import cd_numba
from rbmrg.training.schedules import Schedule, SqrtDecay

BACKENDS = ("auto", "torch", "numba")
#: Checkpoint entry holding the random-generator states (see rng_states).
RNG_STATES_KEY = "rng_states"
#: Checkpoint entry holding the number of CD updates made (RBMModule.updates).
UPDATES_KEY = "cd_updates"
#: Seed of the generator behind the logged reconstruction cross-entropy: its draws never touch the
#: generators of the updates, so logging more or less often changes no update.
_MONITOR_SEED = 20240917


class RBMModule(pl.LightningModule):
    """CD-k (or persistent CD-k) training of a :class:`ConvRBM` with Adam.

    Args:
        filter_size: f, side of the square filter (paper: 8).
        stride: b, the RG scale factor (paper: 2).
        init_scale: W starts uniform in [-init_scale, init_scale] ("uniformly around zero").
        cd_k: Gibbs steps per update, k >= 1 (paper: CD-3).
        persistent: keep the Gibbs chains between updates (PCD) instead of restarting at the data.
        schedule: learning-rate law (:mod:`rbmrg.training.schedules`); default the paper's square-root decay.
        betas: Adam's (beta1, beta2).
        backend: ``"torch"`` (reference, default), ``"numba"`` (fused CPU kernel) or ``"auto"``.
        dim: lattice dimension, 2 (square f x f filter) or 3 (cubic f x f x f filter).
        n_replicas: R >= 1 independent filters trained side by side (see the module docstring).

    The filter is the attribute ``rbm`` (state-dict key ``rbm.weight``, a :class:`ConvRBM`; with
    R > 1 a :class:`ReplicaRBM` of weight (R, f, ..., f)); ``filter_size``, ``stride`` and
    ``n_replicas`` are saved as hyper-parameters so a checkpoint alone rebuilds the transformation.
    """

    def __init__(
        self,
        filter_size: int = 8,
        stride: int = 2,
        init_scale: float = 0.01,
        cd_k: int = 3,
        persistent: bool = False,
        schedule: Schedule | Mapping | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        backend: str = "torch",
        dim: int = 2,
        n_replicas: int = 1,
    ):
        super().__init__()
        n_replicas = checks.integer("model.n_replicas", n_replicas, 1)
        if not isinstance(cd_k, int) or isinstance(cd_k, bool) or cd_k < 1:
            raise ValueError(
                f"model.cd_k={cd_k!r}: contrastive divergence needs k >= 1 Gibbs steps"
            )
        if backend not in BACKENDS:
            raise ValueError(f"model.backend={backend!r}: expected one of {', '.join(BACKENDS)}")
        # The schedule object is not a plain value: keep it out of the checkpoint (the full Hydra
        # config is logged with the run instead).
        self.save_hyperparameters(ignore=["schedule"], logger=False)
        self.hparams["betas"] = tuple(float(beta) for beta in betas)
        if n_replicas == 1:
            self.rbm = ConvRBM(
                filter_size=filter_size, stride=stride, init_scale=init_scale, dim=dim
            )
        else:
            self.rbm = ReplicaRBM(n_replicas, filter_size, stride, init_scale, dim)
        self.n_replicas = n_replicas
        self.schedule = _as_schedule(schedule)
        # persistent chains, (batch_size, L, ..., L), or (R, batch_size, L, ..., L)
        self.chains: torch.Tensor | None = None
        self._gap_sum: torch.Tensor | None = None  # on-device running sum, no host sync per step
        self._gap_count = 0
        self._scheduler_interval = "step"
        #: CD updates made so far (Lightning's global_step counts training steps of M updates).
        self.updates = 0
        # training_step makes one optimizer step per minibatch of a chunk of several.
        self.automatic_optimization = False

    # ---------------------------------------------------------------------------------------------
    # Physics hooks

    def check_lattice(self, L: int, dim: int | None = None) -> None:
        """Raise a ValueError naming the setting if the filter cannot be used on an L^dim lattice."""
        if dim is not None and dim != self.rbm.dim:
            raise ValueError(f"model.dim={self.rbm.dim} does not match data.dim={dim}")
        self.rbm.check_lattice(L)

    def chain_start(self, spins: torch.Tensor) -> torch.Tensor:
        """Where the Gibbs chains of this update start: the data (CD) or the persistent chains (PCD)."""
        if not self.hparams.persistent:
            return spins
        axis = self._batch_axis
        n = spins.shape[axis]
        chains = self.chains
        if chains is None or _without(chains.shape, axis) != _without(spins.shape, axis):
            self.chains = spins.detach().clone()
        elif chains.shape[axis] < n:
            extra = spins.narrow(axis, chains.shape[axis], n - chains.shape[axis]).detach().clone()
            self.chains = torch.cat([chains, extra], axis)
        return self.chains.narrow(axis, 0, n).to(spins.device)

    @property
    def _batch_axis(self) -> int:
        """Axis of the configurations in a minibatch: 0, or 1 behind the replica axis."""
        return 0 if self.n_replicas == 1 else 1

    def _keep_chains(self, chain_end: torch.Tensor) -> None:
        """Store the chain end of this update as the persistent chains of its minibatch slots."""
        axis = self._batch_axis
        self.chains.narrow(axis, 0, chain_end.shape[axis]).copy_(chain_end)

    def contrastive_divergence(self, spins: torch.Tensor) -> torch.Tensor:
        """The surrogate loss mean F(data) - mean F(chain end); its gradient is the CD-k gradient.

        With R replicas ``spins`` is (R, batch, L, ...) and the loss the sum over replicas of each
        one's surrogate loss, so that filter r gets replica r's gradient and nothing else.
        """
        if self.uses_fused_kernel(spins):
            start = self.chain_start(spins) if self.hparams.persistent else None
            if self.n_replicas == 1:
                loss, chain_end = cd_numba.contrastive_divergence(
                    self.rbm.weight, spins, start, self.rbm.stride, self.hparams.cd_k
                )
            else:  # the kernel takes one filter: once per replica, each drawing its own seed
                losses, ends = [], []
                for r in range(self.n_replicas):
                    loss_r, end_r = cd_numba.contrastive_divergence(
                        self.rbm.weight[r],
                        spins[r],
                        None if start is None else start[r],
                        self.rbm.stride,
                        self.hparams.cd_k,
                    )
                    losses.append(loss_r)
                    ends.append(end_r)
                loss, chain_end = torch.stack(losses).sum(), torch.stack(ends)
            if self.hparams.persistent:
                self._keep_chains(chain_end)
            return loss
        with torch.no_grad():
            chain_end = self.rbm.gibbs(self.chain_start(spins), self.hparams.cd_k)
            if self.hparams.persistent:
                self._keep_chains(chain_end)
        if self.n_replicas > 1:
            n = spins.shape[1]
            free_energy = self.rbm.free_energy(torch.cat([spins, chain_end], 1))
            return (free_energy[:, :n].mean(1) - free_energy[:, n:].mean(1)).sum()
        n = spins.shape[0]
        # One pass over data and chain end together: one convolution and one backward instead of two.
        free_energy = self.rbm.free_energy(torch.cat([spins, chain_end]))
        return free_energy[:n].mean() - free_energy[n:].mean()

    def uses_fused_kernel(self, spins: torch.Tensor) -> bool:
        """Whether this update runs the numba kernel (see ``backend``) on the batch ``spins``."""
        backend = self.hparams.get("backend", "torch")
        if backend == "torch":
            return False
        lattice_axes = 3 if self.n_replicas == 1 else 4  # (R,) batch, L, L
        fits = self.rbm.dim == 2 and spins.device.type == "cpu" and spins.ndim == lattice_axes
        if backend == "numba" and not fits:
            raise ValueError(
                f"model.backend=numba runs on square 2D lattices on the CPU only, got a batch of "
                f"shape {tuple(spins.shape)} on {spins.device}; use backend=auto or torch"
            )
        return fits

    @torch.no_grad()
    def reconstruction_cross_entropy(self, spins: torch.Tensor) -> torch.Tensor:
        """-<log P(sigma' = sigma | mu)> per spin, mu ~ P(mu | sigma): one up-down pass, in nats.

        mu is drawn from a generator of its own (fixed seed), not from the one the updates use.
        """
        generator = torch.Generator(device=spins.device).manual_seed(_MONITOR_SEED)
        block_spins = self.rbm.sample_hidden(spins, generator)
        logits = 2.0 * self.rbm.visible_field(block_spins, spins.shape[-1])
        return F.binary_cross_entropy_with_logits(logits, (spins + 1.0) / 2.0)

    # ---------------------------------------------------------------------------------------------
    # Lightning hooks

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        """M consecutive CD-k updates, one per minibatch of the chunk ``batch`` (m, batch, L, ...).

        Each update is exactly what one optimizer step of the paper's loop is: the CD loss, its
        gradient (averaged over ranks under DDP), one Adam step, then the learning rate of the next
        update. The chunk runs inside *one* Lightning optimizer step (its closure), so the framework's
        per-step work (hooks, loop bookkeeping, logging) is paid once per M updates: Lightning's
        ``global_step`` counts training steps, :attr:`updates` counts CD updates. A plain minibatch
        ``(batch, L, ...)`` is a chunk of one. With R replicas a chunk is (m, R, batch, L, ...) and
        a plain minibatch (R, batch, L, ...).
        """
        chunk = batch[0] if isinstance(batch, list | tuple) else batch
        chunk = chunk.to(self.rbm.weight.dtype)
        minibatch_axes = self.rbm.dim + 1 + self._batch_axis
        if chunk.ndim == minibatch_axes:
            chunk = chunk.unsqueeze(0)
        if self.n_replicas > 1 and (
            chunk.ndim != minibatch_axes + 1 or chunk.shape[1] != self.n_replicas
        ):
            raise ValueError(
                f"model.n_replicas={self.n_replicas}: expected chunks (m, {self.n_replicas}, batch, "
                f"L, ...) with one minibatch per replica, got shape {tuple(chunk.shape)}"
            )
        optimizer = self.optimizers()
        scheduler = self.lr_schedulers()
        gaps: list[torch.Tensor] = []

        def run_chunk() -> None:
            if self.fuses_adam(chunk, optimizer.optimizer, scheduler):
                gaps.extend(self.fused_updates(chunk, optimizer.optimizer, scheduler))
            else:
                for spins in chunk:
                    gaps.append(self._update(spins, optimizer.optimizer, scheduler))
            # The optimizer step that wraps this closure then finds no gradient and changes nothing.
            optimizer.optimizer.zero_grad(set_to_none=True)

        optimizer.step(closure=run_chunk)
        gap = torch.stack(gaps)
        self._gap_sum = gap.sum() if self._gap_sum is None else self._gap_sum + gap.sum()
        self._gap_count += len(gaps)
        self.log_dict(
            {
                "train/free_energy_gap": gap.mean(),
                "train/reconstruction_cross_entropy": self.reconstruction_cross_entropy(chunk[-1]),
                "train/filter_norm": self.filter_norm(),
                "train/lr": optimizer.param_groups[0]["lr"],
                "train/updates": float(self.updates),
            },
            on_step=True,
            on_epoch=False,
        )
        return gap.mean()

    def filter_norm(self) -> torch.Tensor:
        """||W|| (Frobenius); with R replicas the mean over replicas of each filter's norm."""
        weight = self.rbm.weight.detach()
        if self.n_replicas == 1:
            return weight.norm()
        return weight.flatten(1).norm(dim=1).mean()

    def _update(
        self, spins: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> torch.Tensor:
        """One CD-k update on the minibatch ``spins``; returns the free-energy gap (the mean over
        replicas)."""
        optimizer.zero_grad(set_to_none=True)
        loss = self.contrastive_divergence(spins)
        if self.trainer.world_size > 1:
            self.manual_backward(loss)  # Lightning re-arms DDP's gradient averaging for each one
        else:
            loss.backward()
        optimizer.step()
        if scheduler is not None and self._scheduler_interval == "step":
            scheduler.step()
        self.updates += 1
        if self.n_replicas > 1:
            return loss.detach() / self.n_replicas
        return loss.detach()

    def fuses_adam(self, chunk: torch.Tensor, optimizer: Any, scheduler: Any) -> bool:
        """Whether the chunk runs as one call of the numba kernel with Adam inside
        (:func:`rbmrg.training.cd_numba.cd_adam_updates`) instead of M rounds of loss, backward and
        ``optimizer.step()``: on one process (DDP averages each gradient across ranks), with the
        plain Adam that :meth:`configure_optimizers` builds and a scheduler whose learning rates do
        not depend on the training (any ``LRScheduler`` but ``ReduceLROnPlateau``); one filter or
        R replicas alike."""
        if self.trainer.world_size > 1:
            return False
        if not self.uses_fused_kernel(chunk[0]) or type(optimizer) is not torch.optim.Adam:
            return False
        if len(optimizer.param_groups) != 1:
            return False
        group = optimizer.param_groups[0]
        extras = ("amsgrad", "maximize", "capturable", "differentiable", "fused", "weight_decay")
        if any(group.get(key) for key in extras):
            return False
        if len(group["params"]) != 1 or group["params"][0] is not self.rbm.weight:
            return False
        return scheduler is None or (
            isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler)
            and not isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
        )

    def fused_updates(
        self, chunk: torch.Tensor, optimizer: Any, scheduler: Any
    ) -> list[torch.Tensor]:
        """The updates of :meth:`_update` for every minibatch of ``chunk``, in one kernel call.

        The learning rate of each update and its Gibbs seed are taken in the order the per-update
        loop takes them (the rate, then the scheduler's step; one seed per update), and Adam's
        state lives in the optimizer as usual, so checkpoints and resume see no difference."""
        group = optimizer.param_groups[0]
        weight = self.rbm.weight
        state = optimizer.state[weight]
        if not state:  # what torch.optim.Adam creates at its first step
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
        lrs, seeds = [], []
        for _ in range(chunk.shape[0]):
            seeds.extend(cd_numba.draw_seed() for _ in range(self.n_replicas))  # replica order
            lrs.append(float(group["lr"]))
            if scheduler is not None and self._scheduler_interval == "step":
                scheduler.step()
        chains = self.chain_start(chunk[0]) if self.hparams.persistent else None
        with torch.no_grad():
            gaps = cd_numba.cd_adam_updates(
                weight, chunk, chains, self.rbm.stride, self.hparams.cd_k, seeds, lrs, state,
                group["betas"], group["eps"],
            )  # fmt: skip
        self.updates += chunk.shape[0]
        if self.n_replicas > 1:
            gaps = gaps / self.n_replicas  # the mean over replicas, as _update returns
        return list(gaps.unbind())

    def on_train_epoch_end(self) -> None:
        scheduler = self.lr_schedulers()
        if scheduler is not None and self._scheduler_interval == "epoch":
            scheduler.step()
        if self._gap_count:
            self.log("train/free_energy_gap_epoch", self._gap_sum / self._gap_count, sync_dist=True)
        self._gap_sum, self._gap_count = None, 0

    def configure_optimizers(self) -> dict[str, Any]:
        betas = tuple(self.hparams.betas)
        optimizer = torch.optim.Adam(self.rbm.parameters(), lr=self.schedule.lr, betas=betas)
        scheduler = self.schedule.build(optimizer, self.steps_per_epoch())
        # Manual optimization: training_step steps the scheduler itself, at this interval.
        self._scheduler_interval = scheduler["interval"]
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def steps_per_epoch(self) -> int:
        """Optimizer steps (CD updates) in one epoch on this rank (the schedules count epochs in
        updates, whatever the number of updates per training_step).

        Asked of the data module where it can tell: ``trainer.estimated_stepping_batches`` would set up
        the training data before a checkpoint is restored, and Lightning then never hands the
        restored position within the epoch to the data loader.
        """
        trainer = self.trainer
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and hasattr(datamodule, "batches_per_epoch"):
            batches = datamodule.batches_per_epoch(trainer.world_size)
        else:
            trainer.estimated_stepping_batches  # noqa: B018 - loads the train dataloader
            # A loader of chunks (ShuffledBatches) knows its minibatches; a plain one yields them.
            batches = getattr(trainer.train_dataloader, "minibatches", trainer.num_training_batches)
        if batches == float("inf"):
            raise ValueError(
                "the training data has no length: the learning-rate schedule needs the number of "
                "minibatches per epoch"
            )
        return max(1, int(batches))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.chains is not None:
            checkpoint["persistent_chains"] = self.chains.detach().cpu()
        checkpoint[RNG_STATES_KEY] = rng_states()
        checkpoint[UPDATES_KEY] = self.updates
        # The running sum behind train/free_energy_gap_epoch, so that an epoch interrupted and
        # resumed logs the same mean as an uninterrupted one.
        gap_sum = None if self._gap_sum is None else self._gap_sum.detach().cpu().clone()
        checkpoint["free_energy_gap_running"] = {"sum": gap_sum, "count": self._gap_count}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        chains = checkpoint.get("persistent_chains")
        self.chains = None if chains is None else chains.to(self.rbm.weight.device)
        running = checkpoint.get("free_energy_gap_running") or {}
        gap_sum = running.get("sum")
        self._gap_sum = None if gap_sum is None else gap_sum.to(self.rbm.weight.device)
        self._gap_count = int(running.get("count", 0))
        self.updates = int(checkpoint.get(UPDATES_KEY, checkpoint.get("global_step", 0)))
        states = checkpoint.get(RNG_STATES_KEY)
        if states is None:
            rank_zero_warn(
                "the checkpoint holds no random-number state (written by an older rbmrg): the "
                "resumed run draws other Gibbs samples than the interrupted one would have"
            )
        else:
            set_rng_states(states)


def _without(shape: torch.Size, axis: int) -> tuple[int, ...]:
    return tuple(shape[:axis]) + tuple(shape[axis + 1 :])


def rng_states() -> dict[str, Any]:
    """The states of every random generator a training update draws from.

    The torch path draws its Gibbs samples from torch's default generator of the device (CPU or
    CUDA), the numba kernel its per-update seed from the CPU one (``cd_numba.draw_seed``); the
    minibatch order has its own state in the data loader and MCRG its own fixed seed. Saved at
    every checkpoint and restored on resume, they make a resumed run draw exactly the numbers the
    uninterrupted run draws: nothing between a checkpoint and the next update, in either run,
    draws from these generators.
    """
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"].cpu())
    cuda = list(states.get("cuda") or [])
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda])
    elif cuda:
        rank_zero_warn(
            f"the checkpoint holds the random state of {len(cuda)} CUDA device(s), this machine "
            f"has {torch.cuda.device_count()}: GPU draws continue from another state"
        )


def _as_schedule(schedule: Schedule | Mapping | None) -> Schedule:
    if schedule is None:
        return SqrtDecay()
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, Mapping):  # a Hydra config with _target_
        from hydra.utils import instantiate

        return instantiate(schedule)
    raise TypeError(f"schedule={schedule!r}: expected a rbmrg.training.schedules.Schedule")
