"""RGFlowCallback: the renormalized couplings of the final filter at the end of a (tiny) fit."""

import csv
import math
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from test_callbacks import fit

from rbmrg.lattice.model import K_C_2D, IsingModel
from rbmrg.lattice.sampling import draw_samples
from rbmrg.rg.couplings import CouplingAccumulator
from rbmrg.rg.interactions import EVEN, EVEN_SETS
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import majority
from rbmrg.training.flow import RGFlowCallback

CONF = Path(__file__).resolve().parents[1] / "conf"


@pytest.fixture(scope="module")
def critical_16():
    """1200 configurations of the critical 16x16 Ising model from 20 independent Wolff chains,
    spaced by the default spacing (200 + 3 sweeps at L = 16)."""
    return draw_samples(IsingModel(L=16), 1200, n_chains=20, n_thermalize=200, n_between=3, seed=11)


def test_a_tiny_fit_logs_and_writes_the_flow(critical_16, tmp_path):
    callback = RGFlowCallback(n_rg_steps=2, output_dir=str(tmp_path))
    with pytest.warns(UserWarning, match=r"RG flow: callbacks.rg_flow.n_rg_steps=2, but only"):
        trainer = fit(callback, critical_16, tmp_path, epochs=1)
    with (tmp_path / "couplings.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    # Levels 16 and 8; the 4x4 level cannot hold the span-2 interactions of the set (cut, warned).
    names = [i.name for i in EVEN]
    assert [(int(r["level"]), int(r["L"]), r["interaction"]) for r in rows] == [
        (level, size, name) for level, size in ((0, 16), (1, 8)) for name in names
    ]
    assert {int(r["step"]) for r in rows} == {trainer.global_step}
    assert {int(r["updates"]) for r in rows} == {trainer.lightning_module.updates} == {20}
    assert {int(r["n_samples"]) for r in rows} == {1200}
    # Level 0 is the held-out set itself (no filter): the nearest-neighbour model at K_c, exactly.
    level0 = {r["interaction"]: (float(r["coupling"]), float(r["error"])) for r in rows[:7]}
    value, error = level0.pop("nn")
    assert 0 < error < 0.01 and abs(value - K_C_2D) < 4 * error
    for name, (value, error) in level0.items():
        assert abs(value) < 4 * error, name
    # Level 1 is the renormalized Hamiltonian of a trained (if briefly) filter: finite.
    assert all(math.isfinite(float(r["coupling"])) for r in rows[7:])
    # Every logger gets the same numbers at the final step.
    with (tmp_path / "csv" / "metrics.csv").open() as handle:
        logged = [r for r in csv.DictReader(handle) if r.get("couplings/level0/nn")]
    assert len(logged) == 1 and int(logged[0]["step"]) == trainer.global_step
    assert float(logged[0]["couplings/level1/diag"]) == float(rows[8]["coupling"])
    assert float(logged[0]["couplings_err/level0/nn"]) == float(rows[0]["error"])


def test_the_flow_is_that_of_the_filter(critical_16):
    """A 2x2 filter with W -> infinity is the majority rule; level 0 equals an accumulator fed the
    same configurations directly (bit for bit), level 1 the majority rule's within errors."""
    rbm = ConvRBM(filter_size=2, stride=2, init_scale=0.0)
    with torch.no_grad():
        rbm.weight.fill_(50.0)
    callback = RGFlowCallback(n_rg_steps=1, even_set="distance")
    result = callback.measure(rbm, critical_16, torch.device("cpu"))
    assert result.names == [i.name for i in EVEN_SETS["distance"]]
    assert result.lattice_sizes == [16, 8]
    blocks = torch.arange(20).repeat_interleave(60)  # chain-major: 60 configurations a chain
    direct = CouplingAccumulator(EVEN_SETS["distance"], 1, 20)
    direct.update([critical_16.spins.float()], blocks)
    assert (result.couplings[0] == direct.result().couplings[0]).all()
    majority_acc = CouplingAccumulator(EVEN_SETS["distance"], 2, 20)
    spins = critical_16.spins.float()
    generator = torch.Generator().manual_seed(3)
    majority_acc.update([spins, majority(2)(spins, generator)], blocks)
    expected = majority_acc.result()
    error = (result.errors[1] ** 2 + expected.errors[1] ** 2) ** 0.5
    assert (abs(result.couplings[1] - expected.couplings[1]) < 4 * error).all()


def test_settings_are_checked_when_built():
    with pytest.raises(ValueError, match="callbacks.rg_flow.even_set='table1'"):
        RGFlowCallback(even_set="table1")
    with pytest.raises(ValueError, match="callbacks.rg_flow.even_set"):
        RGFlowCallback(even_set=["nn", "diag"], dim=3)  # diag is a square-lattice name
    with pytest.raises(ValueError, match="callbacks.rg_flow.n_blocks=1"):
        RGFlowCallback(n_blocks=1)
    assert [i.name for i in RGFlowCallback(dim=3).interactions][:2] == ["nn", "face_diag"]


def test_a_fresh_run_does_not_overwrite_couplings_csv(critical_16, tmp_path):
    (tmp_path / "couplings.csv").write_text("earlier run\n")
    with pytest.raises(FileExistsError, match="already holds couplings.csv"):
        fit(RGFlowCallback(output_dir=str(tmp_path)), critical_16, tmp_path, epochs=1)
    assert (tmp_path / "couplings.csv").read_text() == "earlier run\n"


@pytest.mark.parametrize("experiment, dim", [("smoke", 2), ("ising3d", 3)])
def test_the_default_callbacks_include_the_flow(experiment, dim):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={experiment}", "output_dir=/nonexistent"])
    callback = instantiate(cfg.callbacks.rg_flow)
    assert isinstance(callback, RGFlowCallback)
    assert callback.interactions[0].name == "nn" and len(callback.interactions[0].terms) == dim
