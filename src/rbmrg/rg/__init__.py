"""The renormalization group: the RBM weight factor, RG transformations, interactions and MCRG.

``rbm`` (the convolutional RBM of Chung & Kao, Eqs. 3-5), ``transforms`` (RBM, majority rule,
decimation), ``interactions`` (the even and odd interaction sets measured on every level) and
``mcrg`` (Swendsen's MCRG with jackknife errors). Plain PyTorch: nothing here imports Lightning.
"""
