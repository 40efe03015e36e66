"""rbmrg: optimal real-space RG transformations learned with an RBM, exponents by MCRG.

The physics is plain PyTorch (``ising``, ``rbm``, ``couplings``, ``transforms``, ``mcrg``); Lightning,
Hydra and wandb live in thin layers on top (``data``, ``module``, ``callbacks``, ``train.py``,
``evaluate.py``).
"""

__version__ = "0.1.0"
