"""Table 1 of Chung & Kao: MCRG exponents of a learned filter or a fixed RG transformation.

Fresh configurations are drawn with the evaluation's own seed (``data.seed``), transformed
``mcrg.n_rg_steps`` times and measured on the fly by the one MCRG driver (:func:`rbmrg.rg.mcrg.run_mcrg`);
nothing but float64 sums is kept, so memory does not grow with ``mcrg.n_samples``. The thermal
exponent y_t comes from the even interactions, the magnetic exponent y_h from the odd ones (the
ordered sets ``mcrg.even_set`` and ``mcrg.odd_set``), for N_c = 1..7 and N_r = 1..n_rg_steps, with
jackknife errors over ``mcrg.n_blocks`` blocks of whole independent chains (docs/mcrg.md). With
``mcrg.couplings`` the same levels of the first ``mcrg.couplings_samples`` configurations also give
the renormalized couplings K^(n) of the even set on every level (Swendsen 1984,
:mod:`rbmrg.rg.couplings`).

``data.device``, ``data.algorithm``, ``data.n_thermalize`` and ``data.n_between`` may be ``auto``:
the GPU and its fused sampler where there is one, the CPU samplers otherwise, spaced by their
measured tau_int (:func:`rbmrg.lattice.samplers.resolve_sampling`); mcrg.json records what they
resolved to.

With ``data.data_dir`` (default: the training sample cache's directory) the configurations are kept
on disk, bit-packed (L^d/8 bytes each; 128 MB for 10^6 at L = 32), in one file per sampling setup
(:mod:`rbmrg.sweep_cache`): a second evaluation with the same model, resolved sampler settings, seed
and ``mcrg.n_samples`` reads them back instead of sampling, with results bit-identical to sampling.
``data.data_dir=null`` turns it off; mcrg.json's ``sampler.cache`` says where they came from.

:func:`make_plan` checks every setting and reads the checkpoints before any sampling; :func:`run`
samples and measures; :func:`evaluate` does both and writes the files of :mod:`rbmrg.reports`.
``evaluate.py`` is the Hydra entry point over :func:`evaluate`.

A checkpoint of R > 1 independently trained filters (``model.n_replicas=R``) is measured filter by
filter on the same configurations in the same pass, each filter with its own generator seeded with
``mcrg.seed`` (so the filters differ and nothing else; :func:`rbmrg.rg.mcrg.run_mcrg_replicas`).
mcrg.json then holds ``n_replicas``, ``replicas`` (each filter's ``y_t``, ``y_t_err``, ``y_h``,
``y_h_err``, jackknife errors) and, in ``y_t``/``y_h``, the mean over filters with ``y_t_err``/
``y_h_err`` its standard error (spread / sqrt(R)) and ``y_t_spread``/``y_h_spread`` the standard
deviation over filters: the filter-to-filter uncertainty of the method. The couplings are those of
filter 0.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

import rbmrg
from rbmrg import checks, reports
from rbmrg.lattice.model import IsingModel, bond_sum, exact_exponents, magnetization
from rbmrg.lattice.samplers import make_sampler, resolve_sampling
from rbmrg.lattice.sampling import (
    integrated_autocorrelation_time,
    iterate_samples,
    thermalization_drift,
    validate_sampling,
)
from rbmrg.progress import progress_display
from rbmrg.rg.couplings import CouplingAccumulator, check_levels
from rbmrg.rg.interactions import Interaction, interaction_names
from rbmrg.rg.interactions_3d import sets_for
from rbmrg.rg.mcrg import EXPONENT_SET, MCRGResult, chain_blocks, check_blocks, run_mcrg_replicas
from rbmrg.rg.transforms import RGTransform, level_sizes
from rbmrg.sweep_cache import SweepCache, SweepReader, SweepWriter

log = logging.getLogger("evaluate")

#: Chains whose energy and |M| series are kept for tau_int and the thermalization check.
TAU_CHAINS = 100


@dataclass
class Plan:
    """Everything a run needs, checked before any sampling."""

    transform: RGTransform
    model: IsingModel
    lattice_sizes: list[int]
    sampler: dict[str, Any]
    device: torch.device
    n_samples: int
    n_rg_steps: int
    n_blocks: int
    batch_size: int
    mcrg_seed: int
    #: The ordered interaction sets ``{"even": ..., "odd": ...}`` of mcrg.even_set / mcrg.odd_set.
    sets: dict[str, tuple[Interaction, ...]]
    #: Configurations (whole sweeps of every chain) whose couplings are measured; 0: none.
    couplings_samples: int = 0
    #: Levels 0..couplings_levels - 1 hold every even interaction (the couplings are solved there).
    couplings_levels: int = 0
    #: Warnings found before sampling (logged and recorded with those of the run).
    notes: list[str] | None = None
    #: The on-disk copy of this sample stream (``data.data_dir``); None: always sample.
    cache: SweepCache | None = None


def make_plan(cfg: DictConfig) -> Plan:
    """Check every setting of ``cfg`` and build the run; a ValueError names the first bad one."""
    try:
        transform: RGTransform = instantiate(cfg.transform)
    except InstantiationException as error:
        # Hydra wraps what the factory raised; the factory's own message names the setting.
        raise (error.__cause__ or error) from None
    if transform.name != "rbm" and cfg.get("ckpt_path") is not None:
        raise ValueError(
            f"ckpt_path={cfg.ckpt_path!r} is given but transform={transform.name!r} uses no "
            "checkpoint; drop ckpt_path or set transform=rbm"
        )
    data, mcrg = cfg.data, cfg.mcrg
    try:
        model = IsingModel(L=data.L, coupling=data.coupling, dim=data.dim)
    except ValueError as error:
        raise ValueError(f"data.{error}") from error
    for rbm in transform.filters:
        if rbm.dim != model.dim:
            raise ValueError(
                f"ckpt_path: the filter is {'x'.join([str(rbm.filter_size)] * rbm.dim)} "
                f"({rbm.dim}D) but data.dim={model.dim}"
            )
    n_rg_steps = checks.integer("mcrg.n_rg_steps", mcrg.n_rg_steps, 1)
    sizes = level_sizes(model.L, transform, n_rg_steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resolved = resolve_sampling(
            data.device,
            data.algorithm,
            data.n_thermalize,
            data.n_between,
            model.L,
            model.dim,
            prefix="data.",
        )
    notes = [str(w.message) for w in caught]
    device = resolved["device"]
    sampler = {
        "algorithm": resolved["algorithm"],
        "n_chains": checks.integer("data.n_chains", data.n_chains, 1),
        "n_thermalize": checks.integer("data.n_thermalize", resolved["n_thermalize"], 0),
        "n_between": checks.integer("data.n_between", resolved["n_between"], 1),
        "seed": checks.integer("data.seed", data.seed, 0),
        "device": str(device),
        # The settings given as "auto" (the values above are what they resolved to here).
        "auto": resolved["auto"],
    }
    n_samples = checks.integer("mcrg.n_samples", mcrg.n_samples, 1)
    validate_sampling(
        n_samples,
        sampler["n_chains"],
        sampler["n_thermalize"],
        sampler["n_between"],
        names=("mcrg.n_samples", "data.n_chains", "data.n_thermalize", "data.n_between"),
    )
    n_blocks = checks.integer("mcrg.n_blocks", mcrg.n_blocks, 1)
    check_blocks(n_blocks, sampler["n_chains"], ("mcrg.n_blocks", "data.n_chains"))
    sets = sets_for(model.dim, _plain(mcrg.even_set), _plain(mcrg.odd_set))
    couplings_samples, couplings_levels = _couplings_plan(
        mcrg, sets["even"], sizes, n_samples, sampler["n_chains"], notes
    )
    # Last: every other setting is reported first, and nothing has been sampled yet.
    cache = _sweep_cache(data.get("data_dir"), model, sampler, n_samples)
    return Plan(
        transform=transform,
        model=model,
        lattice_sizes=sizes,
        sampler=sampler,
        device=device,
        n_samples=n_samples,
        n_rg_steps=n_rg_steps,
        n_blocks=n_blocks,
        batch_size=checks.integer("mcrg.batch_size", mcrg.batch_size, 1),
        mcrg_seed=checks.integer("mcrg.seed", mcrg.seed, 0),
        sets=sets,
        couplings_samples=couplings_samples,
        couplings_levels=couplings_levels,
        notes=notes,
        cache=cache,
    )


def _sweep_cache(
    data_dir: Any, model: IsingModel, sampler: dict[str, Any], n_samples: int
) -> SweepCache | None:
    """The sample cache of this stream in ``data.data_dir`` (None: off); ValueError naming
    ``data.data_dir`` unless the file can be written there. Its key is everything that determines
    the stream: the model, the resolved sampler settings and the number of samples."""
    if data_dir is None:
        return None
    if not isinstance(data_dir, str) or not data_dir:
        raise ValueError(
            f"data.data_dir={data_dir!r}: must be a directory, or null to sample without a cache"
        )
    keys = ("algorithm", "n_chains", "n_thermalize", "n_between", "seed", "device")
    settings = {
        "L": model.L,
        "coupling": model.coupling,
        "dim": model.dim,
        **{key: sampler[key] for key in keys},
        "n_samples": n_samples,
    }
    n_chains = sampler["n_chains"]
    cache = SweepCache(data_dir, settings, (n_chains, *model.shape), n_samples // n_chains)
    cache.check_writable()
    return cache


def _plain(value: Any) -> Any:
    """A set name stays a string; a list of names from the config becomes a Python list."""
    return OmegaConf.to_container(value) if isinstance(value, ListConfig) else value


def _couplings_plan(
    mcrg: DictConfig,
    even: Sequence[Interaction],
    sizes: list[int],
    n_samples: int,
    n_chains: int,
    notes: list[str],
) -> tuple[int, int]:
    """(configurations, levels) of the couplings measurement of ``mcrg.couplings*``; (0, 0) if off.

    The configurations are the first ``mcrg.couplings_samples`` (null: all) of the stream, rounded
    down to whole sweeps of every chain, so that each jackknife block keeps its own chains. The
    couplings of a level are solved jointly, so a level must hold every even interaction: levels
    from the first one that does not are left out (NaN, with a note); none at all is an error.
    """
    wanted = mcrg.couplings_samples
    if wanted is not None:
        wanted = checks.integer("mcrg.couplings_samples", wanted, 1)
    if not checks.flag("mcrg.couplings", mcrg.couplings):
        return 0, 0
    used = min(n_samples if wanted is None else wanted, n_samples) // n_chains * n_chains
    if used == 0:
        raise ValueError(
            f"mcrg.couplings_samples={wanted}: fewer than one configuration per chain "
            f"(data.n_chains={n_chains}); use at least {n_chains}, or mcrg.couplings=false"
        )
    levels = 0
    while levels < len(sizes) and all(i.fits(sizes[levels]) for i in even):
        levels += 1
    if levels == 0:
        check_levels(even, sizes[:1], "mcrg.couplings=true with mcrg.even_set")
    if levels < len(sizes):
        unfit = [i.name for i in even if not i.fits(sizes[levels])]
        notes.append(
            f"couplings: interactions {unfit} of mcrg.even_set do not fit level {levels} "
            f"(L={sizes[levels]}, needs L > 2 x span): K^(n) for n >= {levels} reported as NaN "
            "(use fewer RG steps, a larger lattice or a shorter-range set)"
        )
    return used, levels


class _CouplingFeed:
    """A ``run_mcrg`` consumer: hands the levels of the first ``n_samples`` configurations to a
    :class:`CouplingAccumulator` (on the CPU, where it counts). Draws no random numbers."""

    def __init__(self, accumulator: CouplingAccumulator, n_samples: int) -> None:
        self.accumulator = accumulator
        self.remaining = n_samples
        self.seconds = 0.0

    def __call__(self, levels: list[torch.Tensor], blocks: torch.Tensor) -> None:
        if self.remaining <= 0:
            return
        start = time.perf_counter()
        # Passes are whole sweeps of every chain and ``n_samples`` a multiple of the chains, so
        # the rows taken are whole sweeps too.
        rows = min(self.remaining, levels[0].shape[0])
        kept = [level[:rows].cpu() for level in levels[: self.accumulator.n_levels]]
        self.accumulator.update(kept, blocks[:rows].cpu())
        self.remaining -= rows
        self.seconds += time.perf_counter() - start


class _Tracked:
    """The sample stream with block indices, keeping E and |M| of a few chains for tau_int.

    With a sample cache (``plan.cache``) the sweeps are read from its file when it holds this
    stream (verified before the first one; no sampler is built), else drawn by the sampler and
    written to it, the file put in place only once the stream is complete. E and |M| are measured
    on the sweeps yielded, whichever their source. ``source`` is mcrg.json's ``sampler.cache``.
    """

    def __init__(self, plan: Plan, progress: Any) -> None:
        self.plan = plan
        self.progress = progress
        self.n_tau = min(plan.sampler["n_chains"], TAU_CHAINS)
        self.energy: list[torch.Tensor] = []
        self.abs_magnetization: list[torch.Tensor] = []
        self.thermalize_seconds = 0.0
        self.reader: SweepReader | None = None
        self.writer: SweepWriter | None = None
        #: ``{"path", "hit", "written"}`` of the cache file; None without a cache.
        self.source: dict[str, Any] | None = None

    def _sweeps(self) -> Iterator[torch.Tensor]:
        """The sweeps from the cache file if it holds them, else from a new sampler."""
        plan, cache = self.plan, self.plan.cache
        if cache is not None:
            self.reader = cache.open()  # one pass over the file: None if absent or damaged
            hit = self.reader is not None
            self.source = {"path": str(cache.path), "hit": hit, "written": False}
            if hit:
                log.info("configurations read from the sample cache %s", cache.path)
                return self.reader.sweeps(plan.device)
            log.info("configurations sampled and written to the sample cache %s", cache.path)
            self.writer = cache.writer()
        return iterate_samples(
            plan.model,
            plan.n_samples,
            algorithm=plan.sampler["algorithm"],
            n_chains=plan.sampler["n_chains"],
            n_thermalize=plan.sampler["n_thermalize"],
            n_between=plan.sampler["n_between"],
            seed=plan.sampler["seed"],
            device=plan.device,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        plan, start = self.plan, time.perf_counter()
        n_chains = plan.sampler["n_chains"]
        blocks = chain_blocks(n_chains, plan.n_blocks, plan.device)
        sweeps = self._sweeps()
        hit = self.reader is not None
        warm = self.progress.add_task(
            "reading the sample cache"
            if hit
            else f"thermalizing {plan.sampler['n_thermalize']} sweeps"
        )
        task = self.progress.add_task(
            "reading" if hit else "sampling", total=plan.n_samples, visible=False
        )
        try:
            for index, spins in enumerate(sweeps):
                if index == 0:
                    self.thermalize_seconds = time.perf_counter() - start
                    self.progress.update(warm, visible=False)
                    self.progress.update(task, visible=True)
                if self.writer is not None:
                    self.writer.write(spins)
                self.energy.append(bond_sum(spins[: self.n_tau], plan.model.dim).cpu())
                self.abs_magnetization.append(magnetization(spins[: self.n_tau]).abs().cpu())
                yield spins, blocks
                self.progress.update(task, completed=(index + 1) * n_chains)
            if self.writer is not None:
                self.source["written"] = self.writer.commit()
        finally:
            self.close()

    def close(self) -> None:
        """Close the cache file being read; remove one being written that is not complete."""
        if self.reader is not None:
            self.reader.close()
        if self.writer is not None:
            self.writer.discard()


def run(plan: Plan, show_progress: bool = False) -> dict[str, Any]:
    """Sample, transform, accumulate and solve; returns the record written to mcrg.json."""
    start = time.perf_counter()
    sets = plan.sets
    replicas = plan.transform.replica_steps(plan.device)
    # One generator per filter, all seeded alike: the same block-spin draws for every filter.
    generators = [torch.Generator(device=plan.device) for _ in replicas]
    for generator in generators:
        generator.manual_seed(plan.mcrg_seed)
    feed = None
    if plan.couplings_samples:
        accumulator = CouplingAccumulator(sets["even"], plan.couplings_levels, plan.n_blocks)
        feed = _CouplingFeed(accumulator, plan.couplings_samples)
    with progress_display("samples", enabled=show_progress) as progress:
        stream = _Tracked(plan, progress)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results = run_mcrg_replicas(
                    stream,
                    replicas,
                    plan.n_rg_steps,
                    plan.transform.scale,
                    n_blocks=plan.n_blocks,
                    sets=sets,
                    generators=generators,
                    batch_size=plan.batch_size,
                    consumers=[feed] if feed else [],
                )
                result = results[0]
                couplings = _couplings(feed, plan)
        finally:
            stream.close()  # an interrupted stream leaves no cache file
    messages = sorted({str(w.message) for w in caught} | set(plan.notes or []))
    energy = torch.stack(stream.energy)
    drift = thermalization_drift(energy)
    if drift is not None:
        messages.insert(0, f"NOT THERMALIZED: {drift} (data.n_thermalize)")
    for message in messages:
        log.warning(message)
    total = time.perf_counter() - start
    record: dict[str, Any] = {
        "transform": plan.transform.name,
        "ckpt_path": list(plan.transform.sources) or None,
        "filter_size": list(plan.transform.filter_sizes) or None,
        "scale_factor": plan.transform.scale,
        "L": plan.model.L,
        "dim": plan.model.dim,
        "coupling": plan.model.coupling,
        "n_samples": result.n_samples,
        "n_rg_steps": plan.n_rg_steps,
        "lattice_sizes": plan.lattice_sizes,
        "n_blocks": plan.n_blocks,
        "even_set": interaction_names(sets["even"]),
        "odd_set": interaction_names(sets["odd"]),
    }
    if len(results) == 1:
        for exponent, set_name in EXPONENT_SET.items():
            record[exponent] = result.y[set_name].tolist()
            record[f"{exponent}_err"] = result.err[set_name].tolist()
    else:
        record.update(replica_summary(results))
    seconds = couplings.pop("seconds")
    record.update(couplings)
    record.update(
        {
            "exact": exact_exponents(plan.model.dim),
            "level0": result.level0,
            "sampler": {**plan.sampler, "details": _sampler_details(plan), "cache": stream.source},
            "tau_int": {
                "energy": integrated_autocorrelation_time(energy),
                "abs_magnetization": integrated_autocorrelation_time(
                    torch.stack(stream.abs_magnetization)
                ),
                "unit": "n_between sweeps (1/2 = uncorrelated)",
                "n_chains_used": stream.n_tau,
            },
            "thermalized": drift is None,
            "mcrg_seed": plan.mcrg_seed,
            "warnings": messages,
            "wall_time_s": {
                "total": total,
                "mcrg": result.seconds,
                "couplings": seconds,
                "sampling": total - result.seconds - seconds,
                "thermalize": stream.thermalize_seconds,
            },
            "versions": {
                "rbmrg": rbmrg.__version__,
                "torch": torch.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
            },
            "machine": platform.node(),
            "command": " ".join(sys.argv),
        }
    )
    return record


def replica_summary(results: Sequence[MCRGResult]) -> dict[str, Any]:
    """The record's fields for R > 1 filters measured on the same configurations: ``n_replicas``,
    each filter's exponents and jackknife errors (``replicas``), and per exponent the mean over
    filters, its standard error (``*_err``, spread / sqrt(R)) and the spread (``*_spread``, the
    standard deviation over filters, R - 1 in the denominator); [N_r - 1][N_c - 1] as for one."""
    fields: dict[str, Any] = {"n_replicas": len(results), "replicas": []}
    for result in results:
        fields["replicas"].append(
            {
                key: value
                for exponent, set_name in EXPONENT_SET.items()
                for key, value in (
                    (exponent, result.y[set_name].tolist()),
                    (f"{exponent}_err", result.err[set_name].tolist()),
                )
            }
        )
    for exponent, set_name in EXPONENT_SET.items():
        values = np.stack([result.y[set_name] for result in results])  # (R, N_r, N_c)
        spread = values.std(axis=0, ddof=1)
        fields[exponent] = values.mean(axis=0).tolist()
        fields[f"{exponent}_err"] = (spread / np.sqrt(len(results))).tolist()
        fields[f"{exponent}_spread"] = spread.tolist()
    return fields


def _couplings(feed: _CouplingFeed | None, plan: Plan) -> dict[str, Any]:
    """The record's couplings fields: K^(n) and jackknife errors, [level][interaction] in the
    order of the even set, NaN on levels the set does not fit; null when not measured (and
    ``seconds``, the time they took)."""
    names = interaction_names(plan.sets["even"])
    if feed is None:
        return {
            "couplings": None,
            "couplings_err": None,
            "couplings_set": names,
            "couplings_samples": 0,
            "seconds": 0.0,
        }
    start = time.perf_counter()
    result = feed.accumulator.result()
    shape = (plan.n_rg_steps + 1, len(names))
    couplings, errors = np.full(shape, np.nan), np.full(shape, np.nan)
    couplings[: plan.couplings_levels] = result.couplings
    errors[: plan.couplings_levels] = result.errors
    return {
        "couplings": couplings.tolist(),
        "couplings_err": errors.tolist(),
        "couplings_set": names,
        "couplings_samples": result.n_samples,
        "seconds": feed.seconds + time.perf_counter() - start,
    }


def _sampler_details(plan: Plan) -> dict[str, Any]:
    """Algorithm-specific settings (e.g. Wolff clusters per sweep), JSON-safe."""
    sampler = make_sampler(plan.model, plan.sampler["algorithm"], "cpu", plan.sampler["seed"])
    return {
        str(k): v if isinstance(v, int | float | str | bool) else str(v)
        for k, v in (sampler.details or {}).items()
    }


def evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """Check, refuse a directory that holds results, run, write; returns the record."""
    plan = make_plan(cfg)
    reports.check_output_dir(output_dir)
    log.info(
        "MCRG %s: L=%d, levels %s, %d samples from %d %s chains (%d sweeps to thermalize, %d "
        "between kept ones) on %s",
        plan.transform.name,
        plan.model.L,
        plan.lattice_sizes,
        plan.n_samples,
        plan.sampler["n_chains"],
        plan.sampler["algorithm"],
        plan.sampler["n_thermalize"],
        plan.sampler["n_between"],
        plan.device,
    )
    record = run(plan, show_progress=checks.flag("progress", cfg.get("progress", False)))
    record["config"] = OmegaConf.to_container(cfg, resolve=True)
    reports.write_outputs(record, output_dir)
    print(reports.table_markdown(record))
    log.info(
        "tau_int(E) = %.2f, tau_int(|M|) = %.2f (units of n_between sweeps); wall time %.1f s; "
        "results in %s",
        record["tau_int"]["energy"],
        record["tau_int"]["abs_magnetization"],
        record["wall_time_s"]["total"],
        output_dir,
    )
    return record
