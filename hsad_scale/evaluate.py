"""ROC evaluation of score maps against ground truth (higher score = more anomalous).

Exact curves from counts, not from a sort of every pixel: the distinct scores of the anomaly
pixels are the thresholds, and the background pixels are counted between and at them
(:class:`RocCounts`). Memory follows the number of anomaly pixels, and the counts of tiles
add up, so :mod:`hsad_scale.roc_tiles` evaluates maps of any size tile by tile on a cluster."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hsad_scale.errors import InputError

LOW_FPRS = (1e-3, 1e-2, 1e-1)
PARTIAL_AUC_MAX_FPR = 1e-2
#: Common false-positive-rate grid for averaged ROC curves (log-spaced start, then linear).
FPR_GRID = np.unique(np.concatenate([[0.0], np.logspace(-5, -1, 200), np.linspace(0.1, 1.0, 181)]))
#: Pixels per block when counting in memory: bounds the temporary index arrays (8 B/pixel).
COUNT_BLOCK_PIXELS = 2**20


@dataclass(frozen=True)
class RocCounts:
    """Everything an exact ROC curve needs, in memory proportional to the anomaly pixels
    (not the scene), summed over tiles. ``thresholds`` ``(m,)``: the distinct finite scores of
    anomaly pixels, ascending; ``positives`` ``(m,)``: anomaly pixels at each; ``negative_ties``
    ``(m,)``: background pixels scoring exactly each; ``negative_gaps`` ``(m + 1,)``: background
    pixels strictly between consecutive thresholds (first: below the lowest; last: above the
    highest). Between two anomaly scores the curve only moves along FPR, so these counts give
    every vertex of the full curve that is not inside such a horizontal run."""

    thresholds: np.ndarray
    positives: np.ndarray
    negative_ties: np.ndarray
    negative_gaps: np.ndarray

    @property
    def n_anomaly(self) -> int:
        return int(self.positives.sum())

    @property
    def n_background(self) -> int:
        return int(self.negative_ties.sum() + self.negative_gaps.sum())


def labels_of(truth) -> np.ndarray:
    """Anomaly mask (bool, same shape) of a ground truth: values > 0 (NaN counts as background)."""
    truth = np.asarray(truth)
    if truth.dtype.kind in "biu":  # the usual uint8 masks: no float copy
        return truth > 0
    return np.nan_to_num(truth.astype(np.float64)) > 0


def _as_scores(scores) -> np.ndarray:
    """float32 maps stay float32 (same order, half the memory); anything else as float64."""
    scores = np.asarray(scores)
    return scores if scores.dtype in (np.float32, np.float64) else scores.astype(np.float64)


def check_shapes(scores_shape: tuple, truth_shape: tuple) -> None:
    if tuple(scores_shape) != tuple(truth_shape):
        raise InputError(f"ground truth has shape {tuple(truth_shape)}, the score map is {tuple(scores_shape)}")


def anomaly_scores(scores, truth) -> np.ndarray:
    """Finite scores ``(n_anomaly,)`` of the anomaly pixels of a map (any shape) or tile."""
    scores, labels = _as_scores(scores).ravel(), labels_of(truth).ravel()
    picked = scores[labels]
    return picked[np.isfinite(picked)]


def anomaly_thresholds(anomaly_scores_: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct anomaly scores ascending ``(m,)`` and the anomaly pixels at each ``(m,)``."""
    thresholds, counts = np.unique(anomaly_scores_, return_counts=True)
    return thresholds, counts.astype(np.int64)


def count_background(scores, truth, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Background pixels of a map or tile tied with each threshold ``(m,)`` and in each gap
    between thresholds ``(m + 1,)`` (see :class:`RocCounts`); NaN/Inf scores left out. Works
    through blocks of :data:`COUNT_BLOCK_PIXELS` (bounded temporaries)."""
    scores, labels = _as_scores(scores).ravel(), labels_of(truth).ravel()
    thresholds = thresholds.astype(scores.dtype, copy=False)
    m = thresholds.size
    ties, gaps = np.zeros(m, np.int64), np.zeros(m + 1, np.int64)
    for start in range(0, scores.size, COUNT_BLOCK_PIXELS):
        block = scores[start : start + COUNT_BLOCK_PIXELS]
        background = block[~labels[start : start + COUNT_BLOCK_PIXELS] & np.isfinite(block)]
        slot = np.searchsorted(thresholds, background, side="left")  # first threshold >= score
        tied = slot < m
        tied[tied] = thresholds[slot[tied]] == background[tied]
        ties += np.bincount(slot[tied], minlength=m)[:m]
        gaps += np.bincount(slot[~tied], minlength=m + 1)
    return ties, gaps


def roc_counts(scores, truth) -> RocCounts:
    """:class:`RocCounts` of a whole in-memory map ``scores`` against ``truth`` (same shape)."""
    check_shapes(np.shape(scores), np.shape(truth))
    thresholds, positives = anomaly_thresholds(anomaly_scores(scores, truth))
    return RocCounts(thresholds, positives, *count_background(scores, truth, thresholds))


def roc_from_counts(counts: RocCounts) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr)`` from (0, 0) to (1, 1): the vertices of the full curve (one per
    distinct score, ties counted together, as ``sklearn.metrics.roc_curve(drop_intermediate=
    False)``) less those inside horizontal runs, which change no interpolated TPR and no area.
    InputError when there are no anomaly or no background pixels."""
    if counts.n_anomaly == 0:
        raise InputError("ground truth holds no anomaly pixels (among pixels with a score)")
    if counts.n_background == 0:
        raise InputError("ground truth marks every scored pixel as an anomaly")
    m = counts.thresholds.size
    # walking down from the highest score: the gap above each threshold, then its ties
    step_fp = np.empty(2 * m + 1, np.int64)
    step_tp = np.zeros(2 * m + 1, np.int64)
    step_fp[0:-1:2] = counts.negative_gaps[::-1][:m]
    step_fp[1::2] = counts.negative_ties[::-1]
    step_tp[1::2] = counts.positives[::-1]
    step_fp[-1] = counts.negative_gaps[0]
    moved = (step_fp > 0) | (step_tp > 0)
    false_pos = np.concatenate([[0], np.cumsum(step_fp)[moved]])
    true_pos = np.concatenate([[0], np.cumsum(step_tp)[moved]])
    return false_pos / false_pos[-1], true_pos / true_pos[-1]


def roc(scores, truth) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve (false-positive rate, true-positive rate) of a map against ground truth,
    NaN scores left out (:func:`roc_from_counts`)."""
    return roc_from_counts(roc_counts(scores, truth))


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, at: float) -> float:
    """TPR at a false-positive rate, by linear interpolation on the ROC curve."""
    return float(np.interp(at, fpr, tpr))


def partial_auc(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float = PARTIAL_AUC_MAX_FPR) -> float:
    """Area under the ROC curve (straight segments between its vertices) for FPR in
    [0, max_fpr], divided by max_fpr (1 = perfect, max_fpr/2 = random). Vertical steps add
    no area, and vertices inside straight runs change nothing."""
    end = int(np.searchsorted(fpr, max_fpr, side="right"))  # vertices with fpr <= max_fpr
    f, t = fpr[:end], tpr[:end]
    if end < fpr.size and f[-1] < max_fpr:  # the segment that crosses max_fpr, cut there
        x0, y0, x1, y1 = fpr[end - 1], tpr[end - 1], fpr[end], tpr[end]
        f, t = np.append(f, max_fpr), np.append(t, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return float(np.trapezoid(t, f) / max_fpr)


def metrics(scores, truth) -> dict:
    """AUC, TPR at FPR 1e-3/1e-2/1e-1, normalised partial AUC up to FPR 1e-2, pixel counts."""
    return metrics_and_roc(scores, truth)[0]


def metrics_and_roc(scores, truth) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """:func:`metrics` and the ROC curve ``(fpr, tpr)`` they come from."""
    return metrics_from_counts(roc_counts(scores, truth))


def metrics_from_counts(counts: RocCounts) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """:func:`metrics_and_roc` from :class:`RocCounts` (e.g. summed over a cluster's tiles)."""
    fpr, tpr = roc_from_counts(counts)
    figures = {
        "auc": float(np.trapezoid(tpr, fpr)),  # trapezoids on the curve: equals roc_auc_score
        **{f"tpr_at_fpr_{at:g}": tpr_at(fpr, tpr, at) for at in LOW_FPRS},
        f"pauc_{PARTIAL_AUC_MAX_FPR:g}": partial_auc(fpr, tpr),
        "n_anomaly": counts.n_anomaly,
        "n_background": counts.n_background,
    }
    return figures, (fpr, tpr)


def average_roc(curves, grid: np.ndarray = FPR_GRID) -> dict:
    """Mean and standard deviation of TPR over runs on a common FPR grid.
    ``curves``: iterable of (fpr, tpr). Returns arrays ``fpr``, ``tpr_mean``, ``tpr_std`` (grid,)."""
    tprs = np.stack([np.interp(grid, f, t) for f, t in curves])
    return {"fpr": grid, "tpr_mean": tprs.mean(axis=0), "tpr_std": tprs.std(axis=0)}


def summarise_runs(per_run: list[dict]) -> dict:
    """Mean and standard deviation of each numeric figure over runs."""
    keys = [k for k, v in per_run[0].items() if isinstance(v, float)]
    return {
        "mean": {k: float(np.mean([r[k] for r in per_run])) for k in keys},
        "std": {k: float(np.std([r[k] for r in per_run])) for k in keys},
    }
