"""One-shot GPU check: CUDA tests, sampler and training throughput, evaluate.py wall time.

    PYTHONPATH=src python3 benchmarks/gpu_check.py            # on a GPU machine, < 5 minutes
    PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --quick   # exercise it on a CPU

Steps, each with its own time budget; a step that fails or runs out of time is reported and the
others still run:

1. ``tests``: ``pytest -m "not slow"`` on the device-parametrized files (tests/test_devices.py,
   tests/test_ising.py, tests/test_fused.py), then every other test marked ``cuda``; passed /
   failed / skipped counts.
2. ``samplers``: for every sampler that runs on a torch device (``metropolis-fused``, the torch
   Swendsen-Wang cluster sampler ``swendsen-wang``, and the eager torch references ``metropolis``
   and ``heatbath``) at L = 32 and L = 128, K_c: spin updates per ns
   (chains x sweeps x L^2 / wall time of ``step``, compile excluded) and decorrelated configurations
   per second = chain-sweeps per second / (2 tau_int(|m|)), with tau_int(|m|) measured in the same
   run along every chain (flagged when the run was shorter than 50 tau_int: then tau_int is a lower
   bound and the decorrelated rate an upper bound).
   ``tuning``: the fused kernel's spin updates/ns at L = 32 for a few launch configurations
   (block size, chains per program, warps, one launch per half-sweep), to choose the defaults.
3. ``training``: CD-3 updates/s at the paper's settings (L = 32, 8x8 filter, minibatch 10) through
   benchmarks/training.py's bare loop and Lightning loop (torch backend), on the device, for one
   filter and for 16 replicas side by side (issue #13: 16 replicas for at most 2x the time of one).
   ``train``: ``python train.py trainer=gpu`` (the paper's setup, per-epoch MCRG, sampling
   included), whole process, stopped at its budget (issue #13: <= 30 s); the last epoch measured
   says how far it got.
4. ``evaluate``: whole-process wall time of ``python evaluate.py`` with 10^6 configurations of the
   fused sampler on the device (the committed filter results/paper_filter.pt), and its y_t(N_c = 7).

Writes one markdown table (with the GPU's name) to stdout, appends a JSON record with the table and
the raw figures to benchmarks/results/gpu_check.jsonl, and writes ``$OUT/gpu_check.md`` when the
environment variable OUT is set. Without CUDA (and without ``--device cpu``) it says so and exits 0.
``--quick`` shrinks every size (small lattices, short budgets) to check the script itself; quick
records are not appended unless ``--save`` is given.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.jsonl"
#: In this order: the fused kernel's own tests first, the slowest file (CPU samplers too) last.
TEST_FILES = ["tests/test_fused.py", "tests/test_devices.py", "tests/test_ising.py"]
#: (sampler, L, chains for throughput, chains for tau_int); spins are int8 for the fused kernel,
#: float32 (plus temporaries) for the eager references.
SAMPLER_CASES = [
    ("metropolis-fused", 32, 65536, 4096),
    ("metropolis-fused", 128, 4096, 1024),
    # Swendsen-Wang (issue 12): does a cluster update on the GPU beat the fused local one at large
    # L by decorrelated configurations/s? ~64 bytes a site during a sweep (int64 labels and
    # neighbour index): ~1 GB at L = 128 with 1024 chains.
    ("swendsen-wang", 32, 8192, 2048),
    ("swendsen-wang", 128, 1024, 256),
    ("metropolis", 32, 8192, 2048),
    ("heatbath", 32, 8192, 2048),
    ("metropolis", 128, 1024, 256),
    ("heatbath", 128, 1024, 256),
]
#: Share of the samplers step's time a fused or Swendsen-Wang case gets, relative to an eager
#: reference case (the eager references at L = 128 cannot measure tau_int in seconds anyway).
FUSED_WEIGHT = 2.5
WEIGHTED = ("metropolis-fused", "swendsen-wang")
QUICK_SAMPLER_CASES = [
    ("metropolis-fused", 4, 64, 32),
    ("metropolis", 8, 64, 32),
    ("swendsen-wang", 8, 64, 32),
    ("metropolis-fused", 8, 32, 16),
]


def log(message: str) -> None:
    print(message, flush=True)


class Budget:
    """Wall-clock budget of a step: ``left()`` seconds remain."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)


def python_path() -> str:
    """PYTHONPATH for the subprocesses: src/ first, then whatever the caller had."""
    return os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------------------
# 1. tests


def run_pytest(arguments: list[str], timeout: float) -> dict:
    """Run pytest in a subprocess; counts parsed from its summary line."""
    env = dict(os.environ, PYTHONPATH=python_path())
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *arguments]
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout or ""
        output = output.decode(errors="replace") if isinstance(output, bytes) else output
        return {"status": f"timed out after {timeout:.0f} s", "output_tail": output[-3000:]}
    output = done.stdout + done.stderr
    summary = next(
        (line for line in reversed(output.splitlines()) if re.search(r" in [\d.]+s", line)), ""
    )
    counts = {
        word: int(number)
        for number, word in re.findall(
            r"(\d+) (passed|failed|skipped|error|errors|deselected)", summary
        )
    }
    status = {0: "passed", 1: "failures", 5: "no tests selected"}.get(done.returncode, "error")
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    return {
        "status": status,
        "returncode": done.returncode,
        "counts": counts,
        "failed": failed,
        "output_tail": output[-3000:],
    }


def step_tests(args: argparse.Namespace, budget: Budget) -> dict:
    """One pytest run per file, so that a file that cannot be imported does not hide the others."""
    if args.quick:
        runs = {"tests/test_fused.py": ["tests/test_fused.py", "-k", "philox or bad_knobs"]}
    else:
        runs = {path: ["-m", "not slow", path] for path in TEST_FILES}
        # Every other file that uses the cuda marker (importing the rest needs wandb & co.).
        for path in sorted((ROOT / "tests").glob("test_*.py")):
            name = str(path.relative_to(ROOT))
            if name not in runs and "mark.cuda" in path.read_text():
                runs[name] = ["-m", "cuda and not slow", name]
    result = {}
    for index, (name, arguments) in enumerate(runs.items()):
        # All that is left, but 15 s for each file still to run.
        timeout = budget.left() - 15 * (len(runs) - index - 1)
        result[name] = run_pytest(arguments, timeout=max(10.0, timeout))
        part = result[name]
        log(f"  {name}: {part['status']} {part.get('counts', {})}")
        for test in part.get("failed", []):
            log(f"    FAILED {test}")
    return result


# --------------------------------------------------------------------------------------------------
# 2. samplers


def sweep_rate(sampler, n_chains: int, device: torch.device, seconds: float) -> float:
    """Chain-sweeps per second of ``step`` (first call, i.e. compilation, excluded)."""
    state = sampler.step(sampler.init(n_chains), 2)
    synchronize(device)
    sweeps, elapsed = 1, 0.0
    while elapsed < seconds:
        sweeps *= 2
        synchronize(device)
        start = time.perf_counter()
        state = sampler.step(state, sweeps)
        synchronize(device)
        elapsed = time.perf_counter() - start
    return n_chains * sweeps / elapsed


def tau_abs_m(sampler, n_chains: int, expected_tau: float, rate: float, seconds: float) -> dict:
    """tau_int(|m|) in sweeps from one run, bounded by ``seconds``.

    Thermalizes for 20 expected tau_int (``expected_tau`` from docs/sampler.md's measurement and
    the dynamic exponent of rbmrg.lattice.samplers), at least 200 sweeps (a cluster sampler's
    tau_int of a few sweeps says nothing about its way from the hot start; the local samplers' 20
    tau_int are far above 200), then keeps |m| every ``spacing ~ expected_tau / 8`` sweeps of
    ``n_chains`` chains until 100 expected tau_int are recorded. When the chain-sweep ``rate`` says that would not fit
    in ``seconds``, fewer chains are used (down to 64), and if even that does not fit the
    measurement is not made. ``run_in_tau`` is the recorded length in units of the measured
    tau_int; below 50 the estimate is flagged as unreliable.
    """
    from rbmrg.lattice.model import magnetization
    from rbmrg.lattice.sampling import autocorrelation_time

    spacing = max(1, round(expected_tau / 8))
    thermalize = max(200, math.ceil(20 * expected_tau))
    recorded = math.ceil(100 * expected_tau)
    needed = (thermalize + recorded) / rate  # seconds per chain
    if needed * n_chains > seconds:
        n_chains = max(min(64, n_chains), int(seconds / needed))
    if needed * n_chains > seconds:
        raise TimeoutError(
            f"tau_int(|m|) not measured: {thermalize + recorded} sweeps of {n_chains} chains need "
            f"~{needed * n_chains:.0f} s at this rate, {seconds:.0f} s left"
        )
    start = time.perf_counter()
    state = sampler.init(n_chains)
    chunk = max(1, thermalize // 10)
    for done in range(0, thermalize, chunk):
        state = sampler.step(state, min(chunk, thermalize - done))
        if time.perf_counter() - start > seconds:
            raise TimeoutError("tau_int(|m|) not measured: ran out of time while thermalizing")
    series = []
    while len(series) * spacing < recorded and (
        time.perf_counter() - start < seconds or len(series) < 8
    ):
        state = sampler.step(state, spacing)
        series.append(magnetization(sampler.spins_of(state)).abs().cpu())
    tau, error, _ = autocorrelation_time(torch.stack(series))
    tau_sweeps, error_sweeps = spacing * tau, spacing * error
    run_in_tau = len(series) * spacing / tau_sweeps if tau_sweeps > 0 else float("nan")
    return {
        "tau_int_abs_m": tau_sweeps,
        "tau_int_abs_m_err": error_sweeps,
        "tau_chains": n_chains,
        "spacing": spacing,
        "thermalize": thermalize,
        "kept_per_chain": len(series),
        "run_in_tau": run_in_tau,
        "reliable": bool(run_in_tau >= 50),
        "seconds": time.perf_counter() - start,
    }


def step_samplers(args: argparse.Namespace, budget: Budget, device: torch.device) -> list[dict]:
    from rbmrg.lattice.model import IsingModel
    from rbmrg.lattice.samplers import default_spacing, make_sampler

    cases = QUICK_SAMPLER_CASES if args.quick else SAMPLER_CASES
    rows = []
    weights = [FUSED_WEIGHT if case[0] in WEIGHTED else 1.0 for case in cases]
    for index, (algorithm, L, chains, tau_chains) in enumerate(cases):
        # What is left, shared by the cases still to run (the fused and SW ones count most).
        case_budget = Budget(budget.left() * weights[index] / sum(weights[index:]))
        row = {"algorithm": algorithm, "L": L, "chains": chains, "tau_chains": tau_chains}
        try:
            if case_budget.seconds < 2:
                raise TimeoutError("no time left in the samplers step")
            model = IsingModel(L=L)
            sampler = make_sampler(model, algorithm, device, seed=1)
            rate = sweep_rate(sampler, chains, device, seconds=min(2.0, case_budget.seconds / 5))
            row.update(updates_per_ns=rate * model.n_sites / 1e9, chain_sweeps_per_s=rate)
            expected = default_spacing(algorithm, L)[1] / 2  # tau_int(|m|) from docs/sampler.md
            tau = tau_abs_m(sampler, tau_chains, expected, rate, seconds=case_budget.left())
            row.update(status="ok", decorrelated_per_s=rate / (2 * tau["tau_int_abs_m"]), **tau)
            flag = "" if tau["reliable"] else f" (run = {tau['run_in_tau']:.0f} tau: lower bound)"
            log(
                f"  {algorithm:>16} L={L:<4}: {row['updates_per_ns']:8.3g} updates/ns, tau_int(|m|) "
                f"{tau['tau_int_abs_m']:.1f}({tau['tau_int_abs_m_err']:.1f}) sweeps{flag}, "
                f"{row['decorrelated_per_s']:.3g} decorrelated/s"
            )
        except Exception as error:  # report and go on with the next case
            row.update(status=f"{type(error).__name__}: {error}")
            rate = row.get("updates_per_ns")
            log(
                f"  {algorithm:>16} L={L:<4}: "
                + (f"{rate:8.3g} updates/ns, " if rate is not None else "")
                + row["status"]
            )
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------------
# 2b. launch knobs of the fused kernel

#: (block_size, chains_per_program, num_warps, half_sweeps_per_launch); None = the default.
TUNING_CASES = [
    (None, None, 4, None),
    (512, None, 4, None),
    (2048, None, 4, None),
    (4096, None, 8, None),
    (None, 4, 4, None),
    (None, 64, 4, None),
    (None, None, 4, 1),
]


def step_tuning(args: argparse.Namespace, budget: Budget, device: torch.device) -> list[dict]:
    """Spin updates/ns of metropolis-fused at L = 32 for a few launch configurations."""
    from rbmrg.lattice.fused import metropolis_fused
    from rbmrg.lattice.model import IsingModel

    L, chains = (8, 64) if args.quick else (32, 65536)
    model = IsingModel(L=L)
    rows = []
    for block_size, per_program, warps, per_launch in TUNING_CASES[: 3 if args.quick else None]:
        knobs = dict(
            block_size=block_size,
            chains_per_program=per_program,
            num_warps=warps,
            half_sweeps_per_launch=per_launch,
        )
        row = {"L": L, "chains": chains, "knobs": knobs}
        rows.append(row)
        if budget.left() < 3:
            row["status"] = "not run (time)"
            continue
        try:
            sampler = metropolis_fused(model, device, 1, **knobs)
            rate = sweep_rate(sampler, chains, device, seconds=min(1.0, budget.left() / 4))
            row.update(status="ok", updates_per_ns=rate * model.n_sites / 1e9)
            log(f"  {knobs}: {row['updates_per_ns']:.3g} updates/ns")
        except Exception as error:
            row["status"] = f"{type(error).__name__}: {error}"
            log(f"  {knobs}: {row['status']}")
    return rows


# --------------------------------------------------------------------------------------------------
# 3. training


def step_training(args: argparse.Namespace, budget: Budget, device: torch.device) -> dict:
    """CD-3 updates/s through benchmarks/training.py's loops (torch backend), for one filter and
    for R replicas trained side by side (issue #13: 16 replicas for at most 2x the time of one)."""
    import training  # benchmarks/training.py (this directory is on sys.path)

    spins = torch.randint(0, 2, (2000, 32, 32), device=device) * 2.0 - 1.0
    result: dict = {"code_path": "benchmarks/training.py, backend=torch"}
    for replicas in (1, 2 if args.quick else 16):
        settings = argparse.Namespace(
            L=32,
            filter_size=8,
            stride=2,
            cd_k=3,
            batch_size=10,
            # data.updates_per_step's default (updates per Lightning step); --quick runs 3 steps
            # of 20, since the Lightning loop's clock starts at the first step after the warmup.
            updates_per_step=20 if args.quick else 200,
            steps=50 if args.quick else (1000 if replicas == 1 else 400),
            warmup=5 if args.quick else 50,
            replicas=replicas,
        )
        result[f"settings_r{replicas}"] = vars(settings)
        suffix = "" if replicas == 1 else f"_r{replicas}"
        for name, loop in (("bare", training.bare_loop), ("lightning", training.lightning_loop)):
            if budget.left() < 5:
                result[f"{name}_updates_per_s{suffix}"] = None
                continue
            rate = loop(spins, settings, device.type, "torch")
            result[f"{name}_updates_per_s{suffix}"] = rate
            log(f"  CD-3 {name:>9} loop, {replicas:2d} replica(s): {rate:8.0f} updates/s")
    return result


# --------------------------------------------------------------------------------------------------
# 4. evaluate.py


def sampler_group() -> str:
    """The config group that holds the sampler's keys in conf/evaluate.yaml (``data`` or
    ``sampler``: it was renamed once), found as the top-level block with an ``algorithm:`` key."""
    group = None
    for line in (ROOT / "conf" / "evaluate.yaml").read_text().splitlines():
        top = re.match(r"^([A-Za-z_]\w*):\s*(#.*)?$", line)
        if top:
            group = top.group(1)
        elif group and re.match(r"^\s+algorithm:", line):
            return group
    raise RuntimeError("conf/evaluate.yaml has no block with an 'algorithm:' key")


def step_train(args: argparse.Namespace, budget: Budget, device: torch.device) -> dict:
    """``python train.py trainer=gpu`` (the paper's setup, per-epoch MCRG, sampling in a fresh data
    directory included), whole process, stopped at the budget: issue #13's <= 30 s. A run that
    does not finish reports the last epoch its MCRG history reached. ``--quick``: the smoke
    experiment on ``trainer=cpu``, to check the step."""
    trainer = "gpu" if device.type == "cuda" else "cpu"
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            f"trainer={trainer}",
            *(["experiment=smoke"] if args.quick else []),
            "logger=csv",
            "data.progress=false",
            f"hydra.run.dir={run_dir}/run",
        ]
        if not args.quick:  # smoke keeps its samples in the run directory itself
            overrides.append(f"data.data_dir={run_dir}/data")
        env = dict(os.environ, PYTHONPATH=python_path(), WANDB_MODE="disabled")
        limit = max(10.0, budget.left())
        start = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "train.py", *overrides],
                cwd=ROOT,
                env=env,
                capture_output=True,
                text=True,
                timeout=limit,
            )
            returncode, output = done.returncode, done.stdout + done.stderr
        except subprocess.TimeoutExpired:
            returncode, output = None, ""
        wall = time.perf_counter() - start
        history = Path(run_dir) / "run" / "mcrg_history.csv"
        epochs = (
            [line.split(",")[0] for line in history.read_text().splitlines()[1:]]
            if history.exists()
            else []
        )
        result = {
            "command": "PYTHONPATH=src python train.py "
            + " ".join(overrides[: -1 if args.quick else -2]),
            "wall_s": wall,
            "last_epoch_measured": int(epochs[-1]) if epochs else None,
        }
    if returncode is None:
        result["status"] = f"did not finish in {limit:.0f} s"
    elif returncode != 0:
        result["status"] = "failed"
        result["output_tail"] = output[-3000:]
        log(f"  train.py failed (exit {returncode}):\n{output[-1500:]}")
    else:
        result["status"] = "ok"
    log(
        f"  train.py trainer={trainer}: {result['status']}, {wall:.1f} s, last epoch measured {result['last_epoch_measured']}"
    )
    return result


def step_evaluate(args: argparse.Namespace, budget: Budget, device: torch.device) -> dict:
    from rbmrg.lattice.samplers import default_algorithm, default_spacing

    algorithm = default_algorithm(device)
    n_thermalize, n_between = default_spacing(algorithm, 32)
    n_samples, n_chains = (2000, 100) if args.quick else (1_000_000, 20_000)
    group = sampler_group()
    with tempfile.TemporaryDirectory() as run_dir:
        overrides = [
            "ckpt_path=results/paper_filter.pt",
            f"{group}.device={device.type}",
            f"{group}.algorithm={algorithm}",
            f"{group}.n_chains={n_chains}",
            f"{group}.n_thermalize={20 if args.quick else n_thermalize}",
            f"{group}.n_between={n_between}",
            f"mcrg.n_samples={n_samples}",
            "progress=false",
            "mcrg.couplings=false",  # exponents only, as the earlier records
            f"{group}.data_dir=null",  # sample every time: a cached stream would time a read
            f"hydra.run.dir={run_dir}",
        ]
        command = [sys.executable, "evaluate.py", *overrides]
        env = dict(os.environ, PYTHONPATH=python_path(), WANDB_MODE="disabled")
        start = time.perf_counter()
        done = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=max(10.0, budget.left()),
        )
        wall = time.perf_counter() - start
        result = {
            "command": "PYTHONPATH=src python evaluate.py " + " ".join(overrides[:-1]),
            "returncode": done.returncode,
            "wall_s": wall,
            "n_samples": n_samples,
        }
        if done.returncode != 0:
            result["status"] = "failed"
            result["output_tail"] = (done.stdout + done.stderr)[-3000:]
            log(f"  evaluate.py failed (exit {done.returncode}):\n{result['output_tail'][-1500:]}")
            return result
        result["status"] = "ok"
        report = Path(run_dir) / "mcrg.json"
        if report.exists():
            numbers = json.loads(report.read_text())
            try:
                result["y_t_nr1_nc7"] = numbers["y_t"][0][6]
                result["y_t_err_nr1_nc7"] = numbers["y_t_err"][0][6]
            except (KeyError, IndexError, TypeError):
                pass
            result["timings"] = {k: v for k, v in numbers.items() if "time" in k or "wall" in k}
    log(
        f"  evaluate.py, {n_samples} configurations, {algorithm} on {device.type}: "
        f"{wall:.1f} s for the whole process"
        + (f", y_t(1,7) = {result['y_t_nr1_nc7']:.4f}" if "y_t_nr1_nc7" in result else "")
    )
    return result


# --------------------------------------------------------------------------------------------------
# Report


def format_table(record: dict) -> str:
    lines = [
        f"GPU check on {record['device_name']} ({record['date']}, torch {record['torch']}, "
        f"triton {record['triton']}){' [quick]' if record['quick'] else ''}",
        "",
        "| figure | value | note |",
        "| --- | --- | --- |",
    ]
    tests = record["steps"].get("tests", {})
    for name, part in tests.get("result", {}).items():
        counts = part.get("counts", {})
        errors = counts.get("error", 0) + counts.get("errors", 0)
        lines.append(
            f"| tests: `{name}` | {counts.get('passed', 0)} passed, {counts.get('failed', 0)} failed,"
            f" {errors} errors, {counts.get('skipped', 0)} skipped | {part.get('status')} |"
        )
    if "error" in tests:
        lines.append(f"| tests | failed to run | {tests['error']} |")
    samplers = record["steps"].get("samplers", {})
    for row in samplers.get("result", []):
        label = f"`{row['algorithm']}`, L = {row['L']}"
        if row.get("status") != "ok":
            if row.get("updates_per_ns") is not None:
                lines.append(
                    f"| {label}: spin updates/ns | {row['updates_per_ns']:.3g} | "
                    f"{row['chains']} chains |"
                )
            lines.append(f"| {label}: decorrelated configurations/s | - | {row.get('status')} |")
            continue
        flag = (
            ""
            if row["reliable"]
            else f"; run only {row['run_in_tau']:.0f} tau: tau is a lower bound"
        )
        lines.append(
            f"| {label}: spin updates/ns | {row['updates_per_ns']:.3g} | {row['chains']} chains |"
        )
        lines.append(
            f"| {label}: decorrelated configurations/s | {row['decorrelated_per_s']:.3g} | "
            f"tau_int(abs m) = {row['tau_int_abs_m']:.1f}({row['tau_int_abs_m_err']:.1f}) sweeps, "
            f"{row['tau_chains']} chains{flag} |"
        )
    if "error" in samplers:
        lines.append(f"| samplers | failed | {samplers['error']} |")
    tuning = record["steps"].get("tuning", {})
    for row in tuning.get("result", []):
        knobs = ", ".join(f"{k}={v}" for k, v in row["knobs"].items() if v is not None)
        value = f"{row['updates_per_ns']:.3g}" if row.get("status") == "ok" else row.get("status")
        lines.append(
            f"| `metropolis-fused`, L = {row['L']}, {row['chains']} chains, {knobs}: "
            f"spin updates/ns | {value} | launch knobs (None = default) |"
        )
    training_step = record["steps"].get("training", {})
    if "result" in training_step:
        result = training_step["result"]
        replica_counts = [
            int(key.removeprefix("settings_r")) for key in result if key.startswith("settings_r")
        ]
        for replicas in replica_counts:
            suffix = "" if replicas == 1 else f"_r{replicas}"
            for name in ("bare", "lightning"):
                rate = result.get(f"{name}_updates_per_s{suffix}")
                value = f"{rate:.0f}" if rate else "not run (time)"
                one = result.get(f"{name}_updates_per_s")
                ratio = (
                    f"; {one / rate:.2f}x the time of one filter"
                    if rate and one and replicas > 1
                    else ""
                )
                lines.append(
                    f"| CD-3 updates/s, {name} loop, {replicas} replica(s) | {value} | L = 32, f = 8, "
                    f"minibatch 10, {result['code_path']}{ratio} |"
                )
    elif "error" in training_step:
        lines.append(f"| CD-3 updates/s | failed | {training_step['error']} |")
    train = record["steps"].get("train", {})
    if "result" in train:
        result = train["result"]
        value = f"{result['wall_s']:.1f} s" if result["status"] == "ok" else result["status"]
        lines.append(
            f"| train.py, whole process | {value} | `{result['command']}`; last epoch measured: "
            f"{result['last_epoch_measured']} |"
        )
    elif "error" in train:
        lines.append(f"| train.py | failed | {train['error']} |")
    evaluate = record["steps"].get("evaluate", {})
    if "result" in evaluate:
        result = evaluate["result"]
        value = f"{result['wall_s']:.1f} s" if result.get("status") == "ok" else "failed"
        y_t = (
            f"y_t(1,7) = {result['y_t_nr1_nc7']:.4f}({round(1e4 * result['y_t_err_nr1_nc7'])})"
            if "y_t_nr1_nc7" in result
            else ""
        )
        lines.append(
            f"| evaluate.py, {result['n_samples']} configurations, whole process | {value} | "
            f"`{result['command']}` {y_t} |"
        )
    elif "error" in evaluate:
        lines.append(f"| evaluate.py | failed | {evaluate['error']} |")
    for name, step in record["steps"].items():
        lines.append(f"| step {name}: wall time | {step.get('seconds', float('nan')):.1f} s | |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script")
    parser.add_argument("--save", action="store_true", help="append a quick run's record too")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument(
        "--steps",
        nargs="+",
        default=["tests", "samplers", "tuning", "training", "train", "evaluate"],
        choices=["tests", "samplers", "tuning", "training", "train", "evaluate"],
    )
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        log("gpu_check: no CUDA device on this machine; nothing to measure (exit 0).")
        log(
            "  (PYTHONPATH=src python3 benchmarks/gpu_check.py --device cpu --quick checks the script)"
        )
        return 0
    device = torch.device(args.device)
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    record = {
        "benchmark": "gpu_check",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": device.type,
        "device_name": torch.cuda.get_device_name()
        if device.type == "cuda"
        else platform.processor() or "CPU",
        "node": platform.node(),
        "torch": torch.__version__,
        "triton": triton_version,
        "python": sys.version.split()[0],
        "quick": args.quick,
        "command": "PYTHONPATH=src python3 benchmarks/gpu_check.py " + " ".join(sys.argv[1:]),
        "steps": {},
    }
    # Seconds per step: they add up to under 5 minutes on one GPU.
    # The H100 run of 2026-11-27 used 87, 51, 12, 19 and 17 s of them (no train step then).
    budgets = {
        "tests": 105,
        "samplers": 55,
        "tuning": 15,
        "training": 40,
        "train": 40,
        "evaluate": 45,
    }
    if args.quick:
        budgets = {
            "tests": 120,
            "samplers": 40,
            "tuning": 20,
            "training": 30,
            "train": 60,
            "evaluate": 60,
        }
    steps = {
        "tests": lambda budget: step_tests(args, budget),
        "samplers": lambda budget: step_samplers(args, budget, device),
        "tuning": lambda budget: step_tuning(args, budget, device),
        "training": lambda budget: step_training(args, budget, device),
        "train": lambda budget: step_train(args, budget, device),
        "evaluate": lambda budget: step_evaluate(args, budget, device),
    }
    total = time.perf_counter()
    for name in args.steps:
        log(f"[{name}] budget {budgets[name]} s")
        budget = Budget(budgets[name])
        entry: dict = {}
        try:
            entry["result"] = steps[name](budget)
        except Exception as error:  # one step failing must not stop the others
            entry["error"] = f"{type(error).__name__}: {error}"
            entry["traceback"] = traceback.format_exc()[-3000:]
            log(f"  step {name} failed: {entry['error']}")
        entry["seconds"] = budget.seconds - budget.left()
        record["steps"][name] = entry
    record["total_seconds"] = time.perf_counter() - total
    table = format_table(record)
    record["table"] = table
    log("")
    log(table)
    log(f"\ntotal: {record['total_seconds']:.0f} s")
    if not args.no_save and (args.save or not args.quick):
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        with RESULTS.open("a") as stream:
            stream.write(json.dumps(record, default=str) + "\n")
        log(f"appended to {RESULTS}")
    if os.environ.get("OUT"):
        out = Path(os.environ["OUT"]) / "gpu_check.md"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table + "\n")
        (out.parent / "gpu_check.json").write_text(json.dumps(record, indent=1, default=str))
        log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
