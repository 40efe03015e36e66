"""MCRGCallback: exponents during training, its history and state, the figures, and the rules for
its settings (the same as evaluate.py's: rbmrg.rg.mcrg.check_blocks, rbmrg.rg.transforms.level_sizes)."""

import csv
import re
import warnings

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from helpers import HeldOut

from rbmrg import plots
from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.sampling import draw_samples
from rbmrg.rg import mcrg
from rbmrg.rg.mcrg import chain_major_batches, run_mcrg
from rbmrg.rg.rbm import ConvRBM
from rbmrg.rg.transforms import majority
from rbmrg.training import callbacks as callbacks_module
from rbmrg.training.callbacks import MCRGCallback
from rbmrg.training.module import RBMModule
from rbmrg.training.schedules import Constant


@pytest.fixture(scope="module")
def critical_16():
    """600 configurations of the critical 16x16 Ising model from 20 independent chains."""
    return draw_samples(IsingModel(L=16), 600, n_chains=20, n_thermalize=50, n_between=2, seed=7)


@pytest.mark.parametrize(
    "L, filter_size, stride, n_rg_steps, refused",
    [
        (32, 8, 2, 2, None),
        (32, 8, 2, 3, None),  # 32 -> 16 -> 8 -> 4
        (32, 8, 2, 4, "the 8x8 filter does not fit level 3 (L=4)"),
        (8, 4, 2, 2, "one more step would leave a 2-site level"),
        (16, 16, 2, 2, "the 16x16 filter does not fit level 1 (L=8)"),
        (36, 3, 3, 3, "level 2 has L=4, not divisible by the scale factor b=3"),  # 36 -> 12 -> 4
    ],
)
def test_an_n_rg_steps_the_lattice_cannot_take_is_refused_not_cut(
    L, filter_size, stride, n_rg_steps, refused
):
    """The callback's RG levels are evaluate's (rbmrg.rg.transforms.level_sizes), named settings."""
    callback = MCRGCallback(n_rg_steps=n_rg_steps)
    rbm = ConvRBM(filter_size=filter_size, stride=stride)
    if refused is None:
        assert callback.plan(rbm, L, n_configs=2000, n_chains=40).n_chains == 40
        return
    with pytest.raises(ValueError, match=rf"data.L={L} with mcrg.n_rg_steps={n_rg_steps}: "):
        callback.plan(rbm, L, n_configs=2000, n_chains=40)
    with pytest.raises(ValueError, match=re.escape(refused)):
        callback.plan(rbm, L, n_configs=2000, n_chains=40)


@pytest.mark.parametrize(
    "n_blocks, n_samples, expected",
    [
        (20, None, (40, 2000)),
        (20, 5000, (40, 2000)),  # at most the whole set (experiment=ising3d shares n_samples)
        (20, 1000, (20, 1000)),  # 20 whole chains of 50
        (20, 1010, "mcrg.n_samples=1010: MCRG takes whole chains"),
        (20, 500, "mcrg.n_samples=500: MCRG takes whole chains"),  # 10 chains for 20 blocks
        (20, 5, "mcrg.n_samples=5: MCRG takes whole chains"),  # was quietly raised
        (50, None, "mcrg.n_blocks=50 > data.n_chains=40"),  # was cut to 40
        (10, None, "mcrg.n_blocks=10: use at least 20"),
    ],
)
def test_blocks_and_samples_follow_evaluates_rules(n_blocks, n_samples, expected):
    callback = MCRGCallback(n_rg_steps=1, n_blocks=n_blocks, n_samples=n_samples)
    rbm = ConvRBM(filter_size=4, stride=2)
    if isinstance(expected, tuple):
        plan = callback.plan(rbm, 16, n_configs=2000, n_chains=40)
        assert (plan.n_chains, plan.n_rows) == expected
        return
    with pytest.raises(ValueError, match=expected):
        callback.plan(rbm, 16, n_configs=2000, n_chains=40)


def test_only_the_unfit_interactions_warning_is_hidden(critical_16, monkeypatch):
    """Singular matrices and empty blocks must reach the user; 'do not fit' is the same every epoch."""

    def noisy_run_mcrg(*args, **kwargs):
        warnings.warn(
            "MCRG even: interactions do not fit", mcrg.UnfitInteractionsWarning, stacklevel=1
        )
        warnings.warn("MCRG even: singular A matrix", mcrg.SingularWarning, stacklevel=1)
        warnings.warn("MCRG: jackknife blocks [3] received no samples", stacklevel=1)
        return run_mcrg(*args, **kwargs)

    monkeypatch.setattr(callbacks_module, "run_mcrg", noisy_run_mcrg)
    rbm = ConvRBM(filter_size=2, stride=2, init_scale=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MCRGCallback(n_rg_steps=1).measure(rbm, critical_16, torch.device("cpu"))
    messages = [str(w.message) for w in caught]
    assert not any("do not fit" in m for m in messages)
    assert any("singular A matrix" in m for m in messages)
    assert any("received no samples" in m for m in messages)


def test_level0_is_measured_once_per_set_and_fit(critical_16, monkeypatch, tmp_path):
    calls = []
    real = callbacks_module.level0_values

    def counting(spins, *args, **kwargs):
        calls.append(spins.shape[0])
        return real(spins, *args, **kwargs)

    monkeypatch.setattr(callbacks_module, "level0_values", counting)
    rbm = ConvRBM(filter_size=2, stride=2, init_scale=0.1)
    callback = MCRGCallback(n_rg_steps=1, output_dir=str(tmp_path))
    first = callback.measure(rbm, critical_16, torch.device("cpu"))
    again = callback.measure(rbm, critical_16, torch.device("cpu"))
    assert len(calls) == 1  # the same set: cached
    np.testing.assert_array_equal(first.y["even"], again.y["even"])  # and bit-identical
    copy = type(critical_16)(**vars(critical_16))  # equal content, another set
    callback.measure(rbm, copy, torch.device("cpu"))
    assert len(calls) == 2
    callback.on_fit_start(pl.Trainer(logger=False, enable_progress_bar=False), None)
    callback.measure(rbm, copy, torch.device("cpu"))
    assert len(calls) == 3  # a new fit measures afresh


def test_an_infinite_2x2_filter_measures_the_majority_rule(critical_16):
    """W -> infinity on a 2x2 block is the majority rule (ties at random), Sec. 3 of the paper: the
    callback's y_t must agree with run_mcrg + majority on the same configurations."""
    rbm = ConvRBM(filter_size=2, stride=2, init_scale=0.0)
    with torch.no_grad():
        rbm.weight.fill_(50.0)
    callback = MCRGCallback(n_rg_steps=1, n_blocks=20)
    result = callback.measure(rbm, critical_16, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    batches = chain_major_batches(critical_16.spins, critical_16.n_chains, 20)
    reference = run_mcrg(batches, [majority(2)], 1, 2.0, n_blocks=20, generator=generator)
    for n_c in range(3):  # the couplings that fit the 8x8 level
        y, err = result.y["even"][0, n_c], result.err["even"][0, n_c]
        assert abs(y - reference.y["even"][0, n_c]) < 3 * err + 1e-3


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
    callback = MCRGCallback(every_n_epochs=2, n_rg_steps=2, n_blocks=20, output_dir=str(tmp_path))
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
    callback = MCRGCallback(n_rg_steps=1, n_blocks=20, output_dir=str(tmp_path))
    fit(callback, critical_16, tmp_path, epochs=1)
    fresh = MCRGCallback(n_rg_steps=1, n_blocks=20)
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
