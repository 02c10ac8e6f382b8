"""Figures of the probes (matplotlib, Agg): the paper's figures 2, 3, 5 and 1/4/10 for any checkpoint."""

from __future__ import annotations

import math

import numpy as np
import torch

from stuffed_mamba.probes.buckets import log_buckets


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def figure_to_image(fig) -> np.ndarray:
    """Render and close a figure -> uint8 [H, W, 3] (for SummaryWriter.add_image(..., dataformats="HWC"))."""
    plt = _plt()
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return img


def save(fig, path) -> None:
    plt = _plt()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _fmt_len(T: int) -> str:
    return f"{T // 1024}K" if T % 1024 == 0 and T >= 1024 else str(T)


def passkey_heatmap(result, title: str = "passkey retrieval"):
    """Accuracy per (needle depth, context length), as figure 2: lengths on x, depth on y."""
    plt = _plt()
    acc = result.accuracy()
    lengths = list(acc)
    depths = sorted({d for ds in acc.values() for d in ds})
    grid = np.full((max(1, len(depths)), max(1, len(lengths))), np.nan)
    for j, T in enumerate(lengths):
        for i, d in enumerate(depths):
            if d in acc[T]:
                grid[i, j] = acc[T][d]
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * max(4, len(lengths)), 1.2 + 0.35 * max(4, len(depths))))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="upper")
    ax.set_xticks(range(len(lengths)), [_fmt_len(T) for T in lengths], rotation=45)
    ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_xlabel("context length")
    ax.set_ylabel("needle depth")
    tr = result.t_recall()
    ax.set_title(f"{title} (T_recall={_fmt_len(tr) if tr else 'none'})")
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    return fig


def _thin(T: int, max_points: int = 1500) -> np.ndarray:
    return np.unique(np.linspace(0, T - 1, min(T, max_points)).round().astype(int))


def retention_curves(alpha: torch.Tensor, train_length: int | None = None, max_layers: int = 48):
    """alpha_{1:t} [L, H, T] as figure 3: one panel per layer, one curve per head, T_train dashed."""
    plt = _plt()
    L, H, T = alpha.shape
    layers = np.unique(np.linspace(0, L - 1, min(L, max_layers)).round().astype(int))
    # a near-square grid: TensorBoard scales an image to its card's width, and a one-row strip of
    # panels (1560 x 400) became an unreadable thumbnail
    cols = math.ceil(math.sqrt(len(layers)))
    rows = (len(layers) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.2 * rows), squeeze=False, sharex=True, sharey=True)
    idx = _thin(T)
    t = idx + 1
    for ax, l in zip(axes.flat, layers, strict=False):  # the grid may have spare panels, turned off below
        ax.plot(t, alpha[l][:, idx].T.float().numpy(), lw=0.8)
        if train_length is not None:
            ax.axvline(train_length, color="red", ls=":", lw=1)
        ax.set_title(f"layer {l}", fontsize=8)
        ax.set_ylim(0, 1.02)
    for ax in list(axes.flat)[len(layers) :]:
        ax.axis("off")
    fig.supxlabel("t")
    fig.supylabel("alpha_{1:t}")
    fig.tight_layout()
    return fig


def loss_vs_position(loss: torch.Tensor, train_length: int | None = None, *, buckets: int = 48, curves=None):
    """LM loss per position on a log x axis (figures 1, 4, 10), T_train dashed.

    curves: optional {label: loss [T']} to overlay (e.g. interventions); else one curve `loss`.
    """
    plt = _plt()
    curves = curves if curves is not None else {"loss": loss}
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for label, c in curves.items():
        x, y = log_buckets(torch.as_tensor(c, dtype=torch.float32), buckets)
        ax.plot(x, y, marker=".", label=label)
    if train_length is not None:
        ax.axvline(train_length, color="red", ls=":", label="T_train")
    ax.set_xscale("log")
    ax.set_xlabel("token position")
    ax.set_ylabel("LM loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def state_curves(stats, train_length: int | None = None, heads: int = 8):
    """Mean and variance of the state over time (figure 5) for the layer whose variance grows most."""
    plt = _plt()
    L, H, K = stats.var.shape
    growth = stats.var[:, :, -1] / stats.var[:, :, 0].clamp_min(1e-30)
    layer = int(growth.max(dim=1).values.argmax())
    t = np.asarray(stats.t)
    # 2 x 2 (the fourth panel holds the per-layer legend): readable when scaled to a card's width
    fig, grid = plt.subplots(2, 2, figsize=(9, 6.4))
    axes = grid.flat
    for name, ax, vals in (("mean", axes[0], stats.mean), ("variance", axes[1], stats.var)):
        lines = ax.plot(t, vals[layer, :heads].T.numpy(), lw=1)
        ax.set_title(f"layer {layer}: {name} of h_t, first {min(heads, H)} heads", fontsize=9)
    ax.legend(lines, [f"head {h}" for h in range(min(heads, H))], fontsize=7, ncol=2)
    per_layer = axes[2].plot(t, stats.var.max(dim=1).values.T.numpy(), lw=0.8)
    axes[2].set_yscale("log")
    axes[2].set_title("max variance over heads, per layer", fontsize=9)
    for ax in axes[:3]:
        if train_length is not None:
            ax.axvline(train_length, color="red", ls=":", label="T_train")
        ax.set_xlabel("t")
    axes[3].axis("off")
    axes[3].legend(
        per_layer,
        [f"layer {i}" for i in range(L)][: len(per_layer)],
        loc="center",
        fontsize=8,
        ncol=max(1, math.ceil(L / 12)),
        title="per layer (panel 3); red dotted: T_train",
        title_fontsize=8,
    )
    fig.tight_layout()
    return fig


def passkey_last_r(result, last_r, title: str = "needle within the last r tokens"):
    """Accuracy vs context length, one curve per r, over the trials whose needle lies in the last r
    tokens (figures 13b/d, 14)."""
    plt = _plt()
    lengths = list(result.accuracy_by_length())
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in last_r:
        acc = [result.last_r_accuracy(r, T) for T in lengths]
        pts = [(j, a) for j, a in enumerate(acc) if a is not None]
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"r = {_fmt_len(r)}")
    ax.set_xticks(range(len(lengths)), [_fmt_len(T) for T in lengths])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("context length")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
