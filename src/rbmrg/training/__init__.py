"""Training the weight factor: the Lightning layer over :mod:`rbmrg.lattice` and :mod:`rbmrg.rg`.

``data`` (the data module and its minibatches), ``module`` (CD-k with Adam), ``cd_numba`` (the fused
CPU kernel of one CD-k update), ``schedules`` (learning-rate laws) and ``callbacks`` (MCRG after
every epoch, feature maps, figures).
"""
