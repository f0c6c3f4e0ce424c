"""Global RX: squared Mahalanobis distance of each pixel to the background mean and covariance."""

from __future__ import annotations

import numpy as np

from hsad_scale.names import SCORE
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


# --------------------------------------------------------------------------------------
# the detector contract (hsad_scale.detectors.base): global RX and the detectors that share
# its background statistics


from hsad_scale.detectors.base import Detector, register  # noqa: E402  (the maths above needs none of it)


class StatsDetector(Detector):
    """A detector fitted by RX's background statistics: the valid pixels' count, mean and
    scatter (one Dask reduction, :func:`hsad_scale.tiles.background_stats`) and their
    regularised whitening (:func:`hsad_scale.stats.whitener`). Saved as ``rx_stats.npz``."""

    STATS_FILE = "rx_stats.npz"
    fit_stage = "rx-stats"

    def fit_cube(self, cube, stage=None, **kwargs) -> None:
        from hsad_scale.tiles import background_stats

        self.set_stats(stage.run(self.fit_stage, background_stats, cube, None, "rx-stats"))

    def fit_pixels(self, pixels: np.ndarray, stage=None, **kwargs) -> None:
        self.set_stats(BackgroundStats.from_pixels(np.asarray(pixels)))

    def set_stats(self, stats: BackgroundStats) -> None:
        """Use ``stats`` (e.g. loaded) as the background; computes the whitening."""
        self.stats, self.whitener = stats, whitener(stats)
        self.fitted = True

    def check_bands(self, n_bands: int) -> None:
        from hsad_scale.errors import InputError

        if self.stats.n_features != n_bands:
            raise InputError(f"the fitted {self.method} has {self.stats.n_features} bands, the cube has {n_bands}")

    def score(self, cube, **kwargs):
        from hsad_scale.detectors.base import as_cube

        cube = as_cube(cube)
        self._check_fitted()
        self.check_bands(cube.sizes["band"])
        return super().score(cube, **kwargs)

    def save_arrays(self, folder) -> None:
        self.stats.save(folder / self.STATS_FILE)

    def load_arrays(self, folder, **kwargs) -> None:
        self.set_stats(BackgroundStats.load(folder / self.STATS_FILE))

    def describe(self) -> dict:
        return {"background": {"pixels": self.stats.count, **self.whitener.describe()}}


@register
class GlobalRX(StatsDetector):
    """Global RX (Reed and Yu 1990): squared Mahalanobis distance of each pixel to the mean
    and covariance of every valid pixel of the scene (ENVI's RXD with a global mean,
    ArcGIS's RX, Spectral Python's ``rx`` without a window). Scores ``(y, x)``, dimensionless."""

    method = "rx"
    long_name = "RX squared Mahalanobis distance"

    def pixel_scorer(self):
        return self.whitener.mahalanobis

    def score(self, cube, **kwargs):
        import xarray as xr

        from hsad_scale.detectors.base import as_cube
        from hsad_scale.tiles import score_map

        cube = as_cube(cube)
        self._check_fitted()
        self.check_bands(cube.sizes["band"])
        score = score_map(cube, self.whitener.mahalanobis, name="score-tile")  # as pipeline.rx_scores
        score.attrs.update(long_name=self.long_name, units="1")
        return xr.Dataset({SCORE: score})
