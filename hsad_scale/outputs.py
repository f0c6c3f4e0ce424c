"""Writing results: score stores, Cloud Optimized GeoTIFFs, metrics, run metadata."""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import json
import platform
from pathlib import Path

import numpy as np
import xarray as xr

from hsad_scale.atomic import replace_file
from hsad_scale.stats import _jsonable

LIBRARIES = ("hsad-scale", "numpy", "scipy", "dask", "distributed", "xarray", "zarr", "rioxarray", "torch", "prefect",
             "geopandas", "shapely")


def write_scores(scores: xr.Dataset, path: Path, client=None) -> None:
    """Write a Dataset of score maps ``(y, x)`` / ``(run, y, x)`` to Zarr, computing tile by tile
    on ``client`` (with a progress bar when the terminal shows one)."""
    from hsad_scale.cube import list_coordinates  # plain xr.open_zarr opens it silently, with its CRS

    job = list_coordinates(scores).to_zarr(path, compute=False, consolidated=True)
    if client is None:
        job.compute()
        return
    client.compute(job).result()  # progress: the stage's (hsad_scale.progress)


#: GDAL creation options of the Cloud Optimized GeoTIFFs (COG driver): 256-pixel tiles,
#: deflate, internal overviews down to one tile, BigTIFF when needed.
#: GDAL compresses the tiles and builds the overviews on every core (NUM_THREADS; the
#: cluster's workers are idle while the main process writes the maps).
COG_OPTIONS = dict(driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256, BIGTIFF="IF_SAFER", NUM_THREADS="ALL_CPUS")


@contextlib.contextmanager
def cog_writer(path: Path, height: int, width: int, dtype: str, *, crs=None, transform=None, nodata=None,
               description: str = "", resampling: str = "AVERAGE", tags: dict | None = None):
    """Yield ``write(first row, strip (rows, width))``; on exit, the strips (written to an
    uncompressed tiled GeoTIFF sibling, bounded memory) become the Cloud Optimized GeoTIFF ``path`` through
    GDAL's COG driver, with internal overviews (``resampling``: AVERAGE for scores, NEAREST
    for labels), band description, ``nodata`` and ``tags``. No ``crs``: the pixel grid (x =
    column, y = row)."""
    import warnings

    import rasterio
    import rasterio.shutil
    from rasterio.errors import NotGeoreferencedWarning

    path = Path(path)
    strips = path.with_name(f".{path.name}.strips.tif")
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype=dtype, crs=crs, nodata=nodata,
                   tiled=True, blockxsize=256, blockysize=256, BIGTIFF="IF_SAFER")  # uncompressed: read back once
    if crs is not None:
        profile["transform"] = transform
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(strips, "w", **profile) as dst:
                def write(r0: int, strip: np.ndarray) -> None:
                    dst.write(np.asarray(strip, dtype=dtype), 1,
                              window=rasterio.windows.Window(0, r0, width, strip.shape[0]))

                yield write
                dst.set_band_description(1, description)
                dst.update_tags(**(tags or {}))
            predictor = "YES" if np.dtype(dtype).kind == "f" else "NO"
            rasterio.shutil.copy(strips, path, **COG_OPTIONS, PREDICTOR=predictor, OVERVIEW_RESAMPLING=resampling)
    finally:
        strips.unlink(missing_ok=True)


def write_score_cog(score: xr.DataArray, path: Path, rows_per_strip: int = 512, normalise: tuple | None = None) -> None:
    """``score`` ``(y, x)`` as a float32 Cloud Optimized GeoTIFF (:func:`cog_writer`; NaN =
    nodata), read ``rows_per_strip`` rows at a time. ``normalise = (lo, hi)``: written as
    ``(score - lo) / (hi - lo)`` (monotone: the ranking, hence the AUC, is unchanged)."""
    crs = score.rio.crs
    height, width = score.shape
    name = score.attrs.get("long_name", "anomaly score")
    description = f"{name}, normalised to 0-1 (min-max)" if normalise else name
    tags = {"long_name": name}
    if normalise:
        tags.update(normalised="min-max", score_min=repr(normalise[0]), score_max=repr(normalise[1]))
    with cog_writer(path, height, width, "float32", crs=crs, transform=score.rio.transform() if crs else None,
                    nodata=np.nan, description=description, tags=tags) as write:
        for r0 in range(0, height, rows_per_strip):
            strip = np.asarray(score[r0 : r0 + rows_per_strip].values, dtype=np.float64)
            if normalise:
                lo, hi = normalise
                strip = (strip - lo) / (hi - lo) if hi > lo else np.where(np.isfinite(strip), 0.0, np.nan)
            write(r0, strip.astype(np.float32))


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
    Path(path).write_text(json_text(payload))


def replace_json(path: Path, payload: dict) -> None:
    """Replace the JSON file ``path`` whole (:func:`hsad_scale.atomic.replace_file`)."""
    replace_file(path, json_text(payload))


def json_text(payload: dict) -> str:
    return json.dumps(payload, indent=2, default=_jsonable) + "\n"
