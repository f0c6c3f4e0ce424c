"""Writing results: score stores, GeoTIFFs, metrics, run metadata."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import xarray as xr

from hsad_scale.stats import _jsonable

LIBRARIES = ("hsad-scale", "numpy", "scipy", "dask", "distributed", "xarray", "zarr", "rioxarray", "torch", "prefect")


def write_scores(scores: xr.Dataset, path: Path, client=None) -> None:
    """Write a Dataset of score maps ``(y, x)`` / ``(run, y, x)`` to Zarr, computing tile by tile
    on ``client`` (with a progress bar when the terminal shows one)."""
    from hsad_scale.cube import list_coordinates  # plain xr.open_zarr opens it silently, with its CRS

    job = list_coordinates(scores).to_zarr(path, compute=False, consolidated=True)
    if client is None:
        job.compute()
        return
    future = client.compute(job)
    show_progress(future)
    future.result()


def show_progress(future) -> None:
    import sys

    if sys.stderr.isatty():
        from distributed import progress

        progress(future)
        print(file=sys.stderr)


def write_geotiff(score: xr.DataArray, path: Path, rows_per_strip: int = 512) -> None:
    """Write a georeferenced ``(y, x)`` float32 map to a tiled, deflate-compressed GeoTIFF,
    reading ``rows_per_strip`` rows at a time (bounded memory)."""
    import rasterio

    height, width = score.shape
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="float32",
                   crs=score.rio.crs, transform=score.rio.transform(), nodata=np.nan,
                   tiled=True, blockxsize=256, blockysize=256, compress="deflate", predictor=3, BIGTIFF="IF_SAFER")
    with rasterio.open(path, "w", **profile) as dst:
        for r0 in range(0, height, rows_per_strip):
            r1 = min(height, r0 + rows_per_strip)
            strip = np.asarray(score[r0:r1].values, dtype=np.float32)
            dst.write(strip, 1, window=rasterio.windows.Window(0, r0, width, r1 - r0))
        dst.update_tags(1, long_name=score.attrs.get("long_name", "anomaly score"))


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def write_json(path: Path, payload: dict) -> None:
    Path(path).write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
