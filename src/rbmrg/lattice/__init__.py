"""Sampling the lattice: the Ising model, its Monte Carlo samplers and the sampling drivers.

``model`` (the model and its observables), ``base`` (the ``Sampler`` shape), ``checkerboard``
(torch references), ``rng`` (the random-number core of the compiled kernels), ``msc`` and ``wolff``
(numba kernels), ``fused`` (Triton), ``swendsen_wang`` (torch clusters, any device), ``samplers`` (the registry by name) and ``sampling`` (data sets and tau_int).
Plain PyTorch and numba: nothing here imports Lightning.
"""
