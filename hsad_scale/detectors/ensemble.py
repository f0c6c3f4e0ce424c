"""Combining score maps of several runs (seeds) into one.

Runs are put on a common scale by a robust z-score, ``(s - median) / (1.4826 * MAD)``,
then averaged (default) or maxed per pixel. Why median/MAD:

* the scales of runs differ (an MSE depends on how well that run reconstructs; Mahalanobis
  scores depend on the feature count), so raw maps cannot be averaged;
* the median and MAD describe the background bulk and ignore the few anomalous pixels
  (50 % breakdown point), whereas mean/std are inflated by exactly the pixels we want to
  rank high, and differently in every run;
* unlike ranks, the z-score keeps the size of the anomaly margins: with ranks the top 1 %
  of every run is squeezed into [0.99, 1], which throws away the tail that detection at a
  low false-alarm rate relies on; and ranks need a global sort, a median/MAD needs only
  two quantiles (which the tile layer can take from a sample: :func:`robust_location_scale`
  on a sample, then :func:`robust_normalise` with ``location``/``scale``).

NaN marks pixels without a score (masked, no data): they are ignored by the statistics and
stay NaN unless another run scores them.
"""

from __future__ import annotations

import warnings

import numpy as np

from hsad_scale.names import ENSEMBLES

#: MAD of a standard normal: makes 1.4826 * MAD a consistent estimate of the std.
MAD_TO_STD = 1.4826


def robust_location_scale(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median and robust scale of each run: ``scores`` ``(n,)`` -> two scalars' arrays of
    shape ``()``; ``(runs, n)`` -> ``(runs,)`` each. The scale is 1.4826 x MAD; where the
    MAD is 0 (over half the pixels tie), the mean absolute deviation from the median, then
    1.0. All-NaN runs give NaN."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must be (n,) or (runs, n), got shape {s.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN runs
        med = np.nanmedian(s, axis=-1)
        dev = np.abs(s - np.expand_dims(med, -1))
        scale = MAD_TO_STD * np.nanmedian(dev, axis=-1)
        fallback = np.nanmean(dev, axis=-1) * np.sqrt(np.pi / 2)  # mean abs dev -> std for a normal
    scale = np.where(scale > 0, scale, np.where(fallback > 0, fallback, 1.0))
    scale = np.where(np.isnan(med), np.nan, scale)
    return med, scale


def robust_normalise(scores: np.ndarray, location=None, scale=None) -> np.ndarray:
    """Robust z-scores ``(s - median) / (1.4826 * MAD)`` (float64, same shape as ``scores``),
    per run for ``(runs, n)``. ``location``/``scale`` (scalars or ``(runs,)``) replace the
    statistics, e.g. when they were estimated on a sample of a large map."""
    s = np.asarray(scores, dtype=np.float64)
    if location is None or scale is None:
        med, sc = robust_location_scale(s)
        location = med if location is None else location
        scale = sc if scale is None else scale
    location = np.asarray(location, dtype=np.float64)
    scale = np.asarray(scale, dtype=np.float64)
    if s.ndim == 2:
        location = location.reshape(-1, 1) if location.ndim else location
        scale = scale.reshape(-1, 1) if scale.ndim else scale
    return (s - location) / scale


def combine(score_runs: np.ndarray, how: str = "mean", normalise: bool = True) -> np.ndarray:
    """One map ``(n,)`` from ``score_runs`` ``(runs, n)``: the mean (default) or per-pixel
    maximum of the robustly normalised runs, ignoring NaN (a pixel NaN in every run stays
    NaN)."""
    runs = np.asarray(score_runs, dtype=np.float64)
    if runs.ndim == 1:
        runs = runs[None]
    if runs.ndim != 2:
        raise ValueError(f"score_runs must be (runs, n), got shape {runs.shape}")
    if how not in ENSEMBLES:
        raise ValueError(f"how must be 'mean' or 'max', got {how!r}")
    z = robust_normalise(runs) if normalise else runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels
        return np.nanmean(z, axis=0) if how == "mean" else np.nanmax(z, axis=0)
