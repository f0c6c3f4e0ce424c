"""Local RX: each pixel's background from a dual window around it.

The background of pixel ``r`` is the set of valid pixels inside an ``outer`` x ``outer``
window and outside an ``inner`` x ``inner`` guard window, both centred on ``r`` (border rule:
:mod:`hsad_scale.detectors.halo`, Spectral Python's: both windows keep their size and are
shifted inward at the scene's border). Two variants:

* ``covariance: global`` (default): the local mean ``m(r)`` of that background with RX's global
  covariance ``K``: ``(r - m(r))^T K^-1 (r - m(r))``. ENVI's RXD with "Mean Calculation
  Method: Local", and ``spectral.rx(X, window=(inner, outer), cov=K)``. The local means are
  box filters (cumulative sums): cost per pixel ``O(B)`` for the mean plus RX's ``O(B^2)``
  whitening, independent of the window size.
* ``covariance: local``: the window's own mean and covariance (Spectral Python's
  ``spectral.rx(X, window=(inner, outer))``, Reed and Yu 1990's original local detector). A
  covariance per pixel costs ``O(B^2)`` memory per pixel as box sums, or ``O(W B^2 + B^3)``
  time per pixel directly (``W`` window pixels), which Spectral Python pays (about 40 min for
  a 1024 x 1024 x 200 scene). Here the pixels are first projected onto the ``components``
  leading principal components of the global covariance (default 20): the box sums of the
  projections and of their products then cost ``O(p^2)`` memory and time per pixel and the
  solve ``O(p^3)`` (``p = components``); ``components >= bands`` projects nothing (the exact
  windowed RX, for few bands). The window must hold more than ``p`` valid pixels, else the
  pixel scores NaN.

Invalid (NaN) pixels are left out of every window and score NaN. Scores dimensionless.
Reference: I. S. Reed and X. Yu, "Adaptive multiple-band CFAR detection of an optical
pattern with unknown spectral distribution", IEEE Trans. ASSP 38(10), 1990; ENVI "RX Anomaly
Detection" task documentation; Spectral Python ``spectral.algorithms.detectors.rx``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hsad_scale.detectors import halo
from hsad_scale.detectors.base import Settings, register
from hsad_scale.detectors.rx import StatsDetector
from hsad_scale.names import SCORE
from hsad_scale.stats import Whitener

COVARIANCES = ("global", "local")
#: Largest window side accepted (the halo of a tile is up to this many pixels).
MAX_WINDOW = 255
#: Features x window-rows x columns (float64 values) of one strip of a tile: bounds the
#: memory of a tile's box sums to about 8 bytes x this (~256 MB).
STRIP_VALUES = 32 * 2**20
#: Features whose box sums are worked out together (the temporaries stay a few MB).
FEATURE_GROUP = 8


@dataclass(frozen=True)
class LocalRXSettings(Settings):
    """``inner``/``outer``: odd window sides in pixels (guard window, background window;
    Spectral Python's ``window=(inner, outer)``); ``covariance``: ``global`` (RX's, with the
    local mean) or ``local`` (the window's); ``components``: principal components kept for
    the local covariance."""

    inner: int = 5
    outer: int = 21
    covariance: str = "global"
    components: int = 20

    def __post_init__(self):
        for name in ("inner", "outer", "components"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.inner < 1 or self.inner % 2 == 0:
            raise ValueError(f"inner must be an odd number >= 1, got {self.inner}")
        if self.outer <= self.inner or self.outer % 2 == 0 or self.outer > MAX_WINDOW:
            raise ValueError(f"outer must be odd, larger than inner ({self.inner}) and at most {MAX_WINDOW}, "
                             f"got {self.outer}")
        if self.covariance not in COVARIANCES:
            raise ValueError(f"covariance must be one of {', '.join(COVARIANCES)}, got {self.covariance!r}")
        if self.components < 1:
            raise ValueError(f"components must be >= 1, got {self.components}")
        if self.covariance == "local" and self.outer**2 - self.inner**2 <= self.components:
            raise ValueError(f"a {self.outer}x{self.outer} window less its {self.inner}x{self.inner} guard holds "
                             f"{self.outer**2 - self.inner**2} pixels, not more than components={self.components}")


@dataclass(frozen=True)
class WindowModel:
    """What a tile needs: the settings, the global whitening (``mean`` ``(B,)``, ``matrix``)
    and, for the local covariance, the projection ``(B, p)`` (None: no projection)."""

    settings: LocalRXSettings
    background: Whitener
    projection: np.ndarray | None = None


def local_rx_tile(block: np.ndarray, origin: tuple, out: tuple, scene: tuple, model: WindowModel) -> np.ndarray:
    """Local RX scores ``(r1 - r0, c1 - c0)`` float32 of the pixels ``out = (r0, r1, c0, c1)``
    of a scene of shape ``scene`` (rows, cols), from ``block`` ``(B, ny, nx)``: the part of
    the scene starting at ``origin`` (row, col) that their outer windows cover. Worked in
    strips of rows to bound memory."""
    r0, r1, c0, c1 = out
    features = block.shape[0] if model.settings.covariance == "global" else _n_features(model)
    strip = max(1, STRIP_VALUES // max(1, features * (block.shape[2] + 1)) - model.settings.outer)
    parts = []
    for s0 in range(r0, r1, strip):
        s1 = min(s0 + strip, r1)
        a, b = halo.input_range(scene[0], model.settings.outer, s0, s1)
        sub = block[:, a - origin[0]:b - origin[0]]
        parts.append(_strip_scores(sub, (a, origin[1]), (s0, s1, c0, c1), scene, model))
    return np.concatenate(parts, axis=0).astype(np.float32)


def local_rx_image(image: np.ndarray, model: WindowModel) -> np.ndarray:
    """Local RX scores ``(y, x)`` of a whole image ``(B, y, x)`` in memory."""
    _, ny, nx = image.shape
    return local_rx_tile(image, (0, 0), (0, ny, 0, nx), (ny, nx), model)


def _n_features(model: WindowModel) -> int:
    p = model.background.mean.shape[0] if model.projection is None else model.projection.shape[1]
    return p + p * (p + 1) // 2


def _windows(origin: tuple, out: tuple, scene: tuple, settings: LocalRXSettings):
    """Outer and inner window bounds of the pixels ``out``, as indices into the block at ``origin``."""
    r0, r1, c0, c1 = out

    def local(bounds, offset):
        return bounds[0] - offset, bounds[1] - offset

    outer = (local(halo.shifted_bounds(scene[0], settings.outer, r0, r1), origin[0]),
             local(halo.shifted_bounds(scene[1], settings.outer, c0, c1), origin[1]))
    inner = (local(halo.shifted_bounds(scene[0], settings.inner, r0, r1), origin[0]),
             local(halo.shifted_bounds(scene[1], settings.inner, c0, c1), origin[1]))
    return outer, inner


def _background_sums(values: np.ndarray, windows) -> np.ndarray:
    """Sums over outer less inner windows ``(F, ny_out, nx_out)`` of ``values`` ``(F, ny, nx)``:
    one cumulative sum along the rows serves both windows (box filters, any window size)."""
    (orows, ocols), (irows, icols) = windows
    out = np.empty((values.shape[0], len(orows[0]), len(ocols[0])))
    for f in range(0, values.shape[0], FEATURE_GROUP):  # arrays of a few MB: reused, not fresh pages
        rows_csum = halo.cumulative(values[f:f + FEATURE_GROUP], 1)
        group = out[f:f + FEATURE_GROUP]
        group[...] = halo.take_sums(halo.cumulative(halo.take_sums(rows_csum, 1, *orows), 2), 2, *ocols)
        group -= halo.take_sums(halo.cumulative(halo.take_sums(rows_csum, 1, *irows), 2), 2, *icols)
    return out


def _strip_scores(block, origin, out, scene, model: WindowModel) -> np.ndarray:
    r0, r1, c0, c1 = out
    bands = block.shape[0]
    x = block.astype(np.float64)
    valid = np.isfinite(x.sum(axis=0))
    x -= model.background.mean[:, None, None]  # centred: smaller sums, less cancellation
    x[:, ~valid] = 0.0
    windows = _windows(origin, out, scene, model.settings)
    count = _background_sums(valid[None].astype(np.float64), windows)[0]  # (ny_out, nx_out)
    rows = slice(r0 - origin[0], r1 - origin[0])
    cols = slice(c0 - origin[1], c1 - origin[1])
    centre_valid = valid[rows, cols]
    if model.settings.covariance == "global":
        with np.errstate(invalid="ignore", divide="ignore"):
            local_mean = _background_sums(x, windows) / count
        diff = x[:, rows, cols] - local_mean  # (B, ny_out, nx_out)
        centred = Whitener(np.zeros(bands), model.background.matrix, model.background.ridge,
                           model.background.condition, "float64")
        scores = centred.mahalanobis(diff.reshape(bands, -1).T).reshape(count.shape)
        enough = count >= 1
    else:
        z = x if model.projection is None else np.einsum("bp,byx->pyx", model.projection, x)
        scores = _local_covariance_scores(z, valid, windows, count, rows, cols)
        enough = count > z.shape[0]
    return np.where(centre_valid & enough, scores, np.nan)


def _local_covariance_scores(z, valid, windows, count, rows, cols) -> np.ndarray:
    """``(z - m)^T C^-1 (z - m)`` with each window's mean ``m`` and unbiased covariance ``C``
    (box sums of ``z`` ``(p, ny, nx)`` and of its products, worked in ``(p, p, N)`` layout)."""
    p = z.shape[0]
    products = np.concatenate([z[a:] * z[a] for a in range(p)])  # upper triangle, row by row; 0 at invalid
    sums = _background_sums(np.concatenate([z, products]), windows).reshape(p + len(products), -1)
    n = count.reshape(-1)
    ok = n > p
    scores = np.full(n.size, np.nan)
    if not ok.any():
        return scores.reshape(count.shape)
    n, sums = n[ok], sums[:, ok]
    mean = sums[:p] / n  # (p, N)
    cov = np.empty((p, p, n.size))
    first = p
    for a in range(p):  # scatter about the mean, then unbiased; both triangles
        row = sums[first:first + p - a] - n * mean[a] * mean[a:]
        row /= n - 1
        cov[a, a:] = row
        cov[a:, a] = row
        first += p - a
    diff = z[:, rows, cols].reshape(p, -1)[:, ok] - mean  # (p, N)
    scores[ok] = _batched_quadratic(np.ascontiguousarray(cov.transpose(2, 0, 1)), np.ascontiguousarray(diff.T))
    return scores.reshape(count.shape)


def _batched_quadratic(cov: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """``d^T C^-1 d`` per row of ``diff`` ``(N, p)`` with ``cov`` ``(N, p, p)``; a singular
    covariance (constant pixels in the window) through its pseudo-inverse."""
    try:
        solved = np.linalg.solve(cov, diff[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        solved = np.einsum("nij,nj->ni", np.linalg.pinv(cov, hermitian=True), diff)
    return np.einsum("ni,ni->n", diff, solved)


def projection(background: Whitener, covariance: np.ndarray, components: int) -> np.ndarray | None:
    """The ``(B, p)`` leading eigenvectors of the global ``covariance``, None when
    ``components >= B`` (no projection)."""
    bands = covariance.shape[0]
    if components >= bands:
        return None
    _, vectors = np.linalg.eigh(covariance)
    return np.ascontiguousarray(vectors[:, ::-1][:, :components])


@register
class LocalRX(StatsDetector):
    """Local RX (see the module's docstring): fitted by RX's global statistics (one Dask
    reduction), scored tile by tile with halos (:func:`hsad_scale.detectors.halo.halo_map`)."""

    method = "local-rx"
    settings_type = LocalRXSettings
    spatial = True
    long_name = "local RX squared Mahalanobis distance to the dual-window background"

    def window_model(self) -> WindowModel:
        s = self.settings
        proj = projection(self.whitener, self.stats.covariance, s.components) if s.covariance == "local" else None
        if s.covariance == "local" and proj is None and self.stats.n_features >= s.outer**2 - s.inner**2:
            from hsad_scale.errors import InputError

            raise InputError(f"local-rx: the window holds {s.outer**2 - s.inner**2} pixels, not more than the "
                             f"{self.stats.n_features} bands: lower components or widen the window")
        return WindowModel(s, self.whitener, proj)

    def score_image(self, image: np.ndarray) -> np.ndarray:
        self._check_fitted()
        return local_rx_image(np.asarray(image), self.window_model()).astype(np.float64)

    def score(self, cube, **kwargs):
        import xarray as xr

        from hsad_scale.detectors.base import as_cube

        cube = as_cube(cube)
        self._check_fitted()
        self.check_bands(cube.sizes["band"])
        outer = (self.settings.outer, self.settings.outer)
        score = halo.halo_map(cube, local_rx_tile, outer, self.window_model(), name="local-rx-tile")
        score.attrs.update(long_name=self.long_name, units="1")
        return xr.Dataset({SCORE: score})

    def describe(self) -> dict:
        return {**super().describe(), "window": {"inner": self.settings.inner, "outer": self.settings.outer,
                                                 "border": "windows shifted inward at the scene border (Spectral Python)"},
                "covariance": self.settings.covariance}
