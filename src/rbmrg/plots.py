"""Figures of a training run: the learned filter (Fig. 1 of Chung & Kao) and y_t over training (Fig. 2).

Matplotlib's object API with the Agg canvas (no pyplot, no display): safe on clusters and inside
Lightning callbacks. Every function returns a :class:`matplotlib.figure.Figure`; save it with
``fig.savefig(path)``. A 3D (f x f x f) filter is drawn as its f slices W[k, :, :], k = 0..f-1, side
by side on one colour scale.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from rbmrg.lattice.model import exact_exponents

#: Majority rule on 2x2 blocks, 32x32 lattice, N_r = 1, N_c = 7 (Swendsen 1982; Table 1 of the paper).
Y_T_MAJORITY = 0.967


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _draw_filter(fig: Figure, axes: list, weight: np.ndarray, title: str) -> None:
    """The filter on ``axes``: one image in 2D, one per slice W[k] in 3D; one symmetric scale."""
    # Symmetric colour scale: white is W = 0, red couples a spin positively to its block spin.
    scale = float(np.abs(weight).max()) or 1.0
    slices = [weight] if weight.ndim == 2 else list(weight)
    for k, (ax, image_data) in enumerate(zip(axes, slices, strict=True)):
        image = ax.imshow(
            image_data, cmap="RdBu_r", vmin=-scale, vmax=scale, interpolation="nearest"
        )
        ax.set_title(title if weight.ndim == 2 else f"{title}, slice {k}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(image, ax=axes[0] if len(axes) == 1 else axes, fraction=0.046, pad=0.04)
    bar.set_label(f"W (scale symmetric, ±{scale:.3g})", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _columns(weight: np.ndarray) -> int:
    return 1 if weight.ndim == 2 else weight.shape[0]


def filter_figure(weight: torch.Tensor | np.ndarray, title: str = "filter W") -> Figure:
    """The filter as an image (2D) or its slices (3D); colour scale symmetric around zero."""
    weight = _numpy(weight)
    columns = _columns(weight)
    fig = _figure(0.6 + 3.4 * columns, 3.6)
    axes = [fig.add_subplot(1, columns, k + 1) for k in range(columns)]
    _draw_filter(fig, axes, weight, title)
    if columns == 1:
        fig.tight_layout()
    return fig


def filter_panel(filters: Mapping[int, torch.Tensor | np.ndarray], label: str = "epoch") -> Figure:
    """Fig. 1 of Chung & Kao: the filter at several epochs, left to right (each its own scale).

    A 3D filter takes one row per epoch, its slices left to right. ``label`` names the keys in
    the titles (``"replica"`` draws R filters of one epoch side by side).
    """
    epochs = sorted(filters)
    weights = [_numpy(filters[epoch]) for epoch in epochs]
    columns = _columns(weights[0]) if weights else 1
    if columns == 1:
        fig = _figure(3.4 * max(len(epochs), 1), 3.2)
        for index, (epoch, weight) in enumerate(zip(epochs, weights, strict=True)):
            ax = fig.add_subplot(1, len(epochs), index + 1)
            _draw_filter(fig, [ax], weight, f"{label} {epoch}")
        fig.tight_layout()
        return fig
    fig = _figure(0.6 + 2.6 * columns, 2.6 * len(epochs))
    for row, (epoch, weight) in enumerate(zip(epochs, weights, strict=True)):
        axes = [
            fig.add_subplot(len(epochs), columns, row * columns + k + 1) for k in range(columns)
        ]
        _draw_filter(fig, axes, weight, f"{label} {epoch}")
    return fig


def yt_history_figure(
    history: Sequence[Mapping[str, float]],
    n_r: int = 1,
    n_cs: Sequence[int] = (7,),
    dim: int = 2,
) -> Figure:
    """Fig. 2 of Chung & Kao: y_t at N_r = ``n_r`` against the training step, with reference lines.

    ``history`` rows carry ``step``, ``n_r``, ``n_c``, ``y_t``, ``y_t_err`` (as written by
    :class:`rbmrg.training.callbacks.MCRGCallback`). The reference lines are the exact y_t of the
    ``dim``-dimensional model and, in 2D, Swendsen's majority-rule value.
    """
    exact = exact_exponents(dim)["y_t"]
    fig = _figure(6.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    for n_c in n_cs:
        rows = [r for r in history if r["n_r"] == n_r and r["n_c"] == n_c]
        rows = [r for r in rows if np.isfinite(r["y_t"])]
        if rows:
            ax.errorbar(
                [r["step"] for r in rows],
                [r["y_t"] for r in rows],
                yerr=[r["y_t_err"] if np.isfinite(r["y_t_err"]) else 0.0 for r in rows],
                marker="o",
                markersize=3,
                capsize=2,
                label=f"optimal RBM, $N_r$={n_r}, $N_c$={n_c}",
            )
    ax.axhline(exact, color="black", linestyle=":", label=f"exact $y_t$ = {exact:.5g}")
    if dim == 2:
        ax.axhline(
            Y_T_MAJORITY,
            color="red",
            linestyle=":",
            label=f"majority rule, $N_r$=1 = {Y_T_MAJORITY:g}(3)",
        )
    ax.set_xlabel("training step (optimizer updates)")
    ax.set_ylabel("thermal exponent $y_t$")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _numpy(weight: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(weight, torch.Tensor):
        return weight.detach().cpu().to(torch.float64).numpy()
    return np.asarray(weight, dtype=np.float64)
