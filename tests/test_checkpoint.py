"""rbmrg.checkpoint.read_checkpoint: loading a file never runs code from it.

A pickle can name any function to call while it is read. The payloads below call ``os.system`` to
create a marker file; the tests assert the marker never appears, the file is refused with an error
naming it, and every legitimate file (both committed filters, a checkpoint written by train.py, one
with OmegaConf hyper-parameters) still loads.
"""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from rbmrg.checkpoint import MissingCheckpointError, load_rbm, read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}


class RunsShell:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def payload(marker: Path) -> dict:
    """A filter-file layout whose weight is the code-running object."""
    return {"weight": RunsShell(f"touch {marker}"), "stride": 2}


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """``last.ckpt`` of a real ``python train.py experiment=smoke logger=none`` run (tiny lattice)."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    overrides = [
        "experiment=smoke", "logger=none", "data.L=8", "data.n_train=200", "data.n_val=400",
        "data.n_chains=20", "data.n_thermalize=20", "data.progress=false",
        "model.filter_size=4", "mcrg.n_blocks=20", "mcrg.n_rg_steps=1", "trainer.max_epochs=1",
        "optimized_metric=mcrg/y_t/nr1_nc3", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    completed = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=run_dir.parent, env=ENV, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    return run_dir / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize("layout", ["zip", "legacy", "raw_pickle", "raw_pickle_v4"])
def test_code_in_a_pickle_never_runs(tmp_path, layout):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if layout == "zip":
        torch.save(payload(marker), path)
    elif layout == "legacy":
        torch.save(payload(marker), path, _use_new_zipfile_serialization=False)
    else:  # what a hand-made pickle looks like; protocol 2 starts like a legacy torch file
        protocol = 2 if layout == "raw_pickle" else 4
        path.write_bytes(pickle.dumps(payload(marker), protocol=protocol))
    for reader in (read_checkpoint, load_rbm):
        with pytest.raises(ValueError) as error:
            reader(path)
        assert str(path) in str(error.value)
        assert "loaded safely" in str(error.value) or "not a torch checkpoint" in str(error.value)
    assert not marker.exists()


def test_refusal_names_the_unsupported_global(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(payload(tmp_path / "marker"), path)
    with pytest.raises(ValueError, match=r"cannot be loaded safely: (posix|nt|os)\.system"):
        read_checkpoint(path)
    assert not (tmp_path / "marker").exists()


def test_evaluate_refuses_a_code_running_checkpoint(tmp_path):
    """The reported hole: ``python evaluate.py ckpt_path=<crafted file>`` ran the code and exited 0."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {"rbm.weight": RunsShell(f"touch {marker}")}, "hyper_parameters": {}}, path
    )
    completed = subprocess.run(
        [sys.executable, str(ROOT / "evaluate.py"), f"ckpt_path={path}",
         f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert completed.returncode != 0
    assert "evil.ckpt" in completed.stderr and "loaded safely" in completed.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda path: path.write_bytes(b""), "empty file"),
        (lambda path: path.write_text("filter_size: 8\nstride: 2\n"), "not a torch checkpoint"),
        (lambda path: path.mkdir(), "is a directory, expected a checkpoint file"),
    ],
)
def test_unusable_paths_are_refused_by_name(tmp_path, make, message):
    path = tmp_path / "filter.pt"
    make(path)
    with pytest.raises(ValueError, match=message) as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)


def test_missing_file(tmp_path):
    path = tmp_path / "nothing.pt"
    with pytest.raises(ValueError, match="no such file") as error:
        read_checkpoint(path)
    assert str(path) in str(error.value)
    assert isinstance(error.value, FileNotFoundError | MissingCheckpointError)


def test_truncated_checkpoint(tmp_path, trained_checkpoint):
    raw = trained_checkpoint.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="damaged torch checkpoint") as error:
        read_checkpoint(path)
    assert "cut.ckpt" in str(error.value)


@pytest.mark.parametrize("name", ["paper_filter.pt", "paper_long_filter.pt"])
def test_committed_filters_load(name):
    stored = read_checkpoint(ROOT / "results" / name)
    assert set(stored) >= {"weight", "stride"}
    model = load_rbm(ROOT / "results" / name)
    assert (model.filter_size, model.stride) == (8, 2)
    assert torch.equal(model.weight.detach(), stored["weight"].float())
    assert torch.isfinite(model.weight).all() and model.weight.abs().max() > 0


def test_a_checkpoint_written_by_train_loads(trained_checkpoint):
    stored = read_checkpoint(trained_checkpoint)
    assert {"state_dict", "hyper_parameters", "loops", "callbacks", "optimizer_states"} <= set(
        stored
    )
    assert stored["hyper_parameters"]["stride"] == 2
    model = load_rbm(trained_checkpoint)
    assert (model.filter_size, model.stride) == (4, 2)
    assert torch.equal(model.weight.detach(), stored["state_dict"]["rbm.weight"])


def test_omegaconf_hyper_parameters_load_as_plain_unresolved_values(tmp_path):
    """Hyper-parameters saved from a Hydra config: allowed, returned plain, nothing resolved."""
    hparams = OmegaConf.create(
        {
            "model": {"stride": 2, "betas": [0.9, 0.999], "persistent": False, "note": None},
            "scale": 0.01,
            "name": "rbm",
            "home": "${oc.env:HOME}",  # resolving would read the environment
        }
    )
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"rbm.weight": torch.ones(3, 3)}, "hyper_parameters": hparams}, path)
    stored = read_checkpoint(path)
    assert type(stored["hyper_parameters"]) is dict
    assert stored["hyper_parameters"]["model"] == {
        "stride": 2, "betas": [0.9, 0.999], "persistent": False, "note": None,
    }  # fmt: skip
    assert stored["hyper_parameters"]["home"] == "${oc.env:HOME}"
    assert load_rbm(path).stride == 2
    # The allow-list lives only inside read_checkpoint: plain torch.load still refuses the file.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)


def test_an_interpolated_stride_is_refused(tmp_path):
    hparams = OmegaConf.create({"model": {"stride": "${other}"}, "other": 2})
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"rbm.weight": torch.ones(3, 3)}, "hyper_parameters": hparams}, path)
    with pytest.raises(ValueError, match="stride=.*positive integer") as error:
        load_rbm(path)
    assert "last.ckpt" in str(error.value)
