"""Every bad setting is refused before any Monte Carlo sampling, with a message naming it (issue 10, §4).

Each case composes the config the command line would (``python train.py experiment=smoke ...`` or
``python evaluate.py ...``), calls :func:`rbmrg.training.run.train` or
:func:`rbmrg.evaluation.evaluate` directly, and checks that

* a ValueError (a FileNotFoundError for a missing checkpoint) is raised whose message holds the full
  config key with its value, e.g. ``model.persistent='maybe'``;
* no sampling started: the samplers' entry points are replaced by a function that fails the test,
  and no sample cache file appears.

docs/validation.md tabulates the cases: what happened before, the message now, and the test here.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from test_evaluate import TINY as EVALUATE_TINY
from test_evaluate import config as compose_evaluate
from test_train import TINY, compose_train

from rbmrg import evaluation
from rbmrg.training import data
from rbmrg.training import run as training


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail the test if anything starts drawing configurations (wherever the samplers were imported)."""

    def refuse(*args, **kwargs):
        raise AssertionError("Monte Carlo sampling started before the settings were checked")

    # The samplers' users (data, evaluation) are imported at the top of this file: a module first
    # imported while the patch is on would keep the refusing function for good.
    loaded = {id(m): m for n, m in list(sys.modules.items()) if n.startswith("rbmrg") and m}
    for module in loaded.values():
        for entry in ("draw_samples", "iterate_samples"):
            if hasattr(module, entry):
                monkeypatch.setattr(module, entry, refuse)
    assert data.draw_samples is refuse and evaluation.iterate_samples is refuse


def refused_in_train(tmp_path: Path, overrides: list[str], message: str, error=ValueError) -> str:
    cfg = compose_train(tmp_path, [*TINY, "logger=none", *overrides])
    with pytest.raises(error) as caught:
        training.train(cfg)
    text = str(caught.value)
    assert message in text
    assert not (tmp_path / "data").exists()  # no sample cache was written
    return text


# -------------------------------------------------------------------------------------------------
# train.py: settings refused before sampling

CUDA = torch.cuda.is_available()


def cases(*entries):
    """(overrides, message) pairs as test parameters named by their overrides."""
    return [
        pytest.param(*entry, id=" ".join(entry[0])) if type(entry) is tuple else entry
        for entry in entries
    ]


@pytest.mark.parametrize(
    "overrides, message",
    cases(
        # late before: ZeroDivisionError after a whole epoch
        (["model.stride=1"], "model.stride=1: must be an integer >= 2"),
        # late before: failed after epoch 1
        (["mcrg.batch_size=0"], "mcrg.batch_size=0: must be an integer >= 1"),
        # silently accepted before: any non-empty string switched persistent CD on
        (["model.persistent=maybe"], "model.persistent='maybe': must be true or false"),
        # silently accepted before: -1 runs forever, 0 trains nothing
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1: must be an integer >= 1"),
        (["trainer.max_epochs=0"], "trainer.max_epochs=0: must be an integer >= 1"),
        # cut to 20 blocks before; evaluate refused it: one rule (rbmrg.rg.mcrg.check_blocks)
        (["mcrg.n_blocks=50"], "mcrg.n_blocks=50 > data.n_chains=20"),
        (["mcrg.n_blocks=10"], "mcrg.n_blocks=10: use at least 20 jackknife blocks"),
        # quietly raised to 20 chains before
        (["mcrg.n_samples=5"], "mcrg.n_samples=5: MCRG takes whole chains"),
        (["mcrg.n_samples=210"], "mcrg.n_samples=210: MCRG takes whole chains"),
        # cut silently to what the lattice allowed before; refused as in evaluate (level_sizes)
        (["mcrg.n_rg_steps=2"], "data.L=8 with mcrg.n_rg_steps=2: level 1 has L=4"),
        # messages that did not name the setting before
        (["seed=-1"], "seed=-1: must be an integer in [0, 4294967295]"),
        (["threads=-1"], "threads=-1: must be an integer >= 1"),
        (["model.betas=[2,0.999]"], "model.betas=[2, 0.999]: Adam's (beta1, beta2) must be"),
        (["data.coupling=abc"], "data.coupling='abc': must be a number"),
        # a constructor's refusal comes out as its ValueError, not wrapped by Hydra
        (["model.cd_k=0"], "model.cd_k=0"),
        # new setting (issue 13): R independent filters
        (["model.n_replicas=0"], "model.n_replicas=0: must be an integer >= 1"),
        (["model.n_replicas=1.5"], "model.n_replicas=1.5: must be an integer >= 1"),
        # failed at the first update, after sampling
        (["data.dim=3", "model.filter_size=2", "model.backend=numba"], "model.backend='numba'"),
        pytest.param(
            ["data.device=cuda"],
            "data.device='cuda': ",
            marks=pytest.mark.skipif(CUDA, reason="CUDA present: the setting is valid"),
            id="data.device=cuda",
        ),
    ),
)
def test_train_refuses_a_bad_setting_before_sampling(tmp_path, no_sampling, overrides, message):
    refused_in_train(tmp_path, overrides, message)


def test_train_refuses_a_cache_dir_that_is_a_file(tmp_path, no_sampling):
    cache = tmp_path / "cache"
    cache.write_text("not a directory")
    for data_dir, why in ((cache, "is a file"), (cache / "sub", "lies under the file")):
        cfg = compose_train(tmp_path, [*TINY, "logger=none"], run=f"run-{why[:3]}")
        OmegaConf.update(cfg, "data.data_dir", str(data_dir))
        with pytest.raises(ValueError, match=f"data.data_dir='{data_dir}': {why}"):
            training.train(cfg)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_train_refuses_a_read_only_cache_dir(tmp_path, no_sampling):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o500)
    cfg = compose_train(tmp_path, [*TINY, "logger=none"])
    OmegaConf.update(cfg, "data.data_dir", str(cache))
    with pytest.raises(ValueError, match=f"data.data_dir='{cache}': cannot be written"):
        training.train(cfg)


# -------------------------------------------------------------------------------------------------
# Memory: the sample sets must fit


def test_train_refuses_sets_larger_than_the_memory_with_the_figure(
    tmp_path, no_sampling, monkeypatch
):
    monkeypatch.setattr(training, "available_memory", lambda: 2**30)
    # (200 + 400) x 1024^2 int8 + 4 x 200 x 1024^2 float32 bytes = 1.37 GiB > 1 GiB
    text = refused_in_train(tmp_path, ["data.L=1024"], "data.L=1024: the sample sets need")
    assert "at least 1.4 GiB" in text and "the 1.0 GiB available" in text


def test_train_refuses_l_20000_on_this_machine(tmp_path, no_sampling):
    if training.available_memory() is None:
        pytest.skip("this platform does not tell the available memory")
    refused_in_train(tmp_path, ["data.L=20000"], "data.L=20000: the sample sets need at least")


def test_memory_figure_and_the_skip_where_the_platform_does_not_tell(monkeypatch, caplog):
    data = OmegaConf.create({"L": 32, "dim": 2, "n_train": 10_000, "n_val": 50_000})
    sites = 32**2
    cpu = training.sample_set_bytes(data, torch.device("cpu"))
    assert cpu == {"host": 60_000 * sites + 4 * 10_000 * sites, "device": 0}
    cuda = training.sample_set_bytes(data, torch.device("cuda"))
    assert cuda == {"host": 60_000 * sites, "device": 4 * 10_000 * sites}
    monkeypatch.setattr(training, "available_memory", lambda: None)
    with caplog.at_level(logging.INFO, logger=training.log.name):
        training.check_memory(OmegaConf.create({**data, "L": 20_000}), torch.device("cpu"))
    assert "memory check skipped" in caplog.text
    with pytest.raises(ValueError, match="in each of 2 processes"):
        monkeypatch.setattr(training, "available_memory", lambda: cpu["host"] + 1)
        training.check_memory(data, torch.device("cpu"), processes=2)


# -------------------------------------------------------------------------------------------------
# Resume: a checkpoint that is missing, damaged, not a file, or of other settings


def fake_checkpoint(path: Path, filter_size: int = 4) -> Path:
    """What check_checkpoint reads of a Lightning checkpoint of TINY (no training needed)."""
    torch.save(
        {
            "state_dict": {"rbm.weight": torch.zeros(filter_size, filter_size)},
            "loops": {},
            "global_step": 20,
            "hyper_parameters": {"filter_size": filter_size, "stride": 2, "cd_k": 3},
            "datamodule_hyper_parameters": {"L": 8, "n_train": 200, "n_val": 400},
        },
        path,
    )
    return path


def unreadable(path: Path, case: str) -> Path:
    """``path`` made into the bad file ``case`` names (empty, text, a directory), else left alone."""
    if case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("epoch 3, y_t = 0.99\n")
    elif case == "directory":
        path.mkdir()
    return path


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("empty", "empty file"),
        ("text", "not a torch checkpoint"),
        ("directory", "is a directory"),
        ("truncated", "damaged torch checkpoint"),
        ("other settings", "model.filter_size=4 here, 2 in the checkpoint"),
    ],
)
def test_train_refuses_a_bad_resume_checkpoint_before_sampling(
    tmp_path, no_sampling, case, message
):
    path = unreadable(tmp_path / f"{case.replace(' ', '_')}.ckpt", case)
    if case == "truncated":
        whole = fake_checkpoint(tmp_path / "whole.ckpt").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
    elif case == "other settings":
        fake_checkpoint(path, filter_size=2)
    error = FileNotFoundError if case == "missing" else ValueError
    text = refused_in_train(tmp_path, [f"ckpt_path={path}"], message, error)
    assert f"ckpt_path={path}" in text


# -------------------------------------------------------------------------------------------------
# train.py: what must work


def test_train_on_the_cubic_lattice_runs(tmp_path):
    """data.dim=3 (documented in conf/data/ising.yaml) trains and measures, end to end."""
    cfg = compose_train(
        tmp_path,
        [*TINY, "logger=none", "data.dim=3", "model.filter_size=2", "trainer.max_epochs=1"],
    )
    metrics, objects = training.train(cfg)
    assert objects["model"].rbm.weight.shape == (2, 2, 2)
    assert "mcrg/y_t/nr1_nc1" in metrics


# -------------------------------------------------------------------------------------------------
# evaluate.py: the same rules


@pytest.mark.parametrize(
    "overrides, message",
    cases(
        # printed numbers on a 1x1 level before
        (["transform=majority", "mcrg.n_rg_steps=4"], "data.L=16 with mcrg.n_rg_steps=4"),
        (["transform=majority", "data.coupling=abc"], "data.coupling='abc': must be a number"),
        (["transform=majority", "mcrg.n_blocks=50"], "mcrg.n_blocks=50 > data.n_chains=40"),
        (["transform=majority", "mcrg.n_samples=5"], "mcrg.n_samples=5 is not a multiple"),
        (["transform=majority", "mcrg.batch_size=0"], "mcrg.batch_size=0: must be an integer"),
        pytest.param(
            ["transform=majority", "data.device=cuda"],
            "data.device='cuda': ",
            marks=pytest.mark.skipif(CUDA, reason="CUDA present: the setting is valid"),
            id="transform=majority data.device=cuda",
        ),
    ),
)
def test_evaluate_refuses_a_bad_setting_before_sampling(tmp_path, no_sampling, overrides, message):
    with pytest.raises(ValueError) as caught:
        evaluation.evaluate(compose_evaluate(*EVALUATE_TINY, *overrides), tmp_path)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "no such file"),
        ("empty", "empty file"),
        ("text", "not a torch checkpoint"),
        ("directory", "is a directory"),
        ("stride 1", "model.stride=1: must be an integer >= 2"),
    ],
)
def test_evaluate_names_ckpt_path_for_a_bad_filter_file(tmp_path, no_sampling, case, message):
    path = unreadable(tmp_path / f"{case.replace(' ', '_')}.pt", case)
    if case == "stride 1":
        torch.save({"weight": torch.ones(2, 2), "stride": 1}, path)
    error = FileNotFoundError if case == "missing" else ValueError
    with pytest.raises(error) as caught:
        evaluation.evaluate(compose_evaluate(*EVALUATE_TINY, f"ckpt_path={path}"), tmp_path / "out")
    assert f"ckpt_path={path}: " in str(caught.value)
    assert message in str(caught.value)


# -------------------------------------------------------------------------------------------------
# The shipped setups pass every new rule


EXPERIMENTS = sorted(p.stem for p in (Path(__file__).parents[1] / "conf/experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", [None, *EXPERIMENTS])
def test_every_experiment_passes_the_checks(tmp_path, experiment):
    overrides = [] if experiment is None else [f"experiment={experiment}"]
    cfg = compose_train(tmp_path, overrides)
    training.check_settings(cfg)
    mcrg = training.build(cfg.mcrg)
    sizes = [cfg.model.filter_size]
    if experiment is not None:  # and every filter size a sweep of the experiment sets
        setup = OmegaConf.load(Path(__file__).parents[1] / f"conf/experiment/{experiment}.yaml")
        swept = OmegaConf.select(setup, "hydra.sweeper.params", default={}).get("model.filter_size")
        sizes += [int(size) for size in str(swept).split(",")] if swept else []
    for filter_size in sizes:
        model = training.build(cfg.model, filter_size=filter_size, schedule=None)
        model.check_lattice(cfg.data.L, cfg.data.dim)
        plan = mcrg.plan(model.rbm, cfg.data.L, cfg.data.n_val, cfg.data.n_chains)
        assert plan.n_rows <= cfg.data.n_val
