"""Windows on plain arrays and their Dask layer: tiles scored with the halo their windows need.

Border rule (what the code of Spectral Python's ``map_outer_window_stats``, which
``spectral.rx(window=...)`` uses, does): along each axis a window of ``size`` pixels centred
on pixel ``i`` is SHIFTED inward at the scene's border so that it keeps its full size (it
starts at ``clip(i - size // 2, 0, n - size)``); the inner (guard) window too (Spectral
Python's docstring says it is clipped; its code shifts it, and so do we, to give the same
scores). A scene smaller than a window along an axis uses the whole axis. Windows are the same whatever
the tiles: each tile of the map is computed from the slice of the scene that its pixels'
windows cover (up to ``size - 1`` pixels beyond the tile at the scene's border,
``size // 2`` inside), so scores do not depend on the chunking.
"""

from __future__ import annotations

from typing import Callable

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize


def shifted_bounds(n: int, size: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """Outer window rows ``[start, stop)`` ``(hi - lo,)`` of pixels ``lo..hi-1`` on an axis of
    ``n`` pixels: full ``size``, shifted inward at the border."""
    i = np.arange(lo, hi)
    start = np.clip(i - size // 2, 0, max(n - size, 0))
    return start, np.minimum(start + size, n)


def input_range(n: int, size: int, lo: int, hi: int) -> tuple[int, int]:
    """The slice ``[a, b)`` of the axis that the outer windows of pixels ``lo..hi-1`` cover
    (the inner windows and the pixels themselves lie inside them: a smaller window centred
    on the same pixel and shifted by the same rule stays inside)."""
    start, stop = shifted_bounds(n, size, lo, hi)
    return int(start[0]), int(stop[-1])


def window_sums(values: np.ndarray, rows: tuple, cols: tuple) -> np.ndarray:
    """Sums ``(F, len(rows[0]), len(cols[0]))`` of ``values`` ``(F, ny, nx)`` over the windows
    ``rows[0][i]:rows[1][i]`` x ``cols[0][j]:cols[1][j]`` (indices into ``values``): cumulative
    sums along each axis, differenced (a box filter: cost independent of the window size)."""
    return take_sums(cumulative(take_sums(cumulative(values, 1), 1, *rows), 2), 2, *cols)


def cumulative(values: np.ndarray, axis: int) -> np.ndarray:
    """Cumulative sums of ``values`` along ``axis`` with a zero prepended (float64)."""
    shape = list(values.shape)
    shape[axis] += 1
    csum = np.empty(shape)
    csum[(slice(None),) * axis + (slice(0, 1),)] = 0.0
    np.cumsum(values, axis=axis, out=csum[(slice(None),) * axis + (slice(1, None),)])
    return csum


def take_sums(csum: np.ndarray, axis: int, start: np.ndarray, stop: np.ndarray) -> np.ndarray:
    """Window sums ``[start, stop)`` along ``axis`` from cumulative sums (:func:`cumulative`);
    windows of one size sliding by one pixel (a tile inside the scene) are two slices, not
    two gathers."""
    n = len(start)
    if n and (stop - start == stop[0] - start[0]).all() and (start == start[0] + np.arange(n)).all():
        index = (slice(None),) * axis
        return csum[index + (slice(stop[0], stop[0] + n),)] - csum[index + (slice(start[0], start[0] + n),)]
    out = np.take(csum, stop, axis=axis)
    out -= np.take(csum, start, axis=axis)
    return out


TileFn = Callable  # (block (B, ny_in, nx_in), origin (row, col), out (r0, r1, c0, c1), scene (R, C), extra) -> (ny, nx)


def halo_map(cube: xr.DataArray, tile_fn: TileFn, outer: tuple[int, int], extra=None,
             name: str = "window-score") -> xr.DataArray:
    """Lazy map ``(y, x)`` float32 of ``tile_fn`` over the cube's tiles, each called with the
    slice of the cube ``(band, rows, cols)`` that the outer windows (``outer`` = (height,
    width)) of its pixels cover, that slice's origin in the scene, the tile's rows and
    columns ``(r0, r1, c0, c1)`` and the scene's shape. ``extra`` is sent to each worker once.
    The map has the cube's chunks along y and x and its spatial coords."""
    from hsad_scale.tiles import as_map

    data = cube.data if len(cube.data.chunks[0]) == 1 else cube.data.rechunk({0: -1})
    _, n_rows, n_cols = data.shape
    row_edges = np.cumsum((0, *data.chunks[1]))
    col_edges = np.cumsum((0, *data.chunks[2]))
    extra_key = dask.delayed(extra, pure=True) if extra is not None else None
    token = tokenize(data, tile_fn, outer, extra)
    rows = []
    for bi in range(len(row_edges) - 1):
        r0, r1 = int(row_edges[bi]), int(row_edges[bi + 1])
        a, b = input_range(n_rows, outer[0], r0, r1)
        row = []
        for bj in range(len(col_edges) - 1):
            c0, c1 = int(col_edges[bj]), int(col_edges[bj + 1])
            c, d = input_range(n_cols, outer[1], c0, c1)
            tile = dask.delayed(tile_fn, pure=True)(data[:, a:b, c:d], (a, c), (r0, r1, c0, c1), (n_rows, n_cols),
                                                    extra_key, dask_key_name=f"{name}-{token}-{bi}-{bj}")
            row.append(da.from_delayed(tile, shape=(r1 - r0, c1 - c0), dtype=np.float32))
        rows.append(row)
    return as_map(cube, da.block(rows)[None], 1)
