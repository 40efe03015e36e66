"""``model.n_replicas=R``: R independent filters in one run, measured side by side.

The grouped convolutions must give every replica exactly what one ConvRBM with its filter gives;
the replicas must not see each other (filter, noise, minibatches); a tiny R = 2 run through
``train`` must give two distinct filters, per-replica and mean/spread MCRG keys and a checkpoint of
both; ``evaluate`` on it must measure both on the same configurations (two equal filters: equal
results, zero spread), while ``load_rbm`` refuses to pick one.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from test_evaluate import TINY as EVAL_TINY
from test_evaluate import config as eval_config
from test_train import TINY, compose_train, last_checkpoint

from rbmrg import evaluation
from rbmrg.checkpoint import load_rbm, load_rbms, save_filter
from rbmrg.rg.rbm import ConvRBM, ReplicaRBM
from rbmrg.rg.transforms import learned
from rbmrg.training import run as training
from rbmrg.training.data import ShuffledBatches
from rbmrg.training.module import RBMModule


def random_spins(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).double()


@pytest.mark.parametrize(
    "dim, filter_size, stride, L", [(2, 4, 2, 8), (2, 3, 2, 8), (2, 5, 3, 9), (3, 3, 2, 8)]
)
def test_each_replica_is_a_convrbm_with_its_filter(dim, filter_size, stride, L):
    """Fields, free energies and the gradient of the free energy of replica r, by the grouped
    convolution, equal those of a ConvRBM holding filter r (float64; odd f pads the phases)."""
    torch.manual_seed(1)
    replicas = ReplicaRBM(3, filter_size, stride, init_scale=0.5, dim=dim).double()
    spins = random_spins((3, 4) + (L,) * dim, seed=2)
    block_spins = random_spins((3, 4) + (L // stride,) * dim, seed=3)
    hidden = replicas.hidden_field(spins)
    visible = replicas.visible_field(block_spins, L)
    free_energy = replicas.free_energy(spins)
    (gradient,) = torch.autograd.grad(free_energy.sum(), replicas.weight)
    for r in range(3):
        one = replicas.replica(r).requires_grad_(True)
        assert one.weight.dtype == torch.float64
        torch.testing.assert_close(hidden[r], one.hidden_field(spins[r]), rtol=0, atol=1e-12)
        torch.testing.assert_close(
            visible[r], one.visible_field(block_spins[r], L), rtol=0, atol=1e-12
        )
        single = one.free_energy(spins[r])
        torch.testing.assert_close(free_energy[r], single, rtol=0, atol=1e-12)
        (single_gradient,) = torch.autograd.grad(single.sum(), one.weight)
        torch.testing.assert_close(gradient[r], single_gradient, rtol=0, atol=1e-12)


def test_the_initial_filters_are_independent_draws():
    torch.manual_seed(0)
    weight = ReplicaRBM(4, 8, 2, init_scale=0.01).weight.detach()
    assert weight.shape == (4, 8, 8)
    assert weight.abs().max() <= 0.01
    assert len({tuple(w.flatten().tolist()) for w in weight}) == 4


def cd_gradient(module: RBMModule, spins: torch.Tensor, seed: int) -> torch.Tensor:
    torch.manual_seed(seed)  # the Gibbs noise
    module.rbm.weight.grad = None
    module.contrastive_divergence(spins).backward()
    return module.rbm.weight.grad.clone()


@pytest.mark.parametrize("persistent", [False, True])
def test_replicas_do_not_see_each_other(persistent):
    """Replica 0's CD gradient, for the same data and noise, does not change when replica 1's
    filter or minibatch does (its noise is its own slice of the draw, not a function of them)."""
    torch.manual_seed(0)
    module = RBMModule(filter_size=4, cd_k=2, n_replicas=2, persistent=persistent).double()
    with torch.no_grad():
        module.rbm.weight.mul_(30.0)  # strong enough for the chains to move
    spins = random_spins((2, 6, 8, 8), seed=4)
    before = cd_gradient(module, spins, seed=5)
    module.chains = None
    with torch.no_grad():
        module.rbm.weight[1] = torch.randn(4, 4, dtype=torch.float64)
    other = spins.clone()
    other[1] = random_spins((6, 8, 8), seed=6)
    after = cd_gradient(module, other, seed=5)
    assert torch.equal(before[0], after[0])
    assert not torch.equal(before[1], after[1])
    if persistent:
        assert module.chains.shape == (2, 6, 8, 8)


def test_the_loss_is_the_sum_of_the_replicas_surrogate_losses():
    """For the same noise, the gradient of filter r is d/dW_r [mean F_r(data_r) - mean F_r(end_r)],
    end_r replica r's chain end: replica r's CD-k gradient and nothing else."""
    torch.manual_seed(0)
    module = RBMModule(filter_size=4, cd_k=1, n_replicas=2).double()
    spins = random_spins((2, 5, 8, 8), seed=7)
    torch.manual_seed(8)
    with torch.no_grad():
        chain_end = module.rbm.gibbs(spins, 1)
    gradient = cd_gradient(module, spins, seed=8)
    for r in range(2):
        one = module.rbm.replica(r).requires_grad_(True)
        loss = one.free_energy(spins[r]).mean() - one.free_energy(chain_end[r]).mean()
        (expected,) = torch.autograd.grad(loss, one.weight)
        torch.testing.assert_close(gradient[r], expected, rtol=0, atol=1e-12)


def test_one_replica_is_the_module_of_before():
    """R = 1: the same state-dict key and shape, the same initial draw as a bare ConvRBM."""
    torch.manual_seed(3)
    module = RBMModule(filter_size=8)
    torch.manual_seed(3)
    reference = ConvRBM(8, 2)
    assert list(module.state_dict()) == ["rbm.weight"]
    assert torch.equal(module.rbm.weight, reference.weight)
    assert isinstance(module.rbm, ConvRBM) and module.hparams.n_replicas == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_a_bad_replica_count_is_named(bad):
    with pytest.raises(ValueError, match="model.n_replicas"):
        RBMModule(filter_size=4, n_replicas=bad)


def test_each_replica_has_its_own_permutation_of_the_set():
    spins = torch.arange(40, dtype=torch.float32).view(40, 1, 1).expand(40, 2, 2).clone()
    single = list(ShuffledBatches(spins, batch_size=4, seed=3, chunk=3))
    replicated = list(ShuffledBatches(spins, batch_size=4, seed=3, chunk=3, replicas=3))
    assert [c.shape[0] for c in replicated] == [c.shape[0] for c in single] == [3, 3, 3, 1]
    assert replicated[0].shape == (3, 3, 4, 2, 2)
    # Replica 0 sees what a single run sees; every replica sees each configuration once an epoch.
    assert torch.equal(torch.cat([c[:, 0] for c in replicated]), torch.cat(single))
    orders = [torch.cat([c[:, r] for c in replicated])[:, :, 0, 0].flatten() for r in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(40))
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


def test_filters_of_a_replica_file_load_only_as_replicas(tmp_path):
    torch.manual_seed(0)
    replicas = ReplicaRBM(2, 4, 2, init_scale=1.0)
    path = save_filter(tmp_path / "two.pt", replicas)
    with pytest.raises(ValueError, match=r"holds 2 filters.*load_rbms"):
        load_rbm(path)
    loaded = load_rbms(path)
    assert [torch.equal(f.weight, replicas.weight[r].detach()) for r, f in enumerate(loaded)] == [
        True,
        True,
    ]
    transform = learned(str(path))
    assert transform.n_replicas == 2 and len(transform.replica_steps()) == 2
    with pytest.raises(ValueError, match="2 independently trained filters"):
        transform.steps()
    single = save_filter(tmp_path / "one.pt", ConvRBM(4, 2))
    assert len(load_rbms(single)) == 1 and learned(str(single)).replicas == ()


def test_two_replica_run_logs_each_and_the_spread_and_evaluate_measures_both(tmp_path):
    """train with R = 2 through the config, then evaluate its checkpoint."""
    cfg = compose_train(tmp_path, [*TINY, "model.n_replicas=2", "logger=csv"])
    metrics, objects = training.train(cfg)
    run = tmp_path / "run"
    weight = last_checkpoint(run)["state_dict"]["rbm.weight"]
    assert weight.shape == (2, 4, 4) and not torch.equal(weight[0], weight[1])
    assert objects["model"].updates == 2 * 20  # each replica made a single run's 20 per epoch
    for r in range(2):
        assert math.isfinite(metrics[f"mcrg/replica{r}/y_t/nr1_nc3"])
        assert math.isfinite(metrics[f"mcrg/replica{r}/y_t_err/nr1_nc3"])
    each = [metrics[f"mcrg/replica{r}/y_t/nr1_nc3"] for r in range(2)]
    assert metrics["mcrg/y_t/nr1_nc3"] == pytest.approx(sum(each) / 2)
    spread = abs(each[0] - each[1]) / math.sqrt(2)  # standard deviation of two values
    assert metrics["mcrg/y_t_spread/nr1_nc3"] == pytest.approx(spread)
    assert metrics["mcrg/y_t_err/nr1_nc3"] == pytest.approx(spread / math.sqrt(2))
    with (run / "mcrg_history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert {row["replica"] for row in rows} == {"0", "1", "mean"}
    assert (run / "filters" / "epoch_002.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="load_rbms"):
        load_rbm(run / "checkpoints" / "last.ckpt")

    out = tmp_path / "evaluate"
    out.mkdir()
    ckpt = run / "checkpoints" / "last.ckpt"
    record = evaluation.evaluate(
        eval_config(f"ckpt_path={ckpt}", *EVAL_TINY, "data.L=8", "mcrg.n_rg_steps=1"), out
    )
    assert record["n_replicas"] == 2 and len(record["replicas"]) == 2
    values = [replica["y_t"][0][2] for replica in record["replicas"]]
    assert values[0] != values[1]
    assert record["y_t"][0][2] == pytest.approx(sum(values) / 2)
    table = (out / "table1.md").read_text()
    assert "Mean over 2 independently trained filters" in table and "Filter 1" in table
    saved = json.loads((out / "mcrg.json").read_text())
    assert saved["replicas"][1]["y_t"][0][2] == values[1]


def test_equal_filters_give_equal_results_on_the_same_configurations(tmp_path):
    """Two copies of one filter: each replica's numbers equal one another and those of the filter
    evaluated alone (same configurations, same draws), and the spread is exactly zero."""
    torch.manual_seed(0)
    one = ConvRBM(2, 2, init_scale=1.0)
    twice = ReplicaRBM(2, 2, 2)
    with torch.no_grad():
        twice.weight.copy_(one.weight.detach().expand(2, 2, 2))
    records = []
    for name, rbm in (("one", one), ("twice", twice)):
        path = save_filter(tmp_path / f"{name}.pt", rbm)
        out = tmp_path / name
        out.mkdir()
        cfg = eval_config(f"ckpt_path={path}", *EVAL_TINY, "data.L=8", "mcrg.n_rg_steps=1")
        records.append(evaluation.evaluate(cfg, out))
    single, double = records
    assert "replicas" not in single and "n_replicas" not in single
    for replica in double["replicas"]:
        for key in ("y_t", "y_t_err", "y_h", "y_h_err"):
            np.testing.assert_array_equal(replica[key], single[key])
    np.testing.assert_array_equal(double["y_t"], single["y_t"])
    spread = np.array(double["y_t_spread"])
    assert np.isfinite(spread).any() and (spread[np.isfinite(spread)] == 0).all()


def test_two_replicas_on_the_cubic_lattice(tmp_path):
    """data.dim=3, torch backend: filters (2, 2, 2, 2), each measured."""
    overrides = [*TINY, "logger=none", "data.dim=3", "model.filter_size=2", "model.n_replicas=2"]
    cfg = compose_train(tmp_path, [*overrides, "trainer.max_epochs=1"])
    metrics, objects = training.train(cfg)
    weight = objects["model"].rbm.weight
    assert weight.shape == (2, 2, 2, 2) and not torch.equal(weight[0], weight[1])
    assert "mcrg/replica1/y_t/nr1_nc1" in metrics and "mcrg/y_t_spread/nr1_nc1" in metrics
