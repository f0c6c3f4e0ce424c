"""The Dask layer over cube tiles: each tile read once and handed to the plain-array maths,
the results merged in a tree; background reductions and tile-wise scoring.

Every function takes the cube as a DataArray ``(band, y, x)`` (dask-backed) and hands each
tile to the plain-array maths as pixels ``(n_pixels, n_bands)``; invalid (NaN) pixels are
skipped by the reductions and score NaN. Graph keys carry readable names for the
dashboard's task stream (``rx-stats``, ``score-tile``...). Sampling of training pixels
lives in :mod:`hsad_scale.sampling`, tile-wise ROC counting of score maps in
:mod:`hsad_scale.roc_tiles`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from hsad_scale.stats import BackgroundStats

PixelFn = Callable[[np.ndarray], np.ndarray]  # (n, bands) -> (n,) scores or (n, k) features


def tile_pixels(block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Valid pixels ``(n_valid, bands)`` of a tile ``(bands, ny, nx)`` and the valid mask ``(ny*nx,)``."""
    pixels = block.reshape(block.shape[0], -1).T  # a view, Fortran-ordered
    valid = np.isfinite(block.sum(axis=0)).ravel()
    return (pixels if valid.all() else pixels[valid]), valid


def _tile_stats(block: np.ndarray, fn: PixelFn | None) -> BackgroundStats:
    if fn is None:  # optimistic: statistics of every pixel, recomputed without NaN pixels if there were some
        stats = BackgroundStats.from_pixels(block.reshape(block.shape[0], -1).T, all_valid=True)
        if stats.is_finite():
            return stats
    pixels, _ = tile_pixels(block)
    features = pixels if fn is None else fn(pixels)
    if features.shape[0] == 0:
        return BackgroundStats.empty(features.shape[1])
    return BackgroundStats.from_pixels(features, all_valid=fn is None)


def _tile_cell(block: np.ndarray, tile_fn: Callable, extra, block_id=None) -> np.ndarray:
    """``tile_fn(block, (row, col) of the tile, extra)`` as a one-element object array, for ``map_blocks``."""
    cell = np.empty((1, 1, 1), dtype=object)
    cell[0, 0, 0] = tile_fn(block, tuple(block_id[1:]), extra)
    return cell


def unwrap(part):
    """The value of a one-element object array (a tile's cell), else ``part`` itself."""
    return part.item() if isinstance(part, np.ndarray) and part.dtype == object else part


def _merge_parts(merge_fn: Callable, a, b):
    return merge_fn(unwrap(a), unwrap(b))


def tile_cells(cube: xr.DataArray, tile_fn: Callable, name: str, extra=None) -> da.Array:
    """Lazy object array ``(1, n_tile_rows, n_tile_cols)`` of ``tile_fn(block, (row, col),
    extra)`` on each tile ``(bands, ny, nx)``, read and processed in one task (``extra`` sent
    to each worker once)."""
    data = cube.data if len(cube.data.chunks[0]) == 1 else cube.data.rechunk({0: -1})  # whole spectra per tile
    extra_key = dask.delayed(extra, pure=True) if extra is not None else None
    return da.map_blocks(_tile_cell, data, tile_fn, extra_key, dtype=object, meta=np.empty((0, 0, 0), dtype=object),
                         chunks=tuple((1,) * len(c) for c in data.chunks),
                         name=f"{name}-{tokenize(data, tile_fn, extra)}")


def tile_reduction_graph(cube: xr.DataArray, tile_fn: Callable, merge_fn: Callable, name: str, extra=None):
    """Delayed reduction over the cube's tiles (:func:`tile_cells`), the parts merged pairwise
    in tile order by ``merge_fn(a, b)`` in a tree. One pass."""
    cells = tile_cells(cube, tile_fn, name, extra)
    parts = list(cells.to_delayed().ravel())  # optimised: the read is fused into each tile's task
    return tree_merge(parts, merge_fn, name, tokenize(cells.name, merge_fn))


def tree_merge(parts: list, merge_fn: Callable, name: str, token: str):
    """Delayed merge of ``parts`` (delayed, in tile order) pairwise in a tree by ``merge_fn``."""
    level = 0
    while len(parts) > 1:
        pairs = [parts[i : i + 2] for i in range(0, len(parts), 2)]
        parts = [
            dask.delayed(_merge_parts, pure=True)(merge_fn, *p, dask_key_name=f"{name}-merge-{token}-{level}-{i}")
            if len(p) == 2 else p[0]
            for i, p in enumerate(pairs)
        ]
        level += 1
    return dask.delayed(unwrap, pure=True)(parts[0], dask_key_name=f"{name}-total-{token}")


def _stats_tile(block: np.ndarray, tile, fn: PixelFn | None) -> BackgroundStats:
    return _tile_stats(block, fn)


def background_stats_graph(cube: xr.DataArray, fn: PixelFn | None = None, name: str = "rx-stats"):
    """Delayed :class:`BackgroundStats` of the valid pixels (or of ``fn`` of them): per-tile
    statistics merged pairwise in a tree, one pass over the cube."""
    return tile_reduction_graph(cube, _stats_tile, BackgroundStats.merge, name, extra=fn)


def background_stats(cube: xr.DataArray, fn: PixelFn | None = None, name: str = "rx-stats") -> BackgroundStats:
    """Compute :func:`background_stats_graph` (on the current Dask client, if any)."""
    return background_stats_graph(cube, fn, name).compute()


def _tile_score(block: np.ndarray, fn: PixelFn, n_out: int) -> np.ndarray:
    if getattr(fn, "nan_rows_give_nan", False):
        return _score_every_pixel(block, fn, n_out)
    pixels, valid = tile_pixels(block)
    return _place_scores(fn(pixels) if pixels.shape[0] else None, valid, block.shape[1:], n_out)


def _score_every_pixel(block: np.ndarray, fn: PixelFn, n_out: int) -> np.ndarray:
    """``fn`` of every pixel of a tile ``(bands, ny, nx)``, for an ``fn`` whose score of a row
    holding NaN/Inf is not finite (``fn.nan_rows_give_nan``, e.g. RX's Mahalanobis distance):
    only the pixels with a non-finite score are checked, and set to NaN when one of their
    bands is not finite. This spares the pass over the whole tile that finds the valid pixels
    first (:func:`tile_pixels`): the score stage of RX on a 4096^2 x 200 cube 1/6 faster."""
    pixels = block.reshape(block.shape[0], -1).T  # a view, Fortran-ordered
    scores = np.asarray(fn(pixels), dtype=np.float32).reshape(-1, n_out)
    suspect = np.flatnonzero(~np.isfinite(scores).all(axis=1))
    if suspect.size:
        scores[suspect[~np.isfinite(pixels[suspect]).all(axis=1)]] = np.nan
    return np.ascontiguousarray(scores.T).reshape(n_out, *block.shape[1:])


def _place_scores(scores: np.ndarray | None, valid: np.ndarray, shape: tuple, n_out: int) -> np.ndarray:
    """Scores ``(n_valid, n_out)`` of a tile's valid pixels as a ``(n_out, ny, nx)`` float32
    tile, NaN at invalid pixels."""
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float32).reshape(-1, n_out).T
        if valid.all():  # no NaN-filled buffer and no masked assignment: one transposing copy
            return np.ascontiguousarray(scores).reshape(n_out, *shape)
    out = np.full((n_out, valid.size), np.nan, dtype=np.float32)
    if scores is not None:
        out[:, valid] = scores
    return out.reshape(n_out, *shape)


def score_map(cube: xr.DataArray, fn: PixelFn, n_out: int = 1, name: str = "score-tile") -> xr.DataArray:
    """Lazy map of ``fn`` over the cube's tiles: ``(y, x)`` float32 (or ``(output, y, x)`` when
    ``n_out > 1``), with the cube's spatial coords (and CRS). ``fn`` is sent to each worker
    once (a single graph key), not once per tile."""
    fn_key = dask.delayed(fn, pure=True)
    data = da.map_blocks(
        _tile_score, cube.data, fn_key, n_out, dtype=np.float32,
        chunks=((n_out,), *cube.data.chunks[1:]), name=f"{name}-{tokenize(cube.data, fn, n_out)}",
    )
    return as_map(cube, data, n_out)


def as_map(cube: xr.DataArray, data: da.Array, n_out: int) -> xr.DataArray:
    """``data`` ``(n_out, y, x)`` with the cube's spatial coords (and CRS); ``(y, x)`` when ``n_out == 1``."""
    coords = {k: v for k, v in cube.coords.items() if "band" not in v.dims}
    scores = xr.DataArray(data, dims=("output", "y", "x"), coords=coords)
    return scores.isel(output=0, drop=True) if n_out == 1 else scores


@dataclass
class FeatureTile:
    """What :func:`feature_tiles` keeps of one tile: for each pixel function, its features
    ``(n_valid, k)`` float32 of the tile's valid pixels and their :class:`BackgroundStats`;
    ``valid`` ``(ny * nx,)`` and ``shape`` ``(ny, nx)`` place them back into the tile."""

    valid: np.ndarray
    shape: tuple
    features: tuple
    stats: tuple


def _feature_tile(block: np.ndarray, tile, fns: tuple) -> FeatureTile:
    pixels, valid = tile_pixels(block)
    features = tuple(np.asarray(fn(pixels), dtype=np.float32).reshape(pixels.shape[0], -1) for fn in fns)
    stats = tuple(BackgroundStats.from_pixels(f) if f.shape[0] else BackgroundStats.empty(f.shape[1])
                  for f in features)
    return FeatureTile(valid, block.shape[1:], features, stats)


def feature_tiles(cube: xr.DataArray, fns: tuple, name: str = "features") -> da.Array:
    """Lazy object array ``(1, n_tile_rows, n_tile_cols)`` of :class:`FeatureTile`: each
    tile read once and every ``fns`` (pixels ``(n, B)`` -> features ``(n, k)``) applied to
    its valid pixels, with their statistics computed in the same task. Persist it to keep the
    features on the workers for :func:`feature_stats_graph` and :func:`feature_score_map`."""
    return tile_cells(cube, _feature_tile, name, extra=tuple(fns))


def _tile_feature_stats(cell) -> tuple:
    return unwrap(cell).stats


def _merge_stats_tuples(a: tuple, b: tuple) -> tuple:
    return tuple(x.merge(y) for x, y in zip(a, b))


def feature_stats_graph(tiles: da.Array, name: str = "feature-stats"):
    """Delayed tuple of :class:`BackgroundStats`, one per pixel function of
    :func:`feature_tiles`, over all tiles (merged pairwise in a tree; no pass over the cube
    when ``tiles`` is persisted)."""
    token = tokenize(tiles)
    parts = [dask.delayed(_tile_feature_stats, pure=True)(cell, dask_key_name=f"{name}-tile-{token}-{i}")
             for i, cell in enumerate(tiles.to_delayed().ravel())]
    return tree_merge(parts, _merge_stats_tuples, name, token)


def _score_feature_tile(cell, fn: Callable, n_out: int) -> np.ndarray:
    tile: FeatureTile = unwrap(cell)
    scores = fn(tile.features) if tile.features[0].shape[0] else None
    return _place_scores(scores, tile.valid, tile.shape, n_out)


def feature_score_map(cube: xr.DataArray, tiles: da.Array, fn: Callable, n_out: int = 1,
                      name: str = "score-tile") -> xr.DataArray:
    """Lazy map like :func:`score_map`, from the features of :func:`feature_tiles` (``fn``:
    their tuple ``((n, k_1), ...)`` -> scores ``(n, n_out)``) instead of the cube's pixels."""
    data = da.map_blocks(_score_feature_tile, tiles, dask.delayed(fn, pure=True), n_out, dtype=np.float32,
                         chunks=((n_out,), *cube.data.chunks[1:]), name=f"{name}-{tokenize(tiles, fn, n_out)}")
    return as_map(cube, data, n_out)
