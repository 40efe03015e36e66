"""Training throughput: CD-k updates/s and configurations/s, bare PyTorch loop vs. Lightning.

    python benchmarks/training.py                    # paper settings, every device present
    python benchmarks/training.py --steps 3000 --threads 1 --device cpu

Paper settings: L = 32, 8x8 filter, stride 2, CD-3, minibatch 10, Adam with the square-root schedule.
The configurations are random +1/-1 spins already on the device (the cost of an update does not depend
on what the spins are), served like ``IsingDataModule.train_dataloader``: on-device float32 minibatches
of a tensor reshuffled each epoch, no DataLoader and no collate. Both loops run the update the module
runs: ``RBMModule.contrastive_divergence``, backward, Adam step for the torch backend, and for the
numba backend ``RBMModule.fused_updates`` (M updates with Adam in one kernel call) on chunks of
``--updates-per-step`` minibatches. The Lightning loop adds the Trainer (manual optimisation,
scheduler, ``--updates-per-step`` updates per training step as ``IsingDataModule`` serves them, step
logging to a CSV logger after every training step, no progress bar, no checkpoints).
Both CD implementations are timed (``--backends``): ``torch``, the reference, and ``numba``, the
fused CPU kernel of ``rbmrg.training.cd_numba``. Also timed: MCRG on the held-out set (5 x 10^4
configurations, N_r = 2), the cost MCRGCallback adds per epoch: the first epoch (which measures the
level-0 interactions once) and a later one.

Prints a table and appends one JSON line per device to benchmarks/results/training.jsonl.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from common import cpu_model

from rbmrg.training.callbacks import MCRGCallback
from rbmrg.training.data import ShuffledBatches
from rbmrg.training.module import RBMModule
from rbmrg.training.schedules import SqrtDecay

RESULTS = Path(__file__).parent / "results" / "training.jsonl"


class OnDeviceBatches:
    """Minibatches of an on-device tensor, reshuffled each epoch (the data module's contract)."""

    def __init__(self, spins: torch.Tensor, batch_size: int, n_batches: int, replicas: int = 1):
        self.spins, self.batch_size, self.n_batches = spins, batch_size, n_batches
        self.replicas = replicas

    def __len__(self) -> int:
        return self.n_batches

    def __iter__(self):
        order = torch.randperm(self.spins.shape[0], device=self.spins.device)
        shuffled = self.spins[order]
        for index in range(self.n_batches):
            start = (index * self.batch_size) % (shuffled.shape[0] - self.batch_size + 1)
            batch = shuffled[start : start + self.batch_size]
            # R replicas: R minibatches (the same one: the cost does not depend on the spins)
            yield batch if self.replicas == 1 else batch.expand(self.replicas, *batch.shape)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _module(args: argparse.Namespace, backend: str = "torch") -> RBMModule:
    return RBMModule(
        filter_size=args.filter_size,
        stride=args.stride,
        cd_k=args.cd_k,
        schedule=SqrtDecay(1e-3, 1e-4, decay_epochs=25),
        backend=backend,
        n_replicas=args.replicas,
    )


def bare_loop(spins: torch.Tensor, args: argparse.Namespace, device: str, backend: str) -> float:
    """Updates/s of the plain loop: CD-k loss, backward, Adam, schedule."""
    module = _module(args, backend).to(device)
    optimizer = torch.optim.Adam(module.rbm.parameters(), lr=module.schedule.lr)
    scheduler = module.schedule.build(optimizer, steps_per_epoch=1000)["scheduler"]
    batches = OnDeviceBatches(spins, args.batch_size, args.steps + args.warmup, args.replicas)
    if backend == "numba":
        # What RBMModule does with the numba backend: chunks of --updates-per-step minibatches,
        # each chunk one kernel call with Adam inside (RBMModule.fused_updates).
        chunk, start, first = [], None, 0
        for step, batch in enumerate(batches):
            if start is None and step >= args.warmup and not chunk:  # at a chunk's start
                start, first = time.perf_counter(), step
            chunk.append(batch)
            if len(chunk) == args.updates_per_step or step == len(batches) - 1:
                module.fused_updates(torch.stack(chunk), optimizer, scheduler)
                chunk = []
        return (len(batches) - first) / (time.perf_counter() - start)
    elapsed, start = 0.0, None
    for step, batch in enumerate(batches):
        if step == args.warmup:
            _sync(device)
            start = time.perf_counter()
        loss = module.contrastive_divergence(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    _sync(device)
    elapsed = time.perf_counter() - start
    return args.steps / elapsed


class _Timer(pl.Callback):
    """Wall time and CD updates (``RBMModule.updates``) from the first training step that starts
    after ``warmup`` updates."""

    def __init__(self, warmup: int, device: str):
        self.warmup, self.device = warmup, device
        self.start = self.end = None
        self.first_update = self.last_update = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.start is None and pl_module.updates >= self.warmup:
            _sync(self.device)
            self.start, self.first_update = time.perf_counter(), pl_module.updates

    def on_train_end(self, trainer, pl_module):
        _sync(self.device)
        self.end, self.last_update = time.perf_counter(), pl_module.updates


def lightning_loop(
    spins: torch.Tensor, args: argparse.Namespace, device: str, backend: str
) -> float:
    """Updates/s with the Trainer in the loop: chunks of ``--updates-per-step`` minibatches, as
    IsingDataModule serves them (``data.updates_per_step``)."""
    module = _module(args, backend)
    timer = _Timer(args.warmup, device)
    batches = ShuffledBatches(
        spins, args.batch_size, seed=0, chunk=args.updates_per_step, replicas=args.replicas
    )
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator="gpu" if device == "cuda" else "cpu",
            devices=1,
            max_epochs=1000,  # bounded by max_steps; a finite count makes Lightning size the epoch
            # Training steps of --updates-per-step CD updates each.
            max_steps=-(-(args.warmup + args.steps) // args.updates_per_step),
            logger=pl.loggers.CSVLogger(tmp),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            callbacks=[timer],
            default_root_dir=tmp,
        )
        trainer.fit(module, train_dataloaders=batches)
    return (timer.last_update - timer.first_update) / (timer.end - timer.start)


def mcrg_seconds(args: argparse.Namespace, device: str) -> tuple[float, float]:
    """Seconds for MCRGCallback's first measurement on ``args.n_val`` configurations, and for a
    later one (level-0 interactions cached since the first)."""

    class HeldOut:
        spins = (torch.randint(0, 2, (args.n_val, args.L, args.L), device=device) * 2 - 1).to(
            torch.int8
        )
        n_chains = 100

    module = _module(argparse.Namespace(**{**vars(args), "replicas": 1})).to(device)
    callback = MCRGCallback(n_rg_steps=2, n_blocks=20)
    seconds = []
    for _ in range(2):
        _sync(device)
        start = time.perf_counter()
        callback.measure(module.rbm, HeldOut, torch.device(device))
        _sync(device)
        seconds.append(time.perf_counter() - start)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="all", choices=["all", "cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=2000, help="timed updates per measurement")
    parser.add_argument("--warmup", type=int, default=100, help="untimed updates first")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--L", type=int, default=32)
    parser.add_argument("--filter-size", type=int, default=8)
    parser.add_argument("--stride", type=int, default=2)
    parser.add_argument("--cd-k", type=int, default=3)
    parser.add_argument(
        "--updates-per-step", type=int, default=200, help="minibatches per training_step (M)"
    )
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument(
        "--replicas", type=int, default=1, help="filters trained side by side (model.n_replicas)"
    )
    parser.add_argument("--n-train", type=int, default=10_000)
    parser.add_argument(
        "--n-val", type=int, default=50_000, help="held-out set for the MCRG timing"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        default=["torch", "numba"],
        choices=["torch", "numba"],
        help="CD implementations to time (numba: CPU only; torch is the reference)",
    )
    parser.add_argument("--no-mcrg", action="store_true", help="skip the MCRG timing")
    parser.add_argument("--no-save", action="store_true", help="print only, append nothing")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if args.device != "all":
        devices = [args.device]
    pl.seed_everything(0, verbose=False)

    common = {
        "benchmark": "training",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "node": platform.node(),
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "pytorch_lightning": pl.__version__,
        },
        "settings": {
            k: getattr(args, k)
            for k in (
                "L",
                "filter_size",
                "stride",
                "cd_k",
                "batch_size",
                "steps",
                "n_val",
                "updates_per_step",
                "replicas",
            )
        },
    }
    records = []
    print(
        f"CD-{args.cd_k}, L={args.L}, f={args.filter_size}, b={args.stride}, "
        f"minibatch {args.batch_size}, {torch.get_num_threads()} torch thread(s)"
    )
    print(f"{'device':8s}{'backend, loop':16s}{'updates/s':>12s}{'configs/s':>12s}")
    for device in devices:
        spins = torch.randint(0, 2, (args.n_train, args.L, args.L), device=device) * 2.0 - 1.0
        figures = {}
        backends = [b for b in args.backends if device == "cpu" or b == "torch"]
        for backend in backends:
            # Keys without a prefix are the torch reference (as in the older records).
            prefix = "" if backend == "torch" else f"{backend}_"
            for name, loop in (("bare", bare_loop), ("lightning", lightning_loop)):
                rate = loop(spins, args, device, backend)
                figures[f"{prefix}{name}_updates_per_s"] = round(rate, 1)
                figures[f"{prefix}{name}_configs_per_s"] = round(rate * args.batch_size, 1)
                label = f"{backend} {name}"
                print(f"{device:8s}{label:16s}{rate:12.0f}{rate * args.batch_size:12.0f}")
            overhead = 1e6 * (
                1 / figures[f"{prefix}lightning_updates_per_s"]
                - 1 / figures[f"{prefix}bare_updates_per_s"]
            )
            figures[f"{prefix}lightning_overhead_us_per_update"] = round(overhead, 1)
            print(f"{device:8s}{backend} Lightning overhead: {overhead:.0f} us/update")
        if "torch" in backends and "numba" in backends:
            ratio = figures["numba_lightning_updates_per_s"] / figures["lightning_updates_per_s"]
            figures["numba_over_torch_lightning"] = round(ratio, 2)
            print(f"{device:8s}numba / torch, Lightning loop: {ratio:.2f}x")
        if not args.no_mcrg:
            first, cached = mcrg_seconds(args, device)
            figures["mcrg_seconds_first_epoch"] = round(first, 2)
            figures["mcrg_seconds_per_epoch"] = round(cached, 2)
            print(
                f"{device:8s}MCRG on {args.n_val} configurations: {first:.2f} s (first epoch), "
                f"{cached:.2f} s (later epochs, level 0 cached)"
            )
        records.append({**common, "device": device, "figures": figures})
    if args.no_save:
        return
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    print(f"appended {len(records)} line(s) to {RESULTS}")


if __name__ == "__main__":
    main()
