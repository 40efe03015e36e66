# Daily commands. Threads: THREADS=1 keeps torch and numba to one core each (shared machines, CI).
PYTHON ?= python
THREADS ?=
ENV = $(if $(THREADS),OMP_NUM_THREADS=$(THREADS) NUMBA_NUM_THREADS=$(THREADS) RBMRG_TEST_THREADS=$(THREADS),)

.PHONY: install test train smoke benchmark

install:  ## editable install with the test and lint tools (CPU torch)
	$(PYTHON) -m pip install torch==2.13.0 -e ".[dev]"

test:  ## the fast test suite (what CI runs)
	$(ENV) $(PYTHON) -m pytest

train:  ## the paper's training run (conf/train.yaml); extra Hydra overrides via ARGS="..."
	$(ENV) $(PYTHON) train.py $(ARGS)

smoke:  ## end-to-end check in under a minute
	$(ENV) $(PYTHON) train.py experiment=smoke $(ARGS)

benchmark:  ## every benchmarks/*.py (sampler, MCRG, training); each appends to benchmarks/results/
	for script in benchmarks/*.py; do $(ENV) $(PYTHON) $$script || exit 1; done
