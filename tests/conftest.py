"""Shared test settings: deterministic threads, CPU/CUDA device parametrization."""

import os

import pytest
import torch

# Headless and offline, as on CI: no display for matplotlib, no wandb account or network.
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

# Two cores on CI: keep torch from oversubscribing them when numba threads also run.
torch.set_num_threads(int(os.environ.get("RBMRG_TEST_THREADS", "2")))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Run a test on the CPU and, where present, on CUDA."""
    return request.param
