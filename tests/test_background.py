"""MCRG beside training (mcrg.background): the same measurements as in line, resumable."""

from __future__ import annotations

import os
import threading

import pytest
import torch
from omegaconf import open_dict
from test_train import TINY, compose_train, last_checkpoint, read_history

from rbmrg.training import run as training
from rbmrg.training.background import Background, resolve_background
from rbmrg.training.callbacks import MCRGCallback

CSV = [*TINY, "logger=csv", "trainer.max_epochs=3"]


def mcrg_rows(path) -> dict[str, dict[str, str]]:
    """The rows of metrics.csv that carry MCRG values, keyed by their step, MCRG columns only."""
    rows = {}
    for row in read_history(path):
        values = {k: v for k, v in row.items() if k.startswith("mcrg/") and v != ""}
        if values:
            rows[row["step"]] = values
    return rows


def test_measuring_beside_training_gives_the_measurements_in_line(tmp_path):
    """The same history (epoch, update count, exponents) and the same logged values at the same
    steps: the worker measures a snapshot of each epoch's filter."""
    threads = []
    measure = MCRGCallback.measure_replicas

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return measure(self, *args, **kwargs)

    results = {}
    for background in ("false", "true"):
        cfg = compose_train(tmp_path, [*CSV, f"mcrg.background={background}"], run=background)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(MCRGCallback, "measure_replicas", spy)
            metrics, _ = training.train(cfg)
        results[background] = metrics
    assert threads[:3] == ["MainThread"] * 3 and all(t.startswith("mcrg") for t in threads[3:])
    assert len(threads) == 6
    inline = read_history(tmp_path / "false" / "mcrg_history.csv")
    beside = read_history(tmp_path / "true" / "mcrg_history.csv")
    assert [row["epoch"] for row in inline if row["n_c"] == "1"] == ["1", "2", "3"]
    assert_same_rows(beside, inline)
    logged = mcrg_rows(tmp_path / "true" / "csv" / "metrics.csv")
    expected = mcrg_rows(tmp_path / "false" / "csv" / "metrics.csv")
    assert sorted(logged) == sorted(expected) and len(logged) == 3  # the same steps
    for step in expected:
        assert_same_rows([logged[step]], [expected[step]])
    key = "mcrg/y_t/nr1_nc3"  # what a sweeper gets: the last epoch's value either way
    assert results["true"][key] == pytest.approx(results["false"][key], rel=1e-6)


def assert_same_rows(rows: list[dict[str, str]], expected: list[dict[str, str]]) -> None:
    """Equal rows; numbers equal to 1e-6 relative: the worker's torch runs on one thread, the
    main thread here on two, so float32 sums are added in another order (nothing else differs)."""
    assert [sorted(row) for row in rows] == [sorted(row) for row in expected]
    for row, other in zip(rows, expected, strict=True):
        for name, value in row.items():
            if name in ("epoch", "step", "n_r", "n_c", "replica") or value == other[name]:
                assert value == other[name]
            else:
                assert float(value) == pytest.approx(float(other[name]), rel=1e-6), name


def test_a_snapshot_not_yet_measured_is_checkpointed_and_measured_after_resume(tmp_path):
    """Epoch 1 is recorded when epoch 2 ends, so a run killed in epoch 2 has checkpointed epoch 1's
    snapshot, not its result; the resumed run measures it, and the history equals that of an
    uninterrupted run (tests/test_resume.py: metrics.csv too, resumed in place)."""
    overrides = [*CSV, "callbacks.step_checkpoint.every_n_train_steps=5"]
    cfg = compose_train(tmp_path, [*overrides, "mcrg.background=true"], run="reference")
    training.train(cfg)

    cfg = compose_train(tmp_path, [*overrides, "mcrg.background=true"], run="crashed")
    with open_dict(cfg):
        cfg.callbacks.kill = {"_target_": "test_train.Kill", "at_step": 35}
    with pytest.raises(RuntimeError, match="killed at step 35"):
        training.train(cfg)
    state = last_checkpoint(tmp_path / "crashed")["callbacks"]["MCRGCallback"]
    assert state["history"] == [] and [w["epoch"] for w in state["unmeasured"]] == [1]
    assert torch.equal(state["unmeasured"][0]["weight"], state["filters"][1])

    checkpoint = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    cfg = compose_train(
        tmp_path, [*overrides, "mcrg.background=true", f"ckpt_path={checkpoint}"], run="resumed"
    )
    training.train(cfg)
    reference = read_history(tmp_path / "reference" / "mcrg_history.csv")
    assert read_history(tmp_path / "resumed" / "mcrg_history.csv") == reference


def test_background_setting():
    cpu = torch.device("cpu")
    assert resolve_background(True, cpu, 4) and not resolve_background(False, cpu, 1)
    assert not resolve_background("auto", cpu, 1)  # in line on the CPU (docs/training.md)
    assert resolve_background("auto", torch.device("cuda"), 1)
    assert not resolve_background("auto", torch.device("cuda"), 2)  # DDP: rank zero in line
    with pytest.raises(ValueError, match="mcrg.background='maybe'"):
        MCRGCallback(background="maybe")


def test_training_keeps_one_core_the_worker_takes_the_rest_and_threads_come_back():
    before = torch.get_num_threads()
    worker = Background(torch.device("cpu"))
    try:
        worker.submit({"n": 1}, torch.get_num_threads)
        worker.submit({"n": 2}, lambda: 2 + 2)
        cores = len(os.sched_getaffinity(0))
        assert worker.finished(keep=1) == [({"n": 1}, max(1, cores - 1))]
        assert worker.finished(keep=0) == [({"n": 2}, 4)] and worker.finished() == []
        assert torch.get_num_threads() == 1  # training's share
    finally:
        worker.close()
    assert torch.get_num_threads() == before
