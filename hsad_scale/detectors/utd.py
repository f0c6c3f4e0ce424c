"""UTD and RXD-UTD (Chang and Chiang 2002), as ENVI's RX Anomaly Detection task and ArcGIS's
Detect Image Anomalies define them, with the global background mean ``mu`` and covariance
``K`` of RX:

* RXD:     ``(r - mu)^T K^-1 (r - mu)``
* UTD:     ``(1 - mu)^T K^-1 (r - mu)``   (``1``: the vector of ones, the "uniform target")
* RXD-UTD: ``(r - 1)^T K^-1 (r - mu)`` = RXD - UTD

C.-I. Chang and S.-S. Chiang, "Anomaly detection and classification for hyperspectral
imagery", IEEE Trans. Geosci. Remote Sens. 40(6), 1314-1325, 2002 (eqs. 4-6).

UTD is a matched filter for a flat spectrum: its HIGH values are pixels like the background
("UTD extracts background signatures as anomalies", ENVI's documentation), so unlike every
other detector here a high UTD score does not mean anomalous; it is kept as ENVI defines it
(its AUC against anomaly maps is usually below 0.5). RXD-UTD removes that background part
from RXD. Both depend on the data's units (the vector of ones is in them). Scores
dimensionless, float64 on plain arrays.
"""

from __future__ import annotations

import numpy as np

from hsad_scale.detectors.base import register
from hsad_scale.detectors.rx import StatsDetector
from hsad_scale.stats import BLOCK_PIXELS, Whitener


def utd_filter(model: Whitener) -> np.ndarray:
    """``K^-1 (1 - mu)`` ``(k,)`` float64 (``K^-1 = W^T W``): UTD is ``(r - mu) . filter``."""
    return model.matrix.T @ (model.matrix @ (1.0 - model.mean))


def utd_rxd_scores(model: Whitener, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(UTD ``(n,)``, RXD ``(n,)``) float64 of pixels ``(n, k)``: UTD a linear filter
    (``O(k)`` per pixel, in blocks of :data:`~hsad_scale.stats.BLOCK_PIXELS` rows), RXD the
    whitening of RX (:meth:`~hsad_scale.stats.Whitener.mahalanobis`)."""
    return utd_scores(model, pixels), model.mahalanobis(pixels)


def utd_scores(model: Whitener, pixels: np.ndarray) -> np.ndarray:
    """UTD ``(1 - mu)^T K^-1 (r - mu)`` ``(n,)`` float64."""
    filt = utd_filter(model)
    out = np.empty(pixels.shape[0])
    for start in range(0, pixels.shape[0], BLOCK_PIXELS):
        block = np.asarray(pixels[start:start + BLOCK_PIXELS], dtype=np.float64)
        out[start:start + BLOCK_PIXELS] = (block - model.mean) @ filt
    return out


def rxd_utd_scores(model: Whitener, pixels: np.ndarray) -> np.ndarray:
    """RXD-UTD ``(r - 1)^T K^-1 (r - mu)`` ``(n,)`` float64."""
    utd, rxd = utd_rxd_scores(model, pixels)
    return rxd - utd


class _Scorer:
    """Picklable pixels -> scores of one Whitener (a single graph key per map)."""

    def __init__(self, model: Whitener, fn):
        self.model, self.fn = model, fn

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.fn(self.model, pixels)


@register
class UTD(StatsDetector):
    """Uniform target detector (ENVI/ArcGIS UTD): ``(1 - mu)^T K^-1 (r - mu)`` with RX's global
    background; high values are background-like pixels (see the module's docstring)."""

    method = "utd"
    long_name = "UTD (1 - mu)^T K^-1 (r - mu)"

    def pixel_scorer(self):
        return _Scorer(self.whitener, utd_scores)


@register
class RXDUTD(StatsDetector):
    """RXD-UTD (ENVI/ArcGIS): ``(r - 1)^T K^-1 (r - mu)`` = RXD - UTD, RX's global background."""

    method = "rxd-utd"
    long_name = "RXD-UTD (r - 1)^T K^-1 (r - mu)"

    def pixel_scorer(self):
        return _Scorer(self.whitener, rxd_utd_scores)
