"""Global RX: squared Mahalanobis distance of each pixel to the background mean and covariance."""

from __future__ import annotations

import numpy as np

from hsad_scale.stats import BackgroundStats, Whitener, whitener


def fit_rx(pixels: np.ndarray) -> Whitener:
    """Fit RX on background pixels ``(n, bands)``."""
    return whitener(BackgroundStats.from_pixels(pixels))


def score_rx(model: Whitener, pixels: np.ndarray) -> np.ndarray:
    """RX scores ``(n,)`` (squared Mahalanobis distance, dimensionless) of ``pixels`` ``(n, bands)``."""
    return model.mahalanobis(pixels)


def rx_reference(pixels: np.ndarray) -> np.ndarray:
    """Plain float64 RX with ``numpy.linalg.pinv``: the reference the tests compare against."""
    x = np.asarray(pixels, dtype=np.float64)
    centred = x - x.mean(axis=0)
    inv = np.linalg.pinv(np.cov(x, rowvar=False))
    return np.einsum("ij,jk,ik->i", centred, inv, centred)
