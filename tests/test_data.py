"""IsingDataModule: settings checked up front, cache reused and validated, batches as promised."""

import dataclasses
import math
import os
import stat
import struct
import warnings
from collections import Counter

import pytest
import torch

from rbmrg.lattice.sampling import SampleSet
from rbmrg.progress import progress_bar
from rbmrg.training import data as data_module
from rbmrg.training.data import IsingDataModule, ShuffledBatches

SMALL = dict(L=8, n_train=200, n_val=400, n_chains=20, n_thermalize=20, n_between=2, progress=False)


def make(tmp_path, **overrides) -> IsingDataModule:
    return IsingDataModule(**{**SMALL, "data_dir": str(tmp_path), **overrides})


def test_sets_have_promised_shape_and_are_independent(tmp_path):
    data = make(tmp_path, coupling=0.2)
    data.prepare_data()
    data.setup("fit")
    assert data.train_set.spins.shape == (200, 8, 8) and data.train_set.spins.dtype == torch.int8
    assert data.val_set.spins.shape == (400, 8, 8) and data.val_set.n_chains == 20
    assert set(data.val_set.spins.unique().tolist()) == {-1, 1}
    # Different seeds: at K = 0.2 a 64-spin configuration recurs with negligible probability, unless
    # the two sets came from the same random stream.
    train = {tuple(row) for row in data.train_set.spins.flatten(1).tolist()}
    val = {tuple(row) for row in data.val_set.spins.flatten(1).tolist()}
    assert len(train) == 200 and len(val) == 400 and not train & val


def test_cache_is_reused(tmp_path):
    first = make(tmp_path)
    first.setup()
    files = sorted(tmp_path.iterdir())
    assert len(files) == 2
    stamps = [f.stat().st_mtime_ns for f in files]
    again = make(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again.setup()
    assert torch.equal(first.train_set.spins, again.train_set.spins)
    assert torch.equal(first.val_set.spins, again.val_set.spins)
    assert [f.stat().st_mtime_ns for f in sorted(tmp_path.iterdir())] == stamps


def test_cache_key_follows_settings(tmp_path):
    data = make(tmp_path)
    assert data.cache_path(200, 0) != make(tmp_path, n_between=3).cache_path(200, 0)
    assert data.cache_path(200, 0) != make(tmp_path, coupling=0.4).cache_path(200, 0)
    assert data.cache_path(200, 0) != data.cache_path(200, 5)


@pytest.mark.parametrize(
    "damage, reason",
    [("truncate", "unreadable"), ("flip_spin", "checksum"), ("garbage", "unreadable")],
)
def test_corrupt_cache_is_detected_and_regenerated(tmp_path, damage, reason):
    good = make(tmp_path)
    good.setup()
    path = good.cache_path(200, 0)
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        # Overwrite one spin byte inside the stored tensor with the other valid value: only the
        # checksum can tell.
        position = raw.find(bytes([1, 1, 1, 1, 255, 255, 255, 255]))
        position = raw.find(bytes([1]) * 8) if position < 0 else position
        assert position > 0
        patched = bytearray(raw)
        patched[position] = 255 if patched[position] == 1 else 1
        path.write_bytes(bytes(patched))
    again = make(tmp_path)
    with pytest.warns(RuntimeWarning, match=f"corrupt.*{reason}"):
        again.setup()
    assert torch.equal(again.train_set.spins, good.train_set.spins)  # same seed, regenerated
    # ...and the regenerated file is whole again.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(tmp_path).setup()


@pytest.mark.parametrize("field", ["energy", "magnetization", "tau_int_energy"])
def test_flipped_byte_outside_the_spins_is_detected(tmp_path, field):
    """Every stored field has its own checksum, not only the spins.

    One byte of the field's stored bytes is changed (a tensor's raw data, or the float in the pickle)
    so that the file still loads and the value is still plausible: only its checksum can tell.
    """
    good = make(tmp_path)
    good.setup()
    path = good.cache_path(200, 0)
    raw = path.read_bytes()
    value = getattr(good.train_set, field)
    if isinstance(value, torch.Tensor):
        stored = value.numpy().tobytes()
        offset = 3  # a low mantissa byte of the first entry
    else:
        stored = b"G" + struct.pack(">d", value)  # pickle BINFLOAT: opcode, big-endian double
        offset = 8  # its last mantissa byte
    assert raw.count(stored) == 1
    position = raw.find(stored) + offset
    patched = bytearray(raw)
    patched[position] ^= 0x01
    path.write_bytes(bytes(patched))
    again = make(tmp_path)
    with pytest.warns(RuntimeWarning, match=f"corrupt.*checksum mismatch in {field}"):
        again.setup()
    regenerated = getattr(again.train_set, field)
    assert (
        torch.equal(regenerated, value) if isinstance(value, torch.Tensor) else regenerated == value
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(tmp_path).setup()


def test_cache_round_trip_keeps_every_field(tmp_path):
    first = make(tmp_path)
    first.setup()
    again = make(tmp_path)
    again.setup()  # from the cache
    for name in [f.name for f in dataclasses.fields(SampleSet)]:
        stored, drawn = getattr(again.train_set, name), getattr(first.train_set, name)
        if isinstance(drawn, torch.Tensor):
            assert torch.equal(stored, drawn) and stored.dtype == drawn.dtype, name
        else:
            assert stored == drawn or (math.isnan(stored) and math.isnan(drawn)), name


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_cache_files_get_the_mode_of_an_ordinary_file(tmp_path, umask):
    """0666 minus the umask, as for any new file, so a group sharing the cache can read it."""
    previous = os.umask(umask)
    try:
        make(tmp_path).setup()
    finally:
        os.umask(previous)
    files = list(tmp_path.iterdir())
    assert len(files) == 2
    assert {stat.S_IMODE(f.stat().st_mode) for f in files} == {0o666 & ~umask}


def test_cache_directory_is_created_only_when_a_set_is_saved(tmp_path):
    data_dir = tmp_path / "new" / "cache"
    data = make(tmp_path, data_dir=str(data_dir))
    assert not (tmp_path / "new").exists()  # checking the settings creates nothing
    data.setup()
    assert len(list(data_dir.iterdir())) == 2


def test_cache_directory_that_is_a_file_is_refused_before_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "draw_samples", _no_sampling)
    target = tmp_path / "cache"
    target.write_text("earlier results")
    for data_dir in (target, target / "sub"):
        with pytest.raises(ValueError, match="data.data_dir=") as error:
            make(tmp_path, data_dir=str(data_dir))
        assert str(target) in str(error.value)
    assert target.read_text() == "earlier results"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write any directory"
)
def test_cache_directory_that_cannot_be_written_is_refused_before_sampling(tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "draw_samples", _no_sampling)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        for data_dir in (locked, locked / "sub"):
            with pytest.raises(ValueError, match="data.data_dir=.*cannot be"):
                make(tmp_path, data_dir=str(data_dir))
    finally:
        locked.chmod(0o755)
    assert not any(locked.iterdir())


def _no_sampling(*args, **kwargs):
    raise AssertionError("sampled although the cache directory is unusable")


def test_no_temporary_files_left(tmp_path):
    make(tmp_path).setup()
    assert all(not name.endswith(".tmp") for name in os.listdir(tmp_path))


def test_train_dataloader_batches(tmp_path):
    data = make(tmp_path, batch_size=16)
    data.setup()
    loader = data.train_dataloader()
    assert len(loader) == 200 // 16
    epoch_one = list(loader)
    epoch_two = list(loader)
    assert len(epoch_one) == len(loader)
    # Chunks of updates_per_step = 1 minibatch each.
    assert all(b.shape == (1, 16, 8, 8) and b.dtype == torch.float32 for b in epoch_one)
    epoch_one, epoch_two = torch.cat(epoch_one).flatten(0, 1), torch.cat(epoch_two).flatten(0, 1)
    assert not torch.equal(epoch_one, epoch_two)  # reshuffled
    # An epoch draws rows of the set without replacement.
    available = Counter(tuple(row) for row in data.train_set.spins.float().flatten(1).tolist())
    drawn = Counter(tuple(row) for row in epoch_one.flatten(1).tolist())
    assert all(available[row] >= count for row, count in drawn.items())
    # Same seed, same shuffles, whatever the chunk size (12 minibatches: chunks of 5, 5, 2).
    replay = make(tmp_path, batch_size=16, updates_per_step=5)
    replay.setup()
    chunks = list(replay.train_dataloader())
    assert [c.shape[0] for c in chunks] == [5, 5, 2] and len(replay.train_dataloader()) == 3
    assert torch.equal(torch.cat(chunks).flatten(0, 1), epoch_one)


def test_ranks_shard_disjointly():
    spins = torch.arange(100).float()[:, None, None].expand(100, 2, 2)
    shards = [ShuffledBatches(spins, 7, seed=3, rank=r, world_size=3) for r in range(3)]
    assert {len(s) for s in shards} == {33 // 7}
    seen = [torch.cat(list(s)).flatten(0, 1)[:, 0, 0].tolist() for s in shards]
    flat = [x for shard in seen for x in shard]
    assert len(flat) == len(set(flat)) == 3 * (33 // 7) * 7


@pytest.mark.parametrize(
    "overrides, name",
    [
        (dict(L=7), "L="),
        (dict(L=2), "L="),
        (dict(n_train=0), "n_train="),
        (dict(n_val=-5), "n_val="),
        (dict(n_chains=0), "n_chains="),
        (dict(n_chains=10, n_train=100, n_val=100), "n_chains="),
        (dict(n_train=210), "n_train="),
        (dict(algorithm="gibbs"), "algorithm="),
        (dict(n_thermalize=-1), "n_thermalize="),
        (dict(n_between=0), "n_between="),
        (dict(batch_size=0), "batch_size="),
        (dict(train_seed=4, val_seed=4), "train_seed="),
        (dict(dim=3, algorithm="metropolis-msc"), "algorithm="),
        (dict(device="quantum"), "device="),
    ],
)
def test_bad_settings_raise_before_sampling(tmp_path, overrides, name):
    with pytest.raises(ValueError, match=name):
        make(tmp_path, **overrides)
    assert not any(tmp_path.iterdir())


def test_warns_when_samples_are_correlated(tmp_path):
    data = make(tmp_path, algorithm="metropolis", n_between=1, L=16)
    with pytest.warns(RuntimeWarning, match="tau_int"):
        data.setup()


def test_progress_bar_counts():
    seen = []
    with progress_bar(10, "test", enabled=False) as update:
        update(5)
        seen.append(5)
    assert seen == [5]
    with progress_bar(10, "test") as update:
        update(10)


def test_lightning_trainer_consumes_the_loader(tmp_path):
    import pytorch_lightning as pl

    class Mean(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))
            self.batches = []

        def training_step(self, batch, batch_idx):
            self.batches.append(batch.shape)
            return ((batch.mean() - self.weight) ** 2).sum()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Mean()
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    trainer.fit(model, datamodule=make(tmp_path, batch_size=50, updates_per_step=3))
    # 4 minibatches an epoch in chunks of 3 and 1, for 2 epochs.
    assert model.batches == [torch.Size([3, 50, 8, 8]), torch.Size([1, 50, 8, 8])] * 2
