"""Small stand-ins shared by the tests of the training layer."""

import pytorch_lightning as pl


class HeldOut(pl.LightningDataModule):
    """What the MCRG callbacks and the module need from IsingDataModule: ``val_set`` (a SampleSet)
    and minibatches to train on (the first 200 configurations)."""

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
