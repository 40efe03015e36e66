"""rbmrg.runs: every run (and every sweep) gets a directory of its own; a taken one is never written.

The first tests drive ``rbmrg.runs`` directly (racing processes, refusals, resume locks); the last ones
start ``python train.py`` the way users do: runs and sweeps started together, a rerun into a named
directory that holds a run (refused before Hydra writes anything: every file byte-identical).
"""

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_train import TINY as TRAIN_TINY

from rbmrg import runs

ROOT = Path(__file__).resolve().parents[1]
#: A tiny, valid run (test_train's, one epoch of 20 updates), no logger.
TINY = [*TRAIN_TINY, "trainer.max_epochs=1", "logger=none"]


def env(tmp_path: Path) -> dict:
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        NUMBA_NUM_THREADS="1",
        WANDB_MODE="offline",
        RBMRG_DATA_DIR=str(tmp_path / "data"),
        PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
    )


def start_train(tmp_path: Path, *overrides: str) -> subprocess.Popen:
    command = [sys.executable, str(ROOT / "train.py"), *overrides]
    return subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


# -------------------------------------------------------------------------------------------------
# rbmrg.runs on its own


def _claim_after(barrier, base: str, queue) -> None:
    barrier.wait()
    queue.put(runs.claim_new(base))


def test_processes_racing_for_one_name_get_distinct_directories(tmp_path):
    context = multiprocessing.get_context("fork")
    n = 6
    barrier, queue = context.Barrier(n), context.Queue()
    base = str(tmp_path / "outputs" / "12-00-00")
    workers = [context.Process(target=_claim_after, args=(barrier, base, queue)) for _ in range(n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    claimed = sorted(queue.get(timeout=5) for _ in range(n))
    assert claimed == sorted([base] + [f"{base}-{i}" for i in range(1, n)])
    for directory in claimed:
        (line,) = (Path(directory) / runs.MARKER).read_text().splitlines()
        assert json.loads(line)["event"] == "start"


def test_a_named_directory_holding_a_run_is_refused(tmp_path):
    directory = tmp_path / "paper"
    claim = runs.claim(directory, "hydra.run.dir")
    (directory / "mcrg_history.csv").write_text("epoch\n1\n")
    runs.release(claim)
    before = snapshot(directory)
    with pytest.raises(runs.RunDirError, match=rf"hydra.run.dir={directory} already holds a run"):
        runs.claim(directory, "hydra.run.dir")
    assert snapshot(directory) == before


def test_a_run_directory_from_before_markers_is_refused_and_left_alone(tmp_path):
    directory = tmp_path / "old"
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "last.ckpt").write_bytes(b"old run")
    with pytest.raises(runs.RunDirError, match="to resume that run in place, add ckpt_path="):
        runs.claim(directory, "hydra.run.dir")
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoints"]  # no marker left behind


def _hold(directory: str, ready, done) -> None:
    runs.claim(directory, "hydra.run.dir")
    ready.set()
    done.wait(timeout=60)


def test_resume_in_place_only_when_no_process_writes_there(tmp_path):
    directory = tmp_path / "run"
    checkpoint = directory / "checkpoints" / "last.ckpt"
    context = multiprocessing.get_context("fork")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(directory), ready, done))
    holder.start()
    assert ready.wait(timeout=60)
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"checkpoint")
    with pytest.raises(runs.RunDirError, match="another process is still writing to it"):
        runs.claim(directory, "hydra.run.dir", resume_from=checkpoint)
    done.set()
    holder.join(timeout=60)
    claim = runs.claim(directory, "hydra.run.dir", resume_from=checkpoint)  # the holder has ended
    assert claim.resumed
    lines = (directory / runs.MARKER).read_text().splitlines()
    events = [json.loads(line)["event"] for line in lines]
    assert events == ["start", "resume"]
    runs.release(claim)
    with pytest.raises(runs.RunDirError, match="already holds"):  # a fresh run still may not
        runs.claim(directory, "hydra.run.dir", resume_from=tmp_path / "elsewhere.ckpt")


def test_the_other_processes_of_a_ddp_run_work_in_rank_0s_directory(tmp_path, monkeypatch):
    """Lightning restarts train.py with LOCAL_RANK=1, ... and rank 0's hydra.run.dir."""
    directory = tmp_path / "run"
    rank0 = runs.hold_output_dir(directory)  # held by a running rank 0
    monkeypatch.setenv("LOCAL_RANK", "1")
    worker = runs.hold_output_dir(directory)
    assert worker.fd is None and worker.path == rank0.path
    runs.release(worker)
    assert runs.claim_new(str(tmp_path / "new")) == str(tmp_path / "new")  # no claim, no marker
    assert not (tmp_path / "new" / runs.MARKER).exists()
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(runs.RunDirError):  # the same process as a rank 0 elsewhere: refused
        runs.hold_output_dir(directory)
    runs.release(rank0)


def test_the_task_takes_over_the_claim_made_for_it_once(tmp_path):
    directory = runs.claim_new(str(tmp_path / "run"))
    claim = runs.hold_output_dir(directory)
    assert claim.taken and not claim.resumed
    runs.release(claim)
    with pytest.raises(runs.RunDirError, match="already holds"):
        runs.hold_output_dir(directory)


def test_a_sweep_job_may_start_where_hydra_wrote_its_config_and_log(tmp_path):
    job = tmp_path / "sweep" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / "train.log").write_text("")
    with pytest.raises(runs.RunDirError):  # what the Hydra callback sees: not empty
        runs.claim(job, "hydra.sweep.dir")
    runs.release(runs.hold_output_dir(job, setting="hydra.sweep.dir"))  # the job itself: its own


def test_a_resume_in_place_writes_its_config_beside_the_first(tmp_path):
    directory = tmp_path / "run"
    runs.release(runs.claim(directory, "hydra.run.dir"))
    (directory / ".hydra" / "resume-1").mkdir(parents=True)
    claim = runs.claim(directory, "hydra.run.dir", resume_from=directory / "last.ckpt")
    cfg = OmegaConf.create(
        {"hydra": {"runtime": {"output_dir": str(directory)}, "subdir": "${rbmrg.config_subdir:}"}}
    )
    assert cfg.hydra.subdir == ".hydra/resume-2"
    runs.release(claim)
    cfg = OmegaConf.create(
        {
            "hydra": {
                "runtime": {"output_dir": str(tmp_path / "new")},
                "x": "${rbmrg.config_subdir:}",
            }
        }
    )
    assert cfg.hydra.x == ".hydra"


@pytest.mark.parametrize("config, prefix", [("train", ""), ("evaluate", "/evaluate")])
def test_the_default_directories_are_claimed_fresh(config, prefix):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, return_hydra_config=True)
    raw = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert raw["run"]["dir"].startswith(f"${{rbmrg.new_dir:outputs{prefix}/${{now:")
    assert raw["sweep"]["dir"].startswith(f"${{rbmrg.new_dir:multirun{prefix}/${{now:")
    # Hydra imports the first callback's target (registering the resolvers) before it resolves
    # the second one's argument, which claims the directory.
    first, second = raw["callbacks"].values()
    assert first == {"_target_": "rbmrg.runs.RegisterResolvers"}
    assert second["_target_"] == "rbmrg.runs.ClaimOutputDir"


# -------------------------------------------------------------------------------------------------
# python train.py


@pytest.fixture(scope="module")
def started_together(tmp_path_factory):
    """Two runs and two one-job sweeps started at once, each pair under one name (one 'second')."""
    tmp_path = tmp_path_factory.mktemp("together")
    run_dir = "hydra.run.dir=${rbmrg.new_dir:" + str(tmp_path / "outputs" / "12-00-00") + "}"
    sweep_dir = "hydra.sweep.dir=${rbmrg.new_dir:" + str(tmp_path / "multirun" / "12-00-00") + "}"
    processes = {
        "run_seed1": start_train(tmp_path, *TINY, "seed=1", run_dir),
        "run_seed2": start_train(tmp_path, *TINY, "seed=2", run_dir),
        "sweep_seed3": start_train(tmp_path, "-m", *TINY, "seed=3", sweep_dir),
        "sweep_seed4": start_train(tmp_path, "-m", *TINY, "seed=4", sweep_dir),
    }
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, f"{name}:\n{stderr[-3000:]}"
    return tmp_path


def _seed(run: Path) -> str:
    overrides = OmegaConf.load(run / ".hydra" / "overrides.yaml")
    (seed,) = [o for o in overrides if o.startswith("seed=")]
    return seed


def test_runs_started_together_get_a_directory_each(started_together):
    outputs = started_together / "outputs"
    runs_ = sorted(p.name for p in outputs.iterdir())
    assert runs_ == ["12-00-00", "12-00-00-1"]
    assert sorted(_seed(outputs / name) for name in runs_) == ["seed=1", "seed=2"]
    for name in runs_:
        run = outputs / name
        (start,) = (run / runs.MARKER).read_text().splitlines()
        assert _seed(run) in " ".join(json.loads(start)["argv"])  # the marker names the same run
        assert (run / "mcrg_history.csv").exists()
        names = sorted(p.name for p in (run / "checkpoints").iterdir())
        assert names == ["epoch_000.ckpt", "last.ckpt"]


def test_sweeps_started_together_get_a_directory_each(started_together):
    multirun = started_together / "multirun"
    sweeps = sorted(p.name for p in multirun.iterdir())
    assert sweeps == ["12-00-00", "12-00-00-1"]
    seeds = []
    for name in sweeps:
        sweep = multirun / name
        task = OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task
        (seed,) = [o for o in task if o.startswith("seed=")]
        assert _seed(sweep / "0") == seed  # the job's config is its sweep's
        assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
            "0",
            "multirun.yaml",
        ]
        assert sorted(p.name for p in (sweep / "0" / "checkpoints").iterdir()) == [
            "epoch_000.ckpt",
            "last.ckpt",
        ]
        seeds.append(seed)
    assert sorted(seeds) == ["seed=3", "seed=4"]


def test_a_rerun_into_a_named_directory_is_refused_before_anything_is_written(tmp_path):
    """Also `experiment=smoke callbacks=none` (no checkpoints): its outputs are protected all the same."""
    directory = tmp_path / "paper"
    first = start_train(tmp_path, *TINY, "callbacks=none", f"hydra.run.dir={directory}")
    _, stderr = first.communicate(timeout=600)
    assert first.returncode == 0, stderr[-3000:]
    assert not (directory / "checkpoints").exists()
    assert (directory / "mcrg_history.csv").exists()
    assert (directory / "fig2_yt_vs_step.png").exists()
    before = snapshot(directory)
    assert {".hydra/config.yaml", ".hydra/overrides.yaml", "mcrg_history.csv"} <= set(before)

    again = start_train(tmp_path, *TINY, "callbacks=none", "seed=7", f"hydra.run.dir={directory}")
    _, stderr = again.communicate(timeout=600)
    assert again.returncode != 0
    assert f"hydra.run.dir={directory} already holds a run started" in stderr
    assert snapshot(directory) == before  # .hydra/, history, figures: byte-identical


def test_evaluate_refuses_a_named_directory_that_holds_results(tmp_path):
    directory = tmp_path / "table1"
    settings = [
        "transform=majority",
        "data.L=8",
        "data.n_chains=20",
        "data.n_thermalize=20",
        "mcrg.n_samples=2000",
        "mcrg.n_rg_steps=1",
        "progress=false",
        f"hydra.run.dir={directory}",
    ]
    command = [sys.executable, str(ROOT / "evaluate.py"), *settings]
    done = subprocess.run(command, cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    before = snapshot(directory)
    assert {".hydra/config.yaml", "mcrg.json", "table1.md"} <= set(before)
    again = subprocess.run(
        [*command, "mcrg.seed=7"], cwd=tmp_path, env=env(tmp_path), capture_output=True, text=True
    )
    assert again.returncode != 0
    assert f"hydra.run.dir={directory} already holds a run started" in again.stderr
    assert snapshot(directory) == before
