"""Figures used by the CLI, the flows and the notebooks alike. Each returns a Figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # file output by default; notebooks switch backends themselves
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

MAX_PIXELS_SHOWN = 1500


def thin(image: np.ndarray, max_side: int = MAX_PIXELS_SHOWN) -> np.ndarray:
    """Every k-th pixel so that neither side exceeds ``max_side`` (for display only)."""
    step = max(1, int(np.ceil(max(image.shape[-2:]) / max_side)))
    return image[..., ::step, ::step]


def plot_roc(curves: dict, title: str = "ROC") -> plt.Figure:
    """ROC curves on linear and log false-positive axes. ``curves``: label -> dict with
    ``fpr``, ``tpr`` (one run) or ``fpr``, ``tpr_mean``, ``tpr_std`` (averaged runs, drawn with
    a one-standard-deviation band)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, log in zip(axes, (False, True)):
        for label, c in curves.items():
            tpr = c.get("tpr", c.get("tpr_mean"))
            (line,) = ax.plot(c["fpr"], tpr, label=label)
            if "tpr_std" in c:
                ax.fill_between(c["fpr"], tpr - c["tpr_std"], tpr + c["tpr_std"], color=line.get_color(), alpha=0.2)
        ax.plot([1e-5, 1], [1e-5, 1], color="grey", lw=0.8, ls=":")
        ax.set_xlabel("false-positive rate" + (" (log)" if log else ""))
        ax.set_ylabel("true-positive rate")
        ax.set_ylim(0, 1.01)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(1e-4, 1)
        else:
            ax.set_xlim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_maps(maps: dict, truth: np.ndarray | None = None, shared_scale: bool = True,
              title: str | None = None) -> plt.Figure:
    """Score maps side by side, each with a colour bar (shared scale: 0.5-99.5 percentiles of
    all maps), ground-truth outlines drawn over them when given."""
    shown = {k: thin(np.asarray(v, dtype=np.float32)) for k, v in maps.items()}
    truth = None if truth is None else thin(np.asarray(truth))
    finite = np.concatenate([v[np.isfinite(v)] for v in shown.values()])
    lo, hi = np.percentile(finite, [0.5, 99.5]) if finite.size else (0, 1)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.6 * len(shown), 4.2), squeeze=False)
    for ax, (label, image) in zip(axes[0], shown.items()):
        if not shared_scale:
            lo, hi = np.nanpercentile(image, [0.5, 99.5])
        im = ax.imshow(image, cmap="magma", vmin=lo, vmax=hi, interpolation="nearest")
        if truth is not None and truth.any():
            ax.contour(truth > 0, levels=[0.5], colors="cyan", linewidths=0.7)
        ax.set_title(label)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="score")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save(fig: plt.Figure, path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)
