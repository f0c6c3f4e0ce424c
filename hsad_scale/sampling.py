"""Training pixels drawn from a cube, tile by tile (the Dask layer): a uniform random
sample of the valid pixels (:func:`sample_pixels`), optionally in the same pass as the
per-band summary the AE/VAE's scaling needs (:func:`band_summary_and_sample_graph`). The
plan (which pixels of which tile) depends only on the scene's shape, its tiles and the
seed, so every caller with the same seed draws the same pixels."""

from __future__ import annotations

import dask
import numpy as np
import xarray as xr
from dask.base import tokenize

from hsad_scale.stats import BandSummary
from hsad_scale.tiles import tile_cells, tree_merge, unwrap


def _summary_and_sample_tile(block: np.ndarray, tile, picks_by_tile: dict):
    picks = picks_by_tile.get(tile)
    sample = _tile_sample(block, picks) if picks is not None else None
    return BandSummary.from_pixels(block.reshape(block.shape[0], -1).T), sample


def _cell_summary(cell) -> BandSummary:
    return unwrap(cell)[0]


def _concat_cell_samples(cells: list, n_bands: int) -> np.ndarray:
    parts = [part for part in (unwrap(c)[1] for c in cells) if part is not None]
    return np.concatenate(parts, axis=0) if parts else np.empty((0, n_bands), dtype=np.float32)


def band_summary_and_sample_graph(cube: xr.DataArray, n_samples: int, seed: int = 0):
    """Delayed ``BandSummary`` (per-band count, mean, variance, minimum and maximum of the
    valid pixels) and delayed training sample ``(n, B)`` of :func:`sample_pixels` (the same
    pixels, in the same order), from one pass in which each tile is read once. The summaries
    merge in a tree; the sample parts go straight to the one task that joins them."""
    picks_by_tile = {tile: local for tile, local in sample_plan(cube, n_samples, seed)}
    cells = tile_cells(cube, _summary_and_sample_tile, "scaling-sample", extra=picks_by_tile)
    token = tokenize(cells.name)
    cells = list(cells.to_delayed().ravel())
    summaries = [dask.delayed(_cell_summary, pure=True)(c, dask_key_name=f"scaling-summary-{token}-{i}")
                 for i, c in enumerate(cells)]
    summary = tree_merge(summaries, BandSummary.merge, "scaling-summary", token)
    sample = dask.delayed(_concat_cell_samples, pure=True)(cells, cube.shape[0], dask_key_name=f"train-sample-{token}")
    return summary, sample


def _tile_sample(block: np.ndarray, picks: np.ndarray) -> np.ndarray:
    pixels = block.reshape(block.shape[0], -1).T[picks]
    return pixels[np.isfinite(pixels.sum(axis=1))].astype(np.float32)


def sample_pixels(cube: xr.DataArray, n_samples: int, seed: int = 0) -> np.ndarray:
    """Valid pixels ``(n, bands)`` float32: all of them when the scene has at most
    ``n_samples`` pixels, else a uniform random sample of about that size (tile by tile)."""
    return np.concatenate(dask.compute(*sample_pixels_graph(cube, n_samples, seed)), axis=0)


def sample_plan(cube: xr.DataArray, n_samples: int, seed: int) -> list:
    """``[((row, col) of a tile, flat pixel indices in that tile), ...]`` in tile order: all
    pixels when the scene has at most ``n_samples``, else a uniform random choice of that many."""
    _, ny, nx = cube.shape
    total = ny * nx
    rng = np.random.default_rng(seed)
    chosen = np.arange(total) if total <= n_samples else np.sort(rng.choice(total, n_samples, replace=False))
    rows, cols = np.divmod(chosen, nx)
    row_edges = np.cumsum((0, *cube.data.chunks[1]))
    col_edges = np.cumsum((0, *cube.data.chunks[2]))
    tile_i = np.searchsorted(row_edges, rows, side="right") - 1
    tile_j = np.searchsorted(col_edges, cols, side="right") - 1
    tile = tile_i * (len(col_edges) - 1) + tile_j  # ascending with `chosen` within a tile row
    order = np.argsort(tile, kind="stable")
    tiles, starts = np.unique(tile[order], return_index=True)
    plan = []
    for t, picks in zip(tiles, np.split(order, starts[1:])):
        bi, bj = divmod(int(t), len(col_edges) - 1)
        width = col_edges[bj + 1] - col_edges[bj]
        plan.append(((bi, bj), (rows[picks] - row_edges[bi]) * width + (cols[picks] - col_edges[bj])))
    return plan


def sample_pixels_graph(cube: xr.DataArray, n_samples: int, seed: int = 0) -> list:
    """The delayed per-tile parts of :func:`sample_pixels`."""
    blocks = cube.data.to_delayed()
    return [dask.delayed(_tile_sample, pure=True)(blocks[0, bi, bj], local,
                                                  dask_key_name=f"train-sample-{tokenize(cube.data, bi, bj, local)}")
            for (bi, bj), local in sample_plan(cube, n_samples, seed)]
