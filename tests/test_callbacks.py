"""MCRGCallback: exponents during training, its history and state, and the figures."""

import csv

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from rbmrg import plots
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.sampling import draw_samples
from rbmrg.rg.mcrg import chain_major_batches, run_mcrg
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import majority
from rbmrg.training.callbacks import MCRGCallback, max_rg_steps
from rbmrg.training.module import RBMModule
from rbmrg.training.schedules import Constant


@pytest.fixture(scope="module")
def critical_16():
    """600 configurations of the critical 16x16 Ising model from 20 independent chains."""
    return draw_samples(IsingModel(L=16), 600, n_chains=20, n_thermalize=50, n_between=2, seed=7)


@pytest.mark.parametrize(
    "L, filter_size, stride, wanted, expected",
    [
        (32, 8, 2, 2, 2),
        (32, 8, 2, 5, 3),  # 32 -> 16 -> 8 -> 4; the filter no longer fits a 4x4 level
        (8, 4, 2, 2, 1),  # a 2x2 level is too small for MCRG
        (16, 16, 2, 2, 1),  # the filter does not fit the 8x8 level
        (27, 3, 3, 3, 2),  # 27 -> 9 -> 3
    ],
)
def test_max_rg_steps(L, filter_size, stride, wanted, expected):
    assert max_rg_steps(L, filter_size, stride, wanted) == expected


def test_an_infinite_2x2_filter_measures_the_majority_rule(critical_16):
    """W -> infinity on a 2x2 block is the majority rule (ties at random), Sec. 3 of the paper: the
    callback's y_t must agree with run_mcrg + majority on the same configurations."""
    rbm = ConvRBM(filter_size=2, stride=2, init_scale=0.0)
    with torch.no_grad():
        rbm.weight.fill_(50.0)
    callback = MCRGCallback(n_rg_steps=1, n_blocks=10)
    result = callback.measure(rbm, critical_16, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    batches = chain_major_batches(critical_16.spins, critical_16.n_chains, 10)
    reference = run_mcrg(batches, [majority(2)], 1, 2.0, n_blocks=10, generator=generator)
    for n_c in range(3):  # the couplings that fit the 8x8 level
        y, err = result.y["even"][0, n_c], result.err["even"][0, n_c]
        assert abs(y - reference.y["even"][0, n_c]) < 3 * err + 1e-3


class HeldOut(pl.LightningDataModule):
    """The two things the callback and the module need from IsingDataModule."""

    def __init__(self, samples):
        super().__init__()
        self.val_set = samples
        self.train_spins = samples.spins[:200].float()

    def train_dataloader(self):
        return Minibatches(self.train_spins)


class Minibatches:
    """Consecutive minibatches of 10 (a bare list would be taken for a list of data loaders)."""

    def __init__(self, spins):
        self.spins = spins

    def __len__(self):
        return self.spins.shape[0] // 10

    def __iter__(self):
        return iter(self.spins.split(10))


def fit(callback, samples, tmp_path, epochs, ckpt_path=None):
    pl.seed_everything(0)
    module = RBMModule(filter_size=4, stride=2, init_scale=0.05)
    module.schedule = Constant(1e-2)
    trainer = pl.Trainer(
        max_epochs=epochs,
        logger=pl.loggers.CSVLogger(tmp_path, name="csv", version=""),
        callbacks=[callback],
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        log_every_n_steps=5,
    )
    trainer.fit(module, datamodule=HeldOut(samples), ckpt_path=ckpt_path)
    return trainer


def test_callback_logs_history_writes_csv_and_figures(critical_16, tmp_path):
    callback = MCRGCallback(every_n_epochs=2, n_rg_steps=2, n_blocks=10, output_dir=str(tmp_path))
    trainer = fit(callback, critical_16, tmp_path, epochs=3)
    # Measured at epoch 2 (interval) and 3 (the last); N_r = 1, 2 on 16 -> 8 -> 4, N_c = 1..7 each.
    assert sorted({row["epoch"] for row in callback.history}) == [2, 3]
    assert len(callback.history) == 2 * 2 * 7
    for key in ("mcrg/y_t/nr1_nc1", "mcrg/y_t_err/nr1_nc7", "mcrg/y_t/nr2_nc3", "mcrg/epoch"):
        assert key in trainer.callback_metrics
    assert {"y_h", "y_h_err"} <= set(callback.history[0])  # y_h: finite only once W is strong
    assert "mcrg/y_t/nr2_nc7" not in trainer.callback_metrics  # does not fit the 4x4 level: NaN
    y_t = float(trainer.callback_metrics["mcrg/y_t/nr1_nc3"])
    assert 0.5 < y_t < 1.5
    with (tmp_path / "mcrg_history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(callback.history)
    assert float(rows[0]["y_t"]) == pytest.approx(callback.history[0]["y_t"])
    for name in ("filters/epoch_001.png", "filters/epoch_003.png", "fig1_filters.png"):
        assert (tmp_path / name).exists()
    assert (tmp_path / "fig2_yt_vs_step.png").exists()
    assert sorted(callback.filters) == [1, 2, 3]


def test_history_survives_state_dict_round_trip(critical_16, tmp_path):
    callback = MCRGCallback(n_rg_steps=1, n_blocks=10, output_dir=str(tmp_path))
    fit(callback, critical_16, tmp_path, epochs=1)
    fresh = MCRGCallback(n_rg_steps=1, n_blocks=10)
    fresh.load_state_dict(callback.state_dict())
    # (Equal as lists even with NaN entries: the rows hold the very same float objects.)
    assert fresh.history == callback.history and fresh.history is not callback.history
    torch.testing.assert_close(fresh.filters[1], callback.filters[1])


def test_filter_image_has_a_symmetric_colour_scale():
    weight = torch.tensor([[0.5, -0.1], [0.2, 0.0]])
    fig = plots.filter_figure(weight)
    image = fig.axes[0].images[0]
    assert image.get_clim() == (-0.5, 0.5)
    assert "symmetric" in fig.axes[1].get_ylabel()


def test_yt_figure_draws_reference_lines():
    history = [
        {"step": s, "n_r": 1, "n_c": 7, "y_t": 0.9 + s / 1e4, "y_t_err": 0.01} for s in (100, 200)
    ]
    fig = plots.yt_history_figure(history)
    levels = {line.get_ydata()[0] for line in fig.axes[0].lines if len(line.get_ydata()) == 2}
    assert {1.0, plots.Y_T_MAJORITY} <= {float(np.round(v, 3)) for v in levels}
