"""rbmrg.evaluation and evaluate.py (Table 1 by MCRG), and the filter checkpoint helpers.

Runs are tiny (L = 8 or 16, a few thousand samples) and go through Hydra's compose API, so the
config file itself is what is tested; one subprocess run checks the command line end to end.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rbmrg import evaluation, sweep_cache
from rbmrg.checkpoint import load_rbm, save_filter
from rbmrg.rg.interactions import EVEN
from rbmrg.rg.rbm import ConvRBM
from rbmrg.training.data import IsingDataModule

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "data.L=16",
    "mcrg.n_samples=2000",
    "data.n_chains=40",
    "data.n_thermalize=20",
    "data.n_between=1",
    "mcrg.batch_size=200",
    "progress=false",
]


def config(*overrides: str):
    """The composed evaluate config; no sample cache unless an override sets data.data_dir (its
    default needs a Hydra run, and the tests must not write into the repository's data/)."""
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=["data.data_dir=null", *overrides])


@pytest.fixture
def no_sampling(monkeypatch):
    """Fail loudly if a run gets as far as drawing configurations."""

    def refuse(*args, **kwargs):
        raise AssertionError("sampling started before the settings were checked")

    monkeypatch.setattr(evaluation, "iterate_samples", refuse)


def test_every_config_field_has_a_comment():
    """Each setting (not the hydra: section or the defaults list) has a comment line above it."""
    lines = (ROOT / "conf" / "evaluate.yaml").read_text().split("\nhydra:")[0].splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("- "):  # the defaults list: its comment sits above the list
            continue
        if stripped and not stripped.startswith("#") and not stripped.endswith(":"):
            assert lines[number - 1].strip().startswith("#"), f"no comment above {line!r}"


def test_majority_run_writes_table_json_and_csv(tmp_path):
    record = evaluation.evaluate(config("transform=majority", *TINY), tmp_path)
    data = json.loads((tmp_path / "mcrg.json").read_text())
    for key in ("transform", "L", "n_samples", "level0", "tau_int", "wall_time_s", "sampler"):
        assert key in data
    assert data["transform"] == "majority" and data["L"] == 16 and data["n_samples"] == 2000
    for key in ("y_t", "y_t_err", "y_h", "y_h_err"):
        assert [len(row) for row in data[key]] == [7, 7], key
    # Level sizes 16, 8, 4: on the 4x4 level the span-2 interactions are undefined -> null.
    assert data["lattice_sizes"] == [16, 8, 4]
    assert all(v is not None for v in data["y_t"][0])
    assert data["y_t"][1][:3] != [None] * 3 and data["y_t"][1][3:] == [None] * 4
    assert any("do not fit" in w for w in data["warnings"])
    assert [entry["name"] for entry in data["level0"]] == [i.name for i in EVEN]
    nn = data["level0"][0]
    # Two bonds per site, <s s'> ~ 0.7 near K_c: a sanity check on the per-site normalisation.
    assert 1.2 < nn["mean"] < 1.6 and 0 < nn["err"] < 0.05
    assert data["sampler"]["seed"] == 12345 and data["wall_time_s"]["total"] > 0
    assert math.isfinite(data["tau_int"]["energy"])
    rows = (tmp_path / "mcrg.csv").read_text().strip().splitlines()
    assert rows[0].startswith("exponent,N_r,N_c") and len(rows) == 1 + 2 * 2 * 7
    table = (tmp_path / "table1.md").read_text()
    assert "| N_c | y_t N_r=1 | y_t N_r=2 | y_h N_r=1 | y_h N_r=2 |" in table
    assert record["y_t"][0][0] == data["y_t"][0][0]


def test_rbm_run_from_a_saved_filter(tmp_path):
    torch.manual_seed(0)
    path = save_filter(tmp_path / "filter.pt", ConvRBM(2, 2, init_scale=1.0))
    out = tmp_path / "run"
    out.mkdir()
    cfg = config(f"ckpt_path={path}", *TINY, "data.L=8", "mcrg.n_rg_steps=1")
    evaluation.evaluate(cfg, out)
    data = json.loads((out / "mcrg.json").read_text())
    assert data["transform"] == "rbm" and data["filter_size"] == [2] and data["scale_factor"] == 2
    assert [len(row) for row in data["y_t"]] == [7]
    assert data["ckpt_path"] == [str(path)]


def write_garbage(path: Path) -> Path:
    path.write_bytes(b"not a torch file")
    return path


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["transform=rbm"], "ckpt_path=null"),
        (["ckpt_path=/nonexistent/filter.pt"], "/nonexistent/filter.pt"),
        (["transform=majority", "ckpt_path=x.pt"], "ckpt_path='x.pt'"),
        (["transform=majority", "mcrg.n_samples=2010"], "mcrg.n_samples=2010"),
        (["transform=majority", "mcrg.n_samples=0.5"], "mcrg.n_samples=0.5"),
        (["transform=majority", "mcrg.n_blocks=10"], "mcrg.n_blocks=10"),
        (["transform=majority", "mcrg.n_blocks=50"], "mcrg.n_blocks=50"),
        (["transform=majority", "mcrg.n_rg_steps=0"], "mcrg.n_rg_steps=0"),
        (["transform=majority", "data.L=7"], "data.L=7"),
        (["transform=majority", "data.L=12", "mcrg.n_rg_steps=3"], "data.L=12"),
        (["transform=majority", "mcrg.n_rg_steps=4"], "fewer than 4"),
        (["transform=majority", "data.algorithm=gibbs"], "data.algorithm='gibbs'"),
        (["transform=majority", "data.n_between=0"], "data.n_between=0"),
        (["transform=majority", "transform.block_size=1"], "transform.block_size=1"),
        (["transform=majority", "data.coupling=abc"], "data.coupling='abc'"),
        (["transform=majority", "data.seed=-1"], "data.seed=-1"),
        (["transform=majority", "mcrg.batch_size=0"], "mcrg.batch_size=0"),
        (["transform=majority", "data.algorithm=metropolis-msc", "data.dim=3"], "dim=3"),
        (["transform=majority", "data.dim=3", "data.n_between=auto"], "data.n_between=auto"),
        (["transform=majority", "data.device=gpu"], "data.device='gpu'"),
        (["transform=majority", "data.n_thermalize=some"], "data.n_thermalize='some'"),
        (["transform=majority", "mcrg.even_set=table1"], "mcrg.even_set='table1'"),
        (["transform=majority", "mcrg.even_set=[nn,magnetization]"], "are not even"),
        (["transform=majority", "mcrg.even_set=[nn,diag,nn]"], "listed twice"),
        (["transform=majority", "mcrg.odd_set=distance"], "mcrg.odd_set='distance'"),
        (["transform=majority", "data.dim=3", "mcrg.even_set=[nn,diag]"], "mcrg.even_set"),
        (["transform=majority", "mcrg.couplings=yes"], "mcrg.couplings='yes'"),
        (["transform=majority", "mcrg.couplings_samples=0"], "mcrg.couplings_samples=0"),
        (["transform=majority", "mcrg.couplings_samples=39"], "mcrg.couplings_samples=39"),
    ],
)
def test_bad_settings_are_named_before_sampling(tmp_path, no_sampling, overrides, message):
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        evaluation.evaluate(config(*TINY, *overrides), tmp_path)
    assert message in str(error.value)


def test_unreadable_checkpoint_and_too_large_filter(tmp_path, no_sampling):
    garbage = write_garbage(tmp_path / "garbage.ckpt")
    with pytest.raises(ValueError, match="garbage.ckpt"):
        evaluation.evaluate(config(*TINY, f"ckpt_path={garbage}"), tmp_path)
    big = save_filter(tmp_path / "big.pt", ConvRBM(8, 2))
    with pytest.raises(ValueError, match=r"8x8 filter does not fit level 1 \(L=4\)"):
        evaluation.evaluate(config(*TINY, "data.L=8", f"ckpt_path={big}"), tmp_path)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present: the setting is valid")
def test_cuda_without_cuda_is_named(tmp_path, no_sampling):
    with pytest.raises(ValueError, match="data.device='cuda'"):
        evaluation.evaluate(config(*TINY, "transform=majority", "data.device=cuda"), tmp_path)


def test_unknown_transform_is_named_by_hydra():
    with pytest.raises(Exception, match="transform/blocking"):
        config("transform=blocking")


def test_unthermalized_chains_are_flagged(tmp_path):
    """No thermalization: the hot start is visible in the energy, and every output says so."""
    record = evaluation.evaluate(
        config("transform=majority", *TINY, "data.n_thermalize=0", "mcrg.n_rg_steps=1"), tmp_path
    )
    assert record["thermalized"] is False
    assert record["warnings"][0].startswith("NOT THERMALIZED")
    assert "not thermalized" in (tmp_path / "table1.md").read_text()


def test_existing_results_are_never_overwritten(tmp_path, no_sampling):
    (tmp_path / "mcrg.json").write_text("{}")
    with pytest.raises(FileExistsError, match="never overwritten"):
        evaluation.evaluate(config(*TINY, "transform=majority"), tmp_path)
    assert (tmp_path / "mcrg.json").read_text() == "{}"


def test_command_line_run(tmp_path):
    """``python evaluate.py transform=majority ...`` end to end, in its own Hydra run directory;
    the sample cache goes to its default directory, ./data of the launch directory."""
    run_dir = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
    env.pop("RBMRG_DATA_DIR", None)
    completed = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), "transform=majority", *TINY,
         "data.L=8", "mcrg.n_rg_steps=1", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert {"mcrg.json", "mcrg.csv", "table1.md"} <= {p.name for p in run_dir.iterdir()}
    assert "| N_c |" in completed.stdout
    assert not (tmp_path / "mcrg.json").exists()  # nothing written outside the run directory
    [cache] = (tmp_path / "data").iterdir()
    assert json.loads((run_dir / "mcrg.json").read_text())["sampler"]["cache"]["path"] == str(cache)


# ------------------------------------------------------------------------------------------------
# rbmrg.checkpoint


def test_save_filter_round_trip(tmp_path):
    torch.manual_seed(1)
    model = ConvRBM(3, 2, init_scale=0.5)
    path = save_filter(tmp_path / "sub" / "filter.pt", model)
    plain = torch.load(path, weights_only=True)
    assert set(plain) >= {"weight", "stride"}
    loaded = load_rbm(path)
    assert loaded.filter_size == 3 and loaded.stride == 2
    assert torch.equal(loaded.weight.detach(), model.weight.detach())
    with pytest.raises(FileExistsError, match="filter.pt"):
        save_filter(path, model)
    save_filter(path, ConvRBM(3, 2), overwrite=True)


@pytest.mark.parametrize("hparams_as", ["dict", "omegaconf", "nested"])
def test_load_rbm_reads_a_lightning_checkpoint(tmp_path, hparams_as):
    """The layout Lightning writes for RBMModule: state_dict['rbm.weight'] and hyper_parameters.

    The filter size is taken from the weight (the stored hyper-parameter is deliberately stale).
    """
    weight = torch.randn(5, 5)
    hparams = {"filter_size": 8, "stride": 2, "cd_k": 3}
    if hparams_as == "omegaconf":
        hparams = OmegaConf.create(hparams)  # not loadable with weights_only=True
    elif hparams_as == "nested":
        hparams = {"model": {"stride": 2}}
    checkpoint = {
        "state_dict": {"rbm.weight": weight},
        "hyper_parameters": hparams,
        "pytorch-lightning_version": "2.6.0",
    }
    torch.save(checkpoint, tmp_path / "last.ckpt")
    model = load_rbm(tmp_path / "last.ckpt")
    assert model.filter_size == 5 and model.stride == 2
    assert torch.equal(model.weight.detach(), weight)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"weight": torch.ones(3, 3)}, "no 'stride'"),
        ({"weight": torch.ones(3, 4), "stride": 2}, "square"),
        ({"weight": torch.full((3, 3), float("nan")), "stride": 2}, "non-finite"),
        ({"weight": torch.ones(3, 3), "stride": 0}, "stride=0"),
        ({"bias": torch.ones(3)}, "no filter found"),
        ({"state_dict": {"w": torch.ones(2, 2)}, "hyper_parameters": {}}, "'rbm.weight'"),
        ({"state_dict": {"rbm.weight": torch.ones(2, 2)}, "hyper_parameters": {}}, "stride"),
        (torch.ones(3, 3), "not a filter"),
    ],
)
def test_load_rbm_errors_name_the_file(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    torch.save(content, path)
    with pytest.raises(ValueError, match=message) as error:
        load_rbm(path)
    assert "bad.pt" in str(error.value)


def test_load_rbm_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        load_rbm(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="garbage.pt"):
        load_rbm(write_garbage(tmp_path / "garbage.pt"))


# ------------------------------------------------------------------------------------------------
# Interaction sets, renormalized couplings and "auto" sampling settings


def test_the_order_of_the_even_set_changes_only_intermediate_n_c(tmp_path):
    """mcrg.even_set=distance puts (2,0) third instead of the plaquette: N_c = 3 changes, N_c = 1
    and 2 (the same interactions in the same order, same seeds) are bit-identical, and N_c = 7
    (the same seven interactions, permuted) is equal up to rounding: T = A^-1 B of a permuted set
    is the same matrix permuted, but LAPACK's pivots, and so its last bits, follow the order."""
    common = ["transform=majority", *TINY, "mcrg.n_rg_steps=1", "mcrg.couplings=false"]
    (tmp_path / "span").mkdir()
    (tmp_path / "distance").mkdir()
    span = evaluation.evaluate(config(*common), tmp_path / "span")
    distance = evaluation.evaluate(config(*common, "mcrg.even_set=distance"), tmp_path / "distance")
    assert span["even_set"][:3] == ["nn", "diag", "plaquette"]
    assert distance["even_set"][:3] == ["nn", "diag", "third"]
    assert sorted(span["even_set"]) == sorted(distance["even_set"])
    y_span, y_distance = span["y_t"][0], distance["y_t"][0]
    assert y_span[:2] == y_distance[:2]  # bit-identical
    assert y_span[6] == pytest.approx(y_distance[6], rel=1e-12, abs=0)
    assert abs(y_span[2] - y_distance[2]) > 1e-6
    assert span["y_h"] == distance["y_h"]  # the odd set is the same
    assert span["level0"][2]["name"] == "plaquette" and distance["level0"][2]["name"] == "third"


def test_a_list_of_names_is_a_set(tmp_path):
    cfg = config("transform=majority", *TINY, "mcrg.n_rg_steps=1", "mcrg.even_set=[nn,third]",
                 "mcrg.odd_set=[magnetization,row3]", "mcrg.couplings_samples=1000")  # fmt: skip
    record = evaluation.evaluate(cfg, tmp_path)
    assert record["even_set"] == ["nn", "third"] and record["odd_set"] == ["magnetization", "row3"]
    assert [len(row) for row in record["y_t"]] == [2] and [len(row) for row in record["y_h"]] == [2]
    assert record["couplings_set"] == ["nn", "third"] and record["couplings_samples"] == 1000
    assert [len(row) for row in record["couplings"]] == [2, 2]


@pytest.mark.parametrize("coupling", [0.3, None])
def test_level0_couplings_are_the_nearest_neighbour_model(tmp_path, coupling):
    """Exact: configurations of e^{K S_nn} give K_nn = K and every other coupling 0 on level 0
    (majority rule, Wolff at K = 0.3 and K_c, spaced by its tau_int), each within 4 jackknife
    errors and chi^2 below its 99.9% point for 7 degrees of freedom (fixed seeds)."""
    K = "null" if coupling is None else coupling
    cfg = config("transform=majority", *TINY, "mcrg.n_samples=4000", f"data.coupling={K}",
                 "data.n_thermalize=auto", "data.n_between=auto")  # fmt: skip
    record = evaluation.evaluate(cfg, tmp_path)
    names = record["couplings_set"]
    assert names == record["even_set"] and record["couplings_samples"] == 4000
    assert record["lattice_sizes"] == [16, 8, 4]
    level0, err0 = record["couplings"][0], record["couplings_err"][0]
    assert all(0 < e < 0.01 for e in err0)
    exact = [record["coupling"]] + [0.0] * 6
    pulls = [(v - k) / e for v, k, e in zip(level0, exact, err0, strict=True)]
    assert all(abs(pull) < 4 for pull in pulls), dict(zip(names, pulls, strict=True))
    assert sum(pull**2 for pull in pulls) < 24.3
    # Level 1 (8x8) is a renormalized Hamiltonian: K_nn moves, K_diag > 0 (majority rule).
    assert record["couplings"][1][1] > 4 * record["couplings_err"][1][1]
    # Level 2 (4x4) cannot hold the span-2 interactions: NaN, said so before sampling.
    assert all(math.isnan(v) for v in record["couplings"][2])
    assert any(w.startswith("couplings: interactions") for w in record["warnings"])
    data = json.loads((tmp_path / "mcrg.json").read_text())
    assert data["couplings"][2] == [None] * 7 and data["couplings"][0] == level0
    table = (tmp_path / "table1.md").read_text()
    assert "Renormalized couplings K^(n)" in table and "| 0 | 16 | " in table


def test_couplings_leave_the_exponents_bit_identical(tmp_path):
    """The couplings consumer sees the levels MCRG sees and draws no random numbers."""
    common = ["transform=majority", *TINY, "mcrg.n_rg_steps=1"]
    (tmp_path / "on").mkdir()
    (tmp_path / "off").mkdir()
    on = evaluation.evaluate(config(*common, "mcrg.couplings_samples=1000"), tmp_path / "on")
    off = evaluation.evaluate(config(*common, "mcrg.couplings=false"), tmp_path / "off")
    for key in ("y_t", "y_t_err", "y_h", "y_h_err", "level0"):
        assert on[key] == off[key], key
    assert on["couplings_samples"] == 1000 and off["couplings"] is None
    # The first 1000 configurations: 25 whole sweeps of the 40 chains; a count between two
    # sweeps is rounded down to whole sweeps.
    plan = evaluation.make_plan(config(*common, "mcrg.couplings_samples=1010"))
    assert plan.couplings_samples == 1000


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to CUDA here")
def test_auto_resolves_to_the_cpu_settings_of_table1():
    """On a machine without a GPU the defaults are today's: Wolff, 200 + 4 sweeps at L = 32."""
    plan = evaluation.make_plan(config("transform=majority"))
    sampler = plan.sampler
    assert (sampler["device"], sampler["algorithm"]) == ("cpu", "wolff")
    assert (sampler["n_thermalize"], sampler["n_between"]) == (200, 4)
    assert sampler["auto"] == ["device", "algorithm", "n_thermalize", "n_between"]
    plan = evaluation.make_plan(config("transform=majority", "data.L=64"))
    assert (plan.sampler["n_thermalize"], plan.sampler["n_between"]) == (800, 4)
    # Explicit values win, each on its own.
    plan = evaluation.make_plan(
        config("transform=majority", "data.algorithm=metropolis-msc", "data.n_between=7")
    )
    assert plan.sampler["algorithm"] == "metropolis-msc"
    assert (plan.sampler["n_thermalize"], plan.sampler["n_between"]) == (978, 7)
    assert plan.sampler["auto"] == ["device", "n_thermalize"] and not plan.notes


@pytest.fixture
def pretend_cuda(monkeypatch):
    """A machine with a GPU, as far as the resolution of "auto" can tell (nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_auto_picks_the_fused_sampler_and_its_spacing_on_a_gpu(pretend_cuda, no_sampling):
    pytest.importorskip("triton")
    plan = evaluation.make_plan(config("transform=majority"))
    assert plan.device.type == "cuda"
    assert plan.sampler["algorithm"] == "metropolis-fused"
    assert (plan.sampler["n_thermalize"], plan.sampler["n_between"]) == (978, 79)
    # An explicit spacing under an automatic algorithm is kept, but said to be too short.
    plan = evaluation.make_plan(config("transform=majority", "data.n_between=4"))
    assert plan.sampler["n_between"] == 4
    assert any("data.algorithm=auto chose 'metropolis-fused'" in note for note in plan.notes)
    # The data module resolves the same way (training data on the GPU by the same rule).
    data = IsingDataModule(algorithm="auto", n_thermalize="auto", n_between="auto",
                           device="auto", n_train=1000, n_val=1000, data_dir=None)  # fmt: skip
    assert data.sampling_device.type == "cuda" and data.algorithm == "metropolis-fused"
    assert (data.n_thermalize, data.n_between) == (978, 79)


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto resolves to CUDA here")
def test_auto_in_the_data_module_keeps_the_cache_keys_on_the_cpu(tmp_path):
    """data.algorithm=auto, data.n_between=auto, data.device=auto on the CPU: the cached training
    sets of every earlier run (Wolff, n_between 4) are found again."""
    explicit = IsingDataModule(data_dir=str(tmp_path))
    auto = IsingDataModule(
        algorithm="auto", n_between="auto", device="auto", data_dir=str(tmp_path)
    )
    assert auto.settings(10_000, 0) == explicit.settings(10_000, 0)
    assert auto.cache_path(10_000, 0) == explicit.cache_path(10_000, 0)
    with pytest.raises(ValueError, match="data.n_thermalize=auto: tau_int is measured for 2D"):
        IsingDataModule(dim=3, L=8, n_thermalize="auto", data_dir=None)


# ------------------------------------------------------------------------------------------------
# The sample cache (data.data_dir, rbmrg.sweep_cache)

#: A tiny majority-rule evaluation: 8x8 -> 4x4, 2000 configurations of 40 chains (50 sweeps).
CACHED = ["transform=majority", *TINY, "data.L=8", "mcrg.n_rg_steps=1"]


def cached(data_dir: Path, *overrides: str):
    return config(*CACHED, f"data.data_dir={data_dir}", *overrides)


def evaluated(tmp_path: Path, name: str, cfg) -> dict:
    """mcrg.json of a run into its own directory tmp_path/name."""
    out = tmp_path / name
    out.mkdir()
    evaluation.evaluate(cfg, out)
    return json.loads((out / "mcrg.json").read_text())


def numbers(record: dict) -> str:
    """Every result of a record: all but the timings, where the configurations came from, the
    config and the command line (NaN compares equal as text)."""
    kept = {key: value for key, value in record.items() if key not in ("wall_time_s", "config")}
    kept["sampler"] = {key: value for key, value in record["sampler"].items() if key != "cache"}
    kept.pop("command")
    return json.dumps(kept, sort_keys=True)


def sampling_refused(*args, **kwargs):
    """Stands in for the stream's sampler factory where the configurations must be read."""
    raise AssertionError("a sampler was started although the cache holds the stream")


def test_a_second_evaluation_reads_the_configurations_of_the_first(tmp_path, monkeypatch):
    """The majority rule writes the stream; decimation with the same sampling settings reads it
    without sampling and gives numbers identical to decimation with no cache at all."""
    cache = tmp_path / "cache"
    first = evaluated(tmp_path, "majority", cached(cache))
    [path] = cache.iterdir()
    assert first["sampler"]["cache"] == {"path": str(path), "hit": False, "written": True}
    assert path.name.startswith("sweeps_L8_2000_") and path.suffix == ".bits"
    assert path.stat().st_size == sweep_cache.HEADER_BYTES + 2000 * 8  # 64 sites: 8 bytes each
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "iterate_samples", sampling_refused)
        second = evaluated(tmp_path, "decimation", cached(cache, "transform=decimation"))
    assert second["sampler"]["cache"] == {"path": str(path), "hit": True, "written": False}
    fresh = evaluated(tmp_path, "fresh", config(*CACHED, "transform=decimation"))
    assert fresh["sampler"]["cache"] is None and fresh["config"]["data"]["data_dir"] is None
    assert numbers(second) == numbers(fresh)
    # The same configurations: level 0, tau_int and the thermalization check do not depend on
    # the transformation; writing the file changed nothing either.
    for key in ("level0", "tau_int", "thermalized"):
        assert first[key] == second[key] == fresh[key], key
    plain = evaluated(tmp_path, "plain", config(*CACHED))
    assert numbers(first) == numbers(plain)
    assert [p.name for p in cache.iterdir()] == [path.name]  # nothing else written


def test_other_sampling_settings_do_not_hit(tmp_path):
    cache = tmp_path / "cache"
    evaluated(tmp_path, "base", cached(cache))
    for override in ("data.seed=7", "mcrg.n_samples=1000", "data.L=16"):
        record = evaluated(tmp_path, override.replace("=", "-"), cached(cache, override))
        assert record["sampler"]["cache"]["hit"] is False, override
    assert len(list(cache.iterdir())) == 4
    # Every setting that shapes the stream names another file; the measurement's settings do not.
    base = evaluation.make_plan(cached(cache)).cache.path
    for override in ("data.n_chains=20", "data.n_thermalize=21", "data.n_between=2",
                     "data.coupling=0.3", "data.algorithm=metropolis", "data.device=cpu"):  # fmt: skip
        path = evaluation.make_plan(cached(cache, override)).cache.path
        same = override == "data.device=cpu" and not torch.cuda.is_available()  # what auto is
        assert (path == base) == same, override
    for override in ("transform=decimation", "mcrg.seed=1", "mcrg.batch_size=400",
                     "mcrg.couplings=false", "mcrg.n_blocks=40"):  # fmt: skip
        assert evaluation.make_plan(cached(cache, override)).cache.path == base, override


def flip_a_payload_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[sweep_cache.HEADER_BYTES + 100] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


def other_settings(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data.replace(b'"seed": 12345', b'"seed": 12346', 1))


def not_a_cache_file(path: Path) -> None:
    path.write_bytes(b"not a sweep file")


@pytest.mark.parametrize(
    "damage", [flip_a_payload_byte, truncate, other_settings, not_a_cache_file]
)
def test_a_damaged_cache_file_is_warned_about_and_rewritten(tmp_path, damage):
    cache = tmp_path / "cache"
    first = evaluated(tmp_path, "first", cached(cache))
    [path] = cache.iterdir()
    intact = path.read_bytes()
    damage(path)
    assert path.read_bytes() != intact
    with pytest.warns(RuntimeWarning, match=f"sample cache file {path} is corrupt or stale"):
        assert evaluation.make_plan(cached(cache)).cache.open() is None
    again = evaluated(tmp_path, "again", cached(cache))
    assert again["sampler"]["cache"] == {"path": str(path), "hit": False, "written": True}
    assert any(f"sample cache file {path} is corrupt" in w for w in again["warnings"])
    assert path.read_bytes() == intact  # replaced by a good file
    assert [p.name for p in cache.iterdir()] == [path.name]
    # The results are those of the first run; only the warning is new.
    again["warnings"] = [w for w in again["warnings"] if "sample cache" not in w]
    assert numbers(again) == numbers(first)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_leaves_no_cache_file(tmp_path, monkeypatch):
    def interrupted(stream, *args, **kwargs):
        for index, _ in enumerate(stream):
            if index == 10:
                raise Interrupted

    monkeypatch.setattr(evaluation, "run_mcrg_replicas", interrupted)
    cache = tmp_path / "cache"
    with pytest.raises(Interrupted):
        evaluation.evaluate(cached(cache), tmp_path)
    assert list(cache.iterdir()) == []  # neither the file nor its temporary


def test_a_cache_file_that_cannot_be_written_costs_only_the_file(tmp_path, monkeypatch):
    def full(self, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sweep_cache.SweepWriter, "_append", full)
    cache = tmp_path / "cache"
    record = evaluated(tmp_path, "full", cached(cache))
    assert record["sampler"]["cache"]["written"] is False
    assert any("not written (No space left on device)" in w for w in record["warnings"])
    assert list(cache.iterdir()) == []
    assert math.isfinite(record["y_t"][0][0])


@pytest.mark.parametrize("where", ["a file", "under a file", "read-only"])
def test_a_cache_dir_that_cannot_be_written_is_refused_before_sampling(
    tmp_path, no_sampling, where
):
    if where == "read-only" and os.geteuid() == 0:
        pytest.skip("root writes into read-only directories")
    blocker = tmp_path / "cache"
    if where == "read-only":
        blocker.mkdir(mode=0o500)
    else:
        blocker.write_text("not a directory")
    data_dir = blocker / "sub" if where == "under a file" else blocker
    with pytest.raises(ValueError, match=f"data.data_dir='{data_dir}': ") as error:
        evaluation.evaluate(cached(data_dir), tmp_path / "out")
    assert ("cannot be written" if where == "read-only" else "not a directory") in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", [(3, 8, 8), (2, 6, 6), (2, 4, 4, 4)])
def test_packed_sweeps_round_trip(shape):
    """One bit a site, rounded up to whole bytes per chain (6x6 = 36 sites: 5 bytes)."""
    spins = torch.randint(0, 2, shape, generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    data = sweep_cache.pack(spins)
    assert len(data) == shape[0] * -(-math.prod(shape[1:]) // 8)
    back = sweep_cache.unpack(data, shape, torch.device("cpu"))
    assert back.dtype == torch.float32 and torch.equal(back, spins)
