"""Scenes as chunked Zarr cubes: ``cube`` float32 ``(band, y, x)``, the whole band axis in
one chunk, invalid pixels NaN; optional ``wavelength`` (nm, on ``band``), ``spatial_ref``
(rioxarray's CRS/transform) and ``ground_truth`` uint8 ``(y, x)``."""

from __future__ import annotations

from pathlib import Path

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr

from hsad_scale import progress
from hsad_scale.atomic import atomic_path
from hsad_scale.chunk_reader import zarr_dask_array
from hsad_scale.errors import InputError
from hsad_scale.locations import absolute
from hsad_scale.readers import SceneSource

CUBE = "cube"
GROUND_TRUTH = "ground_truth"
DEFAULT_CHUNK = 256
#: Cube stores are uncompressed by default: hyperspectral float32 compresses ~1.2x with
#: zstd or lz4 but reads 2-3x slower, and every detector reads the cube twice.
COMPRESSIONS = ("none", "zstd", "lz4")


def scene_dataset(source: SceneSource, chunk: int = DEFAULT_CHUNK) -> xr.Dataset:
    """Lazy cube Dataset from a reader's :class:`SceneSource` (float32, invalid -> NaN)."""
    if source.cube.ndim != 3:
        raise InputError(f"expected a 3-D cube (band, y, x), got {source.cube.ndim} dimensions")
    n_bands, height, width = source.cube.shape
    pixels = da.asarray(source.cube).rechunk((n_bands, chunk, chunk))
    cube = pixels.map_blocks(_to_float32, source.nodata, dtype=np.float32)
    ds = xr.Dataset({CUBE: (("band", "y", "x"), cube)}, coords=_coords(source, height, width))
    if source.wavelength is not None:
        ds = ds.assign_coords(wavelength=("band", np.asarray(source.wavelength, dtype=np.float64)))
        ds["wavelength"].attrs["units"] = "nm"
    if source.ground_truth is not None:
        ds[GROUND_TRUTH] = (("y", "x"), ground_truth_array(source.ground_truth, (height, width)))
    if source.crs is not None:
        ds = ds.rio.write_crs(source.crs)
        if source.transform is not None:
            ds = ds.rio.write_transform(source.transform)
    ds[CUBE].attrs.update(long_name="radiance or reflectance", **_scalar_attrs(source.attrs))
    return ds


def _to_float32(block: np.ndarray, nodata) -> np.ndarray:
    out = block.astype(np.float32)
    if nodata is not None and np.isfinite(nodata):
        out[block == nodata] = np.nan
    out[~np.isfinite(out)] = np.nan
    # a pixel is valid only when every band is: NaN in one band invalidates the spectrum
    out[:, np.isnan(out).any(axis=0)] = np.nan
    return out


def _coords(source: SceneSource, height: int, width: int) -> dict:
    if source.transform is None:
        return {"y": np.arange(height), "x": np.arange(width)}
    t = source.transform
    return {"y": t.f + (np.arange(height) + 0.5) * t.e, "x": t.c + (np.arange(width) + 0.5) * t.a}


def _scalar_attrs(attrs: dict) -> dict:
    return {k: v for k, v in attrs.items() if isinstance(v, (str, int, float))}


def ground_truth_array(truth, shape: tuple[int, int]) -> np.ndarray:
    """Ground truth as uint8 (1 = anomaly) ``(y, x)``; wrong shape is an InputError."""
    truth = np.asarray(truth)
    if truth.shape != tuple(shape):
        raise InputError(f"ground truth has shape {truth.shape}, the cube is {tuple(shape)} (y, x)")
    return (np.nan_to_num(truth.astype(np.float64)) > 0).astype(np.uint8)


def ingest(
    src: str | Path,
    dest: str | Path,
    *,
    gt: str | Path | None = None,
    cube_key: str | None = None,
    gt_key: str | None = None,
    chunk: int = DEFAULT_CHUNK,
    compression: str = "none",
    overwrite: bool = False,
) -> Path:
    """Read any supported scene and write it to ``dest`` as a cube store, in pieces."""
    from hsad_scale.readers.dispatch import read_scene

    if chunk < 1:
        raise InputError(f"--chunk must be positive, got {chunk}")
    source = read_scene(src, cube_key=cube_key, gt_key=gt_key, gt_path=gt)
    ds = scene_dataset(source, chunk)
    ds.attrs.update(source=str(Path(src).name))
    return write_cube(ds, dest, compression=compression, overwrite=overwrite)


def write_cube(ds: xr.Dataset, dest: str | Path, *, compression: str = "none", overwrite: bool = False) -> Path:
    """Write a cube Dataset to a Zarr store atomically, chunk by chunk (bounded memory)."""
    if compression not in COMPRESSIONS:
        raise InputError(f"unknown compression {compression!r}; choose from {', '.join(COMPRESSIONS)}")
    n_bands = ds.sizes["band"]
    chunks = (n_bands, *ds[CUBE].data.chunksize[1:])
    kept = {k: v for k, v in ds[CUBE].encoding.items() if k == "grid_mapping"}  # rioxarray's CRS link
    encoding = {CUBE: {**kept, "chunks": chunks, "compressors": _compressors(compression)}}
    with atomic_path(dest, overwrite) as tmp:
        job = ds.to_zarr(tmp, encoding=encoding, compute=False, consolidated=False)
        # local threads: sources are files on this machine, and h5py/mat readers need no pickling
        with progress.local_tasks(f"writing {Path(dest).name}"):
            dask.compute(job, scheduler="threads")
    return Path(dest)


def _compressors(name: str):
    from zarr.codecs import BloscCodec, ZstdCodec

    return {"none": None, "zstd": [ZstdCodec(level=1)], "lz4": [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")]}[name]


def open_cube(path: str | Path) -> xr.Dataset:
    """Open a cube store lazily (dask-backed); InputError when it is not one. The store's
    path in the task graph is absolute (workers have other working directories)."""
    from hsad_scale import locations

    path = absolute(path)
    if not locations.exists(path):
        raise InputError(f"{path} does not exist")
    try:
        ds = xr.open_zarr(path, consolidated=False, decode_coords="all")
    except Exception as exc:  # zarr raises many types for a folder that is not a store
        raise InputError(f"{path} is not a readable Zarr store: {exc}") from None
    if CUBE not in ds or ds[CUBE].dims != ("band", "y", "x"):
        raise InputError(f"{path} holds no '{CUBE}' variable with dims (band, y, x)")
    small = [name for name in ds.coords if name not in ds.indexes and ds[name].ndim == 1]
    ds = ds.assign_coords({name: ds[name].load() for name in small})
    ds[CUBE] = ds[CUBE].copy(data=zarr_dask_array(path, CUBE))  # same values, faster tile reads
    if ds[CUBE].data.chunksize[0] != ds.sizes["band"]:
        ds[CUBE] = ds[CUBE].chunk({"band": -1})
    return ds


#: Side (pixels) of the blocks in which whole maps (scores, ground truth) are read for
#: evaluation: a 1024 x 1024 block is 4 MB of float32 scores, and a 2048 x 2048 map is four
#: tasks per pass (0.4 s to evaluate on 2 workers, against 1.5 s with one task per 128 x 128 tile).
MAP_BLOCK_SIDE = 1024


def open_maps(path: str | Path, block_side: int = MAP_BLOCK_SIDE) -> xr.Dataset:
    """The ``(y, x)`` / ``(..., y, x)`` maps of a store (a score store, or a cube store's ground
    truth), dask-backed in blocks of about ``block_side`` pixels a side (whole store chunks):
    for passes over whole maps with memory set by the block, not the scene."""
    ds = xr.open_zarr(absolute(path), consolidated=False, decode_coords="all", chunks=None)
    chunks = {}
    for var in ds.data_vars.values():
        for dim, chunk in zip(var.dims, var.encoding.get("chunks") or var.shape):
            if dim in ("y", "x"):
                chunks[dim] = max(chunk, round(block_side / chunk) * chunk)
    return ds.chunk(chunks)


def is_cube_store(path: str | Path) -> bool:
    path = Path(path)
    return path.is_dir() and ((path / "zarr.json").exists() or (path / ".zgroup").exists())
