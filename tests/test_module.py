"""RBMModule (CD-k with Lightning) and the learning-rate schedules."""

import math

import pytest
import pytorch_lightning as pl
import torch

from rbmrg.lattice.model import IsingModel
from rbmrg.lattice.sampling import draw_samples
from rbmrg.training.module import RBMModule
from rbmrg.training.schedules import Constant, SqrtDecay, SqrtInterpolation, TorchSchedule


def ordered_samples(n: int = 200, L: int = 8) -> torch.Tensor:
    """Configurations of the 2D Ising model at K = 0.6 (ordered phase): strong local alignment."""
    samples = draw_samples(
        IsingModel(L=L, coupling=0.6), n, n_chains=20, n_thermalize=100, n_between=2, seed=3
    )
    return samples.spins.to(torch.float32)


class Batches:
    """On-device minibatches, the shape of IsingDataModule.train_dataloader."""

    def __init__(self, spins: torch.Tensor, batch_size: int):
        self.spins, self.batch_size = spins, batch_size

    def __len__(self) -> int:
        return self.spins.shape[0] // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.spins.shape[0])
        for index in range(len(self)):
            yield self.spins[order[index * self.batch_size : (index + 1) * self.batch_size]]


def fit(
    module: RBMModule,
    spins: torch.Tensor,
    epochs: int,
    tmp_path,
    batch_size: int = 10,
    batches=None,
):
    """Train ``module`` on minibatches of ``spins`` (or on the loader ``batches``), quietly."""
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=batches or Batches(spins, batch_size))
    return trainer


@pytest.mark.parametrize("persistent", [False, True])
def test_training_learns_the_alignment_of_the_data(tmp_path, persistent):
    """A few CD-3 epochs on ordered configurations move the filter away from ~0 and lower the free
    energy of the data relative to random configurations (the model assigns them more weight)."""
    pl.seed_everything(0)
    spins = ordered_samples()
    noise = torch.randint(0, 2, spins.shape).float() * 2 - 1
    module = RBMModule(filter_size=4, stride=2, init_scale=0.01, persistent=persistent)
    module.schedule = Constant(1e-2)
    start = module.rbm.weight.detach().clone()
    with torch.no_grad():
        gap_before = module.rbm.free_energy(spins).mean() - module.rbm.free_energy(noise).mean()
    trainer = fit(module, spins, epochs=3, tmp_path=tmp_path)
    assert trainer.global_step == 3 * 20
    weight = module.rbm.weight.detach()
    assert not torch.equal(weight, start)
    # Z2 symmetry: W and -W are the same transformation; the magnitude of the summed coupling grows.
    assert weight.sum().abs() > 10 * start.sum().abs().clamp(min=1e-3)
    with torch.no_grad():
        gap_after = module.rbm.free_energy(spins).mean() - module.rbm.free_energy(noise).mean()
    assert gap_after < gap_before - 1.0
    if persistent:
        assert module.chains is not None and module.chains.shape == (10, 8, 8)


def test_persistent_chains_survive_a_checkpoint(tmp_path):
    pl.seed_everything(1)
    module = RBMModule(filter_size=4, stride=2, persistent=True)
    trainer = fit(module, ordered_samples(40), epochs=1, tmp_path=tmp_path)
    path = tmp_path / "pcd.ckpt"
    trainer.save_checkpoint(path)
    restored = RBMModule.load_from_checkpoint(path)
    torch.testing.assert_close(restored.chains, module.chains)
    torch.testing.assert_close(restored.rbm.weight, module.rbm.weight)
    assert restored.hparams.persistent and restored.hparams.filter_size == 4


def test_surrogate_loss_gradient_is_the_cd_gradient():
    """d/dW [mean F(data) - mean F(chain end)] = -<d log Y/dW>_data + <d log Y/dW>_chain, with
    d log Y / dW_u = sum_j tanh(h_j) sigma_(b j + u) (Eq. 4)."""
    torch.manual_seed(0)
    module = RBMModule(filter_size=3, stride=2, init_scale=0.3, cd_k=1)
    data = torch.randint(0, 2, (5, 6, 6)).float() * 2 - 1
    torch.manual_seed(1)
    loss = module.contrastive_divergence(data)
    loss.backward()
    torch.manual_seed(1)
    chain_end = module.rbm.gibbs(data, 1)

    def score(spins):  # <d log Y / dW> by explicit sums over windows
        weight = module.rbm.weight.detach()
        h = module.rbm.hidden_field(spins).detach()
        grad = torch.zeros_like(weight)
        for u in range(3):
            for v in range(3):
                window = torch.roll(spins, (-u, -v), (1, 2))[:, ::2, ::2]
                grad[u, v] = (torch.tanh(h) * window).sum((1, 2)).mean()
        return grad

    torch.testing.assert_close(module.rbm.weight.grad, score(chain_end) - score(data))


def test_sqrt_decay_reaches_lr_final_at_epoch_25_and_stays():
    schedule = SqrtDecay(lr=1e-3, lr_final=1e-4, decay_epochs=25)
    steps = 1000  # the paper: 10^4 configurations / minibatch 10
    assert schedule.learning_rate(0, steps) == pytest.approx(1e-3)
    assert schedule.learning_rate(25 * steps, steps) == pytest.approx(1e-4)
    assert schedule.learning_rate(25 * steps - 1, steps) > 1e-4
    assert schedule.learning_rate(50 * steps - 1, steps) == pytest.approx(1e-4)
    # The square-root law itself: lr(t)^-2 grows linearly in t.
    inv_sq = [schedule.learning_rate(t, steps) ** -2 for t in (0, 5000, 10000)]
    assert inv_sq[2] - inv_sq[1] == pytest.approx(inv_sq[1] - inv_sq[0])
    lrs = [schedule.learning_rate(t, steps) for t in range(0, 50 * steps, 97)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))


def test_sqrt_interpolation_reaches_lr_final_and_has_more_area_than_sqrt_decay():
    steps = 1000
    interp = SqrtInterpolation(lr=1e-3, lr_final=1e-4, decay_epochs=25)
    decay = SqrtDecay(lr=1e-3, lr_final=1e-4, decay_epochs=25)
    assert interp.learning_rate(0, steps) == pytest.approx(1e-3)
    assert interp.learning_rate(25 * steps, steps) == pytest.approx(1e-4)
    assert interp.learning_rate(40 * steps, steps) == pytest.approx(1e-4)
    # lr(0) - lr(t) grows as sqrt(t): quadrupling t doubles the drop.
    drop = [1e-3 - interp.learning_rate(t, steps) for t in (1000, 4000)]
    assert drop[1] == pytest.approx(2 * drop[0])
    # Areas over the decay, in units of lr * T: 1 - 0.9 * 2/3 = 0.4 and 2 (sqrt(100) - 1) / 99.
    area = [sum(s.learning_rate(t, steps) for t in range(25 * steps)) / (1e-3 * 25 * steps)
            for s in (interp, decay)]  # fmt: skip
    assert area[0] == pytest.approx(0.4, rel=1e-3)
    assert area[1] == pytest.approx(18 / 99, rel=1e-2)


def test_schedule_drives_the_optimizer_inside_lightning(tmp_path):
    module = RBMModule(filter_size=2, stride=2)
    module.schedule = SqrtDecay(lr=1e-3, lr_final=1e-4, decay_epochs=2)
    seen = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    spins = torch.randint(0, 2, (50, 4, 4)).float() * 2 - 1
    trainer = pl.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
        default_root_dir=tmp_path,
    )
    trainer.fit(module, train_dataloaders=Batches(spins, 10))
    assert len(seen) == 15  # 5 steps an epoch
    expected = [module.schedule.learning_rate(t, 5) for t in range(15)]
    assert seen == pytest.approx(expected)
    assert seen[10:] == pytest.approx([1e-4] * 5)


def test_torch_scheduler_through_torch_schedule():
    schedule = TorchSchedule(
        lr=1e-3,
        scheduler=lambda opt: torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.5),
        interval="epoch",
    )
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=schedule.lr)
    config = schedule.build(optimizer, steps_per_epoch=10)
    assert config["interval"] == "epoch"
    optimizer.step()
    config["scheduler"].step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


@pytest.mark.parametrize(
    "build, setting",
    [
        (lambda: RBMModule(cd_k=0), "cd_k"),
        (lambda: RBMModule(cd_k=1.5), "cd_k"),
        (lambda: SqrtDecay(lr=0.0), "schedule.lr"),
        (lambda: SqrtDecay(lr=1e-3, lr_final=-1e-4), "schedule.lr_final"),
        (lambda: Constant(lr=-1.0), "schedule.lr"),
        (lambda: Constant(lr=math.nan), "schedule.lr"),
        (lambda: RBMModule(filter_size=8).check_lattice(4), "filter_size=8"),
        (lambda: RBMModule(stride=3, filter_size=2).check_lattice(8), "L=8"),
    ],
)
def test_bad_settings_raise_naming_the_setting(build, setting):
    with pytest.raises(ValueError, match=setting.replace(".", r"\.")):
        build()


@pytest.mark.parametrize("backend, replicas", [("numba", 1), ("torch", 1), ("numba", 2)])
def test_updates_per_step_leave_every_update_unchanged(tmp_path, backend, replicas):
    """M consecutive updates per training_step (chunks of M minibatches, the last one shorter) give
    the filter of one update per step, bit for bit: same minibatches, same Gibbs draws, same Adam
    steps and learning rates (a decaying schedule, so a shifted lr would show)."""
    from rbmrg.training.data import ShuffledBatches

    spins = ordered_samples(n=240, L=8)  # 24 minibatches an epoch: chunks of 7 leave a tail of 3
    weights = {}
    for chunk, seed in ((1, 11), (7, 11), (50, 11), ("control", 12)):
        pl.seed_everything(seed)
        module = RBMModule(
            filter_size=4, stride=2, backend=backend, persistent=True, n_replicas=replicas
        )
        module.schedule = SqrtDecay(lr=1e-2, lr_final=1e-3, decay_epochs=2)
        size = 7 if chunk == "control" else chunk
        batches = ShuffledBatches(spins, 10, seed=5, chunk=size, replicas=replicas)
        trainer = fit(module, spins, 3, tmp_path, batches=batches)
        assert module.updates == 3 * 24  # one CD update per minibatch, whatever the chunk
        assert trainer.global_step == 3 * -(-24 // size)
        weights[chunk] = module.rbm.weight.detach().clone()
    assert torch.equal(weights[1], weights[7]) and torch.equal(weights[1], weights[50])
    assert not torch.equal(weights[7], weights["control"])  # other Gibbs draws: the test can tell
