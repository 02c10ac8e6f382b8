"""Figures over training: each probe's curve at every probe step so far, in one figure.

The paper's figures show how a curve changes as training goes on; TensorBoard's IMAGES tab shows one
step at a time. Each figure here is built from the probe's JSON summaries alone (the files
`{run_dir}/probes/{name}/step_*.json` the callbacks write), so a resumed run draws the steps
before the resume too. Colour = optimiser step (viridis, with its colour bar); the passkey's is a
heatmap of accuracy by (length, step).

history: [(step, summary)] in step order, summary as the probe's `summary(...)` returns it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from stuffed_mamba.probes.plots import _fmt_len, _plt

History = Sequence[tuple[int, dict]]


def _steps_axes(history: History, title: str, xlabel: str, ylabel: str):
    """A figure whose curves are coloured by step: (fig, ax, [colour per history entry])."""
    plt = _plt()
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    steps = [s for s, _ in history]
    norm = Normalize(vmin=min(steps), vmax=max(steps) if max(steps) > min(steps) else min(steps) + 1)
    cmap = plt.get_cmap("viridis")
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.05)
    bar.set_label("optimiser step")
    ax.set_title(f"{title}\n{len(steps)} probe steps, {steps[0]} to {steps[-1]}", fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return fig, ax, [cmap(norm(s)) for s in steps]


def _t_train(ax, train_length: int | None, vertical: bool = True) -> None:
    if train_length:
        (ax.axvline if vertical else ax.axhline)(train_length, color="red", ls=":", lw=1, label="T_train")
        ax.legend(fontsize=7, loc="best")


def position_loss(history: History, train_length: int | None):
    """LM loss per position (log buckets), one curve per step (figures 1, 4, 10 over training)."""
    fig, ax, colours = _steps_axes(history, "LM loss by position", "token position", "LM loss")
    for (_, s), c in zip(history, colours, strict=True):
        ax.plot(s["bucket_positions"], s["bucket_loss"], color=c, lw=1.2, marker=".", ms=3)
    ax.set_xscale("log")
    _t_train(ax, train_length)
    fig.tight_layout()
    return fig


def retention(history: History, train_length: int | None):
    """First-token retention alpha_1:t, max over layers and heads, one curve per step (figure 3)."""
    fig, ax, colours = _steps_axes(
        history, "first-token retention alpha_1:t, max over heads", "t", "alpha_1:t (1 = kept)"
    )
    for (_, s), c in zip(history, colours, strict=True):
        curve = s.get("max_alpha_curve")
        if curve:
            ax.plot(curve["t"], curve["max"], color=c, lw=1.2)
        else:  # summaries written before the curve was kept: the summary points only
            pts = sorted(s["at"].values(), key=lambda p: p["t"])
            ax.plot([p["t"] for p in pts], [p["max"] for p in pts], color=c, lw=1.2, marker="o", ms=3)
    ax.set_ylim(-0.02, 1.02)
    _t_train(ax, train_length)
    fig.tight_layout()
    return fig


def states(history: History, train_length: int | None):
    """The state's variance relative to t = T_train, max over layers and heads (figure 5)."""
    fig, ax, colours = _steps_axes(
        history, "SSM state variance / its value at T_train, max over heads", "t", "var_t / var_T_train"
    )
    for (_, s), c in zip(history, colours, strict=True):
        t = np.asarray(s["t"])
        var = np.asarray(s["var"], dtype=np.float64)  # [L, H, K]
        ref = np.flatnonzero(t == (train_length or s.get("train_length")))
        if ref.size == 0:
            continue
        growth = (var / np.maximum(var[:, :, ref[:1]], 1e-30)).max(axis=(0, 1))  # [K]
        ax.plot(t, growth, color=c, lw=1.2)
    ax.set_yscale("log")
    _t_train(ax, train_length)
    fig.tight_layout()
    return fig


def memory_lengths(history: History, train_length: int | None):
    """Every head's memory length 1/(1 - alpha), sorted, one curve per step."""
    fig, ax, colours = _steps_axes(
        history, "memory length 1/(1-alpha) per head, sorted", "head (longest first)", "tokens"
    )
    for (_, s), c in zip(history, colours, strict=True):
        tau = sorted((v for row in s["tau"] for v in row), reverse=True)
        ax.plot(range(len(tau)), tau, color=c, lw=1.2)
    ax.set_yscale("log")
    _t_train(ax, train_length, vertical=False)
    fig.tight_layout()
    return fig


def effrem(history: History, train_length: int | None):
    """Effective Remembrance EffRem_T(t) at the longest T measured, one curve per step."""
    T = max(int(T) for _, s in history for T in s["curves"])
    fig, ax, colours = _steps_axes(
        history, f"Effective Remembrance at T = {_fmt_len(T)}", "t: first tokens removed", "EffRem_T(t)"
    )
    for (_, s), c in zip(history, colours, strict=True):
        curve = s["curves"].get(str(T))
        if curve:  # a run whose lengths changed has no curve at this T
            ax.plot(curve["t"], curve["effrem"], color=c, lw=1.2, marker=".", ms=3)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    _t_train(ax, train_length)
    fig.tight_layout()
    return fig


def passkey(history: History, train_length: int | None):
    """Passkey accuracy by (context length, step): figure 2's lengths over training."""
    plt = _plt()
    steps = [s for s, _ in history]
    lengths = sorted({int(T) for _, s in history for T in s["accuracy_by_length"]})
    grid = np.full((len(lengths), len(steps)), np.nan)
    for j, (_, s) in enumerate(history):
        for i, T in enumerate(lengths):
            a = s["accuracy_by_length"].get(str(T))
            if a is not None:
                grid[i, j] = a
    fig, ax = plt.subplots(figsize=(1.8 + 0.45 * max(6, len(steps)), 1.6 + 0.4 * max(3, len(lengths))))
    im = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto", origin="lower")
    ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=45, fontsize=7)
    ax.set_yticks(range(len(lengths)), [_fmt_len(T) for T in lengths])
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("context length")
    tl = f", T_train = {train_length}" if train_length else ""
    ax.set_title(f"passkey accuracy by length over training{tl}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05).set_label("accuracy")
    fig.tight_layout()
    return fig


OVERLAYS: dict[str, Callable] = {
    "passkey": passkey,
    "retention": retention,
    "states": states,
    "position_loss": position_loss,
    "memory_lengths": memory_lengths,
    "effrem": effrem,
}


def figure(probe: str, history: History, train_length: int | None = None):
    """The over-training figure of `probe` (None for a probe without one, or no history)."""
    draw = OVERLAYS.get(probe)
    return draw(list(history), train_length) if draw is not None and history else None
