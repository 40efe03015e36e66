"""The committed filters (results/*.pt) load as the transformation docs/results.md evaluates."""

from pathlib import Path

import pytest
import torch

from rbmrg.checkpoint import load_rbm

RESULTS = Path(__file__).resolve().parents[1] / "results"


@pytest.mark.parametrize("name", ["paper_filter.pt", "paper_long_filter.pt"])
def test_committed_filter_is_the_papers_geometry_and_localised(name):
    rbm = load_rbm(RESULTS / name)
    assert (rbm.filter_size, rbm.stride) == (8, 2)
    weight = rbm.weight.detach().abs()
    # A trained filter, not an initial one: far outside the initial interval [-0.01, 0.01], with
    # its largest weight where the paper's Fig. 1 has it, on one site next to the window's centre.
    assert weight.max() > 1.0
    row, col = divmod(int(weight.argmax()), 8)
    assert (row, col) in {(3, 3), (3, 4), (4, 3), (4, 4)}
    assert torch.isfinite(rbm.weight).all()
