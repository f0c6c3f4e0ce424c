"""Cluster-based RX: the background as k Gaussian classes (ArcGIS Detect Image Anomalies'
KMEANS background; Carlotto 2005's cluster-based anomaly detection).

Fitting: k-means (:func:`scipy.cluster.vq.kmeans2`, k-means++ start, in band space) on a
uniform sample of the cube's valid pixels gives ``clusters`` centroids; then one Dask pass
over the cube (the reduction RX uses, :func:`hsad_scale.tiles.tile_reduction_graph`) assigns
every valid pixel to its nearest centroid (Euclidean, k-means' own rule) and accumulates each
class's count, mean and scatter (:class:`~hsad_scale.stats.BackgroundStats`, Chan et al.'s
merge). Classes with fewer than ``max(2 B, min_class_fraction x valid pixels)`` pixels are
dropped (their pixels are scored against the others): a class that small would have a
covariance estimated from too few pixels (Reed, Mallett and Brennan's rule: about 2 B
samples for a loss under 3 dB), and it may be the anomalies themselves, which would then
score low. Anomalies are rare by definition, so the default ``min_class_fraction`` is 5 %
of the valid pixels: with 1 %, k-means made the 269 anomaly pixels (2.7 %) of the shared
MUUFL scene a class of their own at k = 6 and the AUC fell to 0.50. Scoring: each pixel's squared Mahalanobis distance to the NEAREST remaining class
(the minimum over classes), dimensionless.

Default ``clusters = 4``: the smallest shared scenes have 10,000 pixels and up to 205 bands,
so four classes keep about 2,500 pixels each (over 10 B) on average; more classes split the
background finer but lower the scores of anything near a class (the minimum over more
distances), and larger k gets unstable on small scenes. It is one setting for every scene,
not tuned per scene (see docs/detectors.md for how it compares with global RX).

Reference: M. J. Carlotto, "A cluster-based approach for detecting man-made objects and
changes in imagery", IEEE TGRS 43(2), 2005; Esri, "Detect Image Anomalies" (ArcGIS Pro).
"""

from __future__ import annotations

import inspect
import math
import warnings
from dataclasses import dataclass

import numpy as np

from hsad_scale.detectors.base import Detector, Settings, register
from hsad_scale.stats import BackgroundStats, Whitener, whitener


@dataclass(frozen=True)
class ClusterRXSettings(Settings):
    """``clusters``: k of k-means; ``sample_pixels``: pixels k-means runs on; ``seed``: of
    the sample and k-means++; ``iterations``: k-means iterations; ``min_class_fraction``:
    smallest class kept, as a fraction of the valid pixels (and never under 2 x bands)."""

    clusters: int = 4
    sample_pixels: int = 50_000
    seed: int = 0
    iterations: int = 30
    min_class_fraction: float = 0.05

    def __post_init__(self):
        for name in ("clusters", "sample_pixels", "seed", "iterations"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.clusters <= 64:
            raise ValueError(f"clusters must be in [1, 64], got {self.clusters}")
        if self.sample_pixels < self.clusters:
            raise ValueError(f"sample_pixels must be at least clusters ({self.clusters}), got {self.sample_pixels}")
        if self.iterations < 1 or self.seed < 0:
            raise ValueError("iterations must be >= 1 and seed >= 0")
        if not isinstance(self.min_class_fraction, (int, float)) or not 0 <= self.min_class_fraction < 1:
            raise ValueError(f"min_class_fraction must be a number in [0, 1), got {self.min_class_fraction!r}")


def kmeans_centroids(sample: np.ndarray, k: int, seed: int, iterations: int) -> np.ndarray:
    """``(k', B)`` float64 k-means centroids of ``sample`` ``(n, B)`` (k-means++ start; empty
    clusters dropped, so ``k' <= k``)."""
    from scipy.cluster.vq import kmeans2

    data = np.asarray(sample, dtype=np.float64)
    k = min(k, data.shape[0])
    rng = np.random.default_rng(seed)
    key = "rng" if "rng" in inspect.signature(kmeans2).parameters else "seed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "one of the clusters is empty": handled below
        centroids, labels = kmeans2(data, k, iter=iterations, minit="++", **{key: rng})
    return centroids[np.bincount(labels, minlength=len(centroids)) > 0]


def nearest_centroid(pixels: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Index ``(n,)`` of the nearest centroid (Euclidean) of each pixel ``(n, B)``."""
    x = np.asarray(pixels, dtype=np.float64)
    dist = (centroids**2).sum(axis=1) - 2.0 * x @ centroids.T  # ||x||^2 is the same for every class
    return np.argmin(dist, axis=1)


def class_stats(pixels: np.ndarray, centroids: np.ndarray) -> tuple:
    """One :class:`BackgroundStats` per centroid, of the valid pixels ``(n, B)`` nearest to it."""
    pixels = np.asarray(pixels)
    pixels = pixels[np.isfinite(pixels.sum(axis=1))]
    labels = nearest_centroid(pixels, centroids) if len(pixels) else np.empty(0, dtype=int)
    return tuple(BackgroundStats.from_pixels(pixels[labels == c], all_valid=True) if (labels == c).any()
                 else BackgroundStats.empty(centroids.shape[1]) for c in range(len(centroids)))


def _indexed_tile_sample(block: np.ndarray, picks: np.ndarray, first_row: int, first_col: int, n_cols: int):
    """(flat scene index ``(m,)``, pixels ``(m, B)`` float32) of the valid picked pixels of a tile."""
    width = block.shape[2]
    pixels = block.reshape(block.shape[0], -1).T[picks]
    valid = np.isfinite(pixels.sum(axis=1))
    index = (first_row + picks // width) * n_cols + first_col + picks % width
    return index[valid], pixels[valid].astype(np.float32)


def scene_order_sample(cube, n_samples: int, seed: int) -> np.ndarray:
    """The valid pixels of :func:`hsad_scale.sampling.sample_pixels` (the same uniform choice)
    ``(n, B)`` float32, in the scene's row-major order whatever the tiles: k-means then starts
    from the same pixels for any chunking."""
    import dask

    from hsad_scale.sampling import sample_plan

    blocks = cube.data.to_delayed()
    row_edges = np.cumsum((0, *cube.data.chunks[1]))
    col_edges = np.cumsum((0, *cube.data.chunks[2]))
    parts = [dask.delayed(_indexed_tile_sample, pure=True)(blocks[0, bi, bj], local, int(row_edges[bi]),
                                                           int(col_edges[bj]), cube.shape[2])
             for (bi, bj), local in sample_plan(cube, n_samples, seed)]
    parts = dask.compute(*parts)
    index = np.concatenate([p[0] for p in parts])
    pixels = np.concatenate([p[1] for p in parts]) if parts else np.empty((0, cube.shape[0]), np.float32)
    return pixels[np.argsort(index, kind="stable")]


def _class_stats_tile(block: np.ndarray, tile, centroids: np.ndarray) -> tuple:
    from hsad_scale.tiles import tile_pixels

    return class_stats(tile_pixels(block)[0], centroids)


def _merge_class_stats(a: tuple, b: tuple) -> tuple:
    return tuple(x.merge(y) for x, y in zip(a, b))


def kept_classes(stats: tuple, min_class_fraction: float) -> list[int]:
    """Indices of the classes large enough to keep (at least one: the largest)."""
    total = sum(s.count for s in stats)
    bands = stats[0].n_features
    minimum = max(2 * bands, math.ceil(min_class_fraction * total))
    kept = [c for c, s in enumerate(stats) if s.count >= minimum]
    return kept or [int(np.argmax([s.count for s in stats]))]


@dataclass(frozen=True)
class NearestClassScorer:
    """Picklable pixels ``(n, B)`` -> ``(n,)`` minimum squared Mahalanobis distance over classes."""

    whiteners: tuple

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        out = self.whiteners[0].mahalanobis(pixels)
        for w in self.whiteners[1:]:
            np.minimum(out, w.mahalanobis(pixels), out=out)
        return out


@register
class ClusterRX(Detector):
    """Cluster-based RX (see the module's docstring)."""

    method = "cluster-rx"
    settings_type = ClusterRXSettings
    long_name = "squared Mahalanobis distance to the nearest k-means background class"
    FILE = "cluster_rx.npz"
    fit_stage = "cluster-rx-stats"

    def fit_cube(self, cube, stage=None, **kwargs) -> None:
        stage.run(self.fit_stage, self._fit_cube, cube)

    def _fit_cube(self, cube) -> None:
        from hsad_scale.tiles import tile_reduction_graph

        s = self.settings
        sample = scene_order_sample(cube, s.sample_pixels, s.seed)
        if len(sample) < 2:
            from hsad_scale.errors import InputError

            raise InputError("the cube has fewer than two valid pixels")
        centroids = kmeans_centroids(sample, s.clusters, s.seed, s.iterations)
        graph = tile_reduction_graph(cube, _class_stats_tile, _merge_class_stats, "cluster-rx-stats",
                                     extra=centroids)
        self.set_classes(centroids, graph.compute())

    def fit_pixels(self, pixels: np.ndarray, stage=None, **kwargs) -> None:
        from hsad_scale.stats import drop_invalid

        s = self.settings
        pixels = drop_invalid(np.asarray(pixels))
        rng = np.random.default_rng(s.seed)
        sample = pixels if len(pixels) <= s.sample_pixels else pixels[np.sort(rng.choice(len(pixels), s.sample_pixels,
                                                                                          replace=False))]
        centroids = kmeans_centroids(sample, s.clusters, s.seed, s.iterations)
        self.set_classes(centroids, class_stats(pixels, centroids))

    def set_classes(self, centroids: np.ndarray, stats: tuple) -> None:
        self.centroids, self.stats = centroids, tuple(stats)
        self.kept = kept_classes(self.stats, self.settings.min_class_fraction)
        self.whiteners: tuple[Whitener, ...] = tuple(whitener(self.stats[c]) for c in self.kept)
        self.fitted = True

    def pixel_scorer(self):
        return NearestClassScorer(self.whiteners)

    def score(self, cube, **kwargs):
        from hsad_scale.detectors.base import as_cube
        from hsad_scale.errors import InputError

        cube = as_cube(cube)
        self._check_fitted()
        if cube.sizes["band"] != self.centroids.shape[1]:
            raise InputError(f"the fitted cluster-rx has {self.centroids.shape[1]} bands, "
                             f"the cube has {cube.sizes['band']}")
        return super().score(cube, **kwargs)

    def save_arrays(self, folder) -> None:
        np.savez(folder / self.FILE, centroids=self.centroids,
                 counts=np.array([s.count for s in self.stats], dtype=np.int64),
                 means=np.stack([s.mean for s in self.stats]), scatters=np.stack([s.scatter for s in self.stats]))

    def load_arrays(self, folder, **kwargs) -> None:
        with np.load(folder / self.FILE, allow_pickle=False) as f:
            stats = tuple(BackgroundStats(int(n), m, s) for n, m, s in zip(f["counts"], f["means"], f["scatters"]))
            self.set_classes(f["centroids"], stats)

    def describe(self) -> dict:
        return {"classes": [{"pixels": s.count, "kept": c in self.kept,
                             **(self.whiteners[self.kept.index(c)].describe() if c in self.kept else {})}
                            for c, s in enumerate(self.stats)]}
