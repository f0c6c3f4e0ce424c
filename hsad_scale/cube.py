"""Scenes as chunked Zarr cubes: ``cube`` float32 ``(band, y, x)``, the whole band axis in
one chunk, invalid pixels NaN; optional ``wavelength`` (nm, on ``band``), ``spatial_ref``
(rioxarray's CRS/transform), ``ground_truth`` uint8 ``(y, x)`` and an EMIT GLT (``glt_x``,
``glt_y``). The ``cube`` attributes record what ingest decided: ``dropped_bands`` /
``dropped_band_reasons`` (source band indices), ``source_bands``, ``source_dtype``, ``nodata``,
``scale_applied``/``offset_applied`` and ``hsad_warnings`` (the readers' decisions)."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor)
import xarray as xr
from affine import Affine

from hsad_scale import progress
from hsad_scale.atomic import atomic_path
from hsad_scale.chunk_reader import zarr_dask_array
from hsad_scale.errors import InputError
from hsad_scale.locations import absolute
from hsad_scale.names import CUBE, GROUND_TRUTH  # noqa: F401  (cube.CUBE, cube.GROUND_TRUTH: used across the package)
from hsad_scale.readers import SceneSource

DEFAULT_CHUNK = 256
#: Cube stores are uncompressed by default: hyperspectral float32 compresses ~1.2x with
#: zstd or lz4 but reads 2-3x slower, and every detector reads the cube twice.
COMPRESSIONS = ("none", "zstd", "lz4")


def scene_dataset(source: SceneSource, chunk: int = DEFAULT_CHUNK, drop_bands: str | None = None,
                  survey: BandSurvey | None = None) -> xr.Dataset:
    """Lazy cube Dataset from a reader's :class:`SceneSource` (float32, invalid -> NaN,
    physical values: stored x band scale + offset), without the bands that
    :func:`band_survey` (or ``survey``, already taken) and ``drop_bands`` leave out.

    The bands left out and why are the cube's attrs ``dropped_bands`` (source indices) and
    ``dropped_band_reasons``; the readers' notes are ``hsad_warnings``. InputError when fewer
    than 2 bands or no valid pixel remain.
    """
    if source.cube.ndim != 3:
        raise InputError(f"expected a 3-D cube (band, y, x), got {source.cube.ndim} dimensions")
    survey = survey if survey is not None else band_survey(source, drop_bands)
    kept = survey.kept
    n_bands, height, width = len(kept), *source.cube.shape[1:]
    pixels = da.asarray(source.cube)
    if n_bands != source.cube.shape[0]:
        pixels = pixels[kept]
    pixels = pixels.rechunk((n_bands, chunk, chunk))
    scale, offset = _band_scaling(source, kept)
    cube = pixels.map_blocks(_to_float32, source.nodata, scale, offset, dtype=np.float32)
    ds = xr.Dataset({CUBE: (("band", "y", "x"), cube)}, coords=_coords(source, height, width))
    if source.wavelength is not None:
        ds = ds.assign_coords(wavelength=("band", np.asarray(source.wavelength, dtype=np.float64)[kept]))
        ds["wavelength"].attrs["units"] = "nm"
    if source.ground_truth is not None:
        ds[GROUND_TRUTH] = (("y", "x"), ground_truth_array(source.ground_truth, (height, width)))
    if source.crs is not None:
        ds = ds.rio.write_crs(source.crs)
        if source.transform is not None:
            ds = ds.rio.write_transform(source.transform)
    ds[CUBE].attrs.update(long_name="radiance or reflectance", **_scalar_attrs(source.attrs))
    ds[CUBE].attrs.update(survey.attrs(), source_dtype=str(source.cube.dtype))
    if source.nodata is not None and np.isfinite(source.nodata):
        ds[CUBE].attrs["nodata"] = source.nodata
    if source.notes:
        ds[CUBE].attrs["hsad_warnings"] = list(source.notes)
    if scale is not None:
        ds[CUBE].attrs.update(scale_applied=[float(v) for v in scale], offset_applied=[float(v) for v in offset])
    if source.glt is not None:
        ds = with_glt(ds, source.glt)
    return ds


GLT_X, GLT_Y = "glt_x", "glt_y"


def with_glt(ds: xr.Dataset, glt) -> xr.Dataset:
    """The cube Dataset with the lookup table of its orthorectified grid: ``glt_x``/``glt_y``
    int32 ``(ortho_y, ortho_x)`` (1-based swath column/row, 0 = none), their grid's CRS WKT and
    GDAL GeoTransform as attributes. The cube stays in swath geometry (statistics see each
    swath pixel once); maps are moved onto the grid when written (:func:`on_output_grid`)."""
    geo = {"crs_wkt": glt.crs, "GeoTransform": " ".join(repr(float(v)) for v in glt.transform.to_gdal())}
    ds[GLT_X] = (("ortho_y", "ortho_x"), glt.x, dict(geo, long_name="swath column (1-based) of each grid pixel"))
    ds[GLT_Y] = (("ortho_y", "ortho_x"), glt.y, dict(geo, long_name="swath row (1-based) of each grid pixel"))
    return ds


def on_output_grid(cube_ds: xr.Dataset, scores: xr.Dataset) -> tuple[xr.Dataset, xr.Dataset]:
    """``(grid, scores)``: for a cube with a GLT (EMIT), the score maps moved through it onto
    the orthorectified grid, and a Dataset carrying that grid's CRS and transform; else
    ``(cube_ds, scores)`` unchanged. Grid pixels with no swath pixel score NaN. The swath maps
    are read whole (2-D maps: a 1280 x 1242 swath is 6 MB a map)."""
    if GLT_X not in cube_ds:
        return cube_ds, scores
    gx = cube_ds[GLT_X].values.astype(np.int64)
    gy = cube_ds[GLT_Y].values.astype(np.int64)
    attrs = cube_ds[GLT_X].attrs
    transform = Affine.from_gdal(*(float(v) for v in attrs["GeoTransform"].split()))
    height, width = gx.shape
    grid = xr.Dataset(coords={"y": transform.f + (np.arange(height) + 0.5) * transform.e,
                              "x": transform.c + (np.arange(width) + 0.5) * transform.a})
    grid = grid.rio.write_crs(attrs["crs_wkt"]).rio.write_transform(transform)
    moved = {}
    for name, var in scores.data_vars.items():
        data = da.asarray(var.data).rechunk(-1)
        ortho = data.map_blocks(_through_glt, gy, gx, dtype=var.dtype,
                                chunks=tuple((n,) for n in var.shape[:-2]) + ((height,), (width,)))
        chunk = cube_ds[CUBE].data.chunksize[1:]
        ortho = ortho.rechunk(tuple(-1 for _ in var.shape[:-2]) + chunk)
        moved[name] = (var.dims, ortho, var.attrs)
    coords = {k: v for k, v in scores.coords.items() if "y" not in v.dims and "x" not in v.dims
              and k != "spatial_ref"}
    out = xr.Dataset(moved, coords={**coords, "y": grid["y"], "x": grid["x"]}, attrs=scores.attrs)
    out.attrs["geometry"] = "orthorectified through the GLT (location/glt_x, glt_y)"
    return grid, out


def _through_glt(swath: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """``(..., rows, cols)`` swath map -> ``(..., ortho_y, ortho_x)`` grid map (NaN where the
    GLT is 0)."""
    out = np.full(swath.shape[:-2] + gx.shape, np.nan, dtype=swath.dtype)
    hit = (gx > 0) & (gy > 0)
    out[..., hit] = swath[..., gy[hit] - 1, gx[hit] - 1]
    return out


@dataclass
class BandSurvey:
    """Which source bands the cube keeps. ``dropped``: ``{source band index: reason}``;
    ``valid_pixels``: pixels valid in every kept band."""

    n_source: int
    dropped: dict
    valid_pixels: int

    @property
    def kept(self) -> list[int]:
        return [b for b in range(self.n_source) if b not in self.dropped]

    def attrs(self) -> dict:
        order = sorted(self.dropped)
        return {"source_bands": self.n_source, "dropped_bands": order,
                "dropped_band_reasons": [self.dropped[b] for b in order]}

    def summary(self) -> str | None:
        """One line on the bands left out, or None."""
        if not self.dropped:
            return None
        by_reason: dict = {}
        for b in sorted(self.dropped):
            by_reason.setdefault(self.dropped[b], []).append(b)
        parts = [f"{index_ranges(bands)} ({reason})" for reason, bands in by_reason.items()]
        return (f"{len(self.dropped)} of {self.n_source} bands left out of the cube: "
                + "; ".join(parts))


def index_ranges(indices) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2, 5"``."""
    out, run = [], []
    for i in sorted(indices):
        if run and i != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(i)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ", ".join(out)


def band_survey(source: SceneSource, drop_bands: str | None = None) -> BandSurvey:
    """Decide the bands to keep: those the product flags bad (``bbl``, ``good_wavelengths``),
    those ``drop_bands`` names, and those holding only nodata/NaN (one pass over the data, tile
    by tile on local threads: memory set by the source chunks). InputError when fewer than 2
    bands or no valid pixel remain, or when the source cannot be read."""
    n_source = source.cube.shape[0]
    dropped = dict(source.bad_bands)
    for b in parse_drop_bands(drop_bands, n_source, source.wavelength):
        dropped.setdefault(b, "--drop-bands")
    candidates = np.array([b not in dropped for b in range(n_source)])
    band_valid, invalid_hist = _count_valid(source, candidates)
    empty = [b for b in range(n_source) if candidates[b] and band_valid[b] == 0]
    what = "NaN" if source.nodata is None else f"the nodata value {source.nodata:g} or NaN"
    for b in empty:
        dropped[b] = f"every value is {what}"
    survey = BandSurvey(n_source, dropped, int(invalid_hist[len(empty)]))
    where = source.attrs.get("path", "the scene")
    if len(survey.kept) < 2:
        raise InputError(f"{where}: only {len(survey.kept)} of {n_source} bands hold valid values "
                         f"({survey.summary()}); a cube needs at least 2")
    if survey.valid_pixels == 0:
        raise InputError(f"{where}: no valid pixel: every pixel is {what} in at least one of the "
                         f"{len(survey.kept)} kept bands")
    return survey


def _count_valid(source: SceneSource, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(valid pixels per band (band,), histogram over pixels of their number of invalid
    candidate bands (n + 1,))``, summed over the source's chunks on local threads."""
    from hsad_scale.readers.geotiff import one_line

    pixels = da.asarray(source.cube)
    pixels = pixels.rechunk({0: -1})
    blocks = pixels.to_delayed().ravel()
    parts = [dask.delayed(_valid_counts)(b, source.nodata, candidates) for b in blocks]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            counts = dask.compute(*parts, scheduler="threads")
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        cause = e.__cause__ or e.__context__ or e
        raise InputError(f"cannot read {source.attrs.get('path', 'the scene')}: the data is "
                         f"truncated or corrupt ({one_line(cause, 200)})") from None
    band_valid = np.sum([c[0] for c in counts], axis=0)
    hist = np.sum([c[1] for c in counts], axis=0)
    return band_valid, hist


def _valid_counts(block: np.ndarray, nodata, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    block = np.asarray(block)
    if block.dtype.kind == "f":
        valid = np.isfinite(block)
    else:
        valid = np.ones(block.shape, bool)
    if nodata is not None and np.isfinite(nodata):
        valid &= block != nodata
    invalid = (~valid[candidates]).sum(axis=0)
    hist = np.bincount(invalid.ravel(), minlength=int(candidates.sum()) + 1)
    return valid.sum(axis=(1, 2)), hist


def parse_drop_bands(text: str | None, n_bands: int, wavelength=None) -> list[int]:
    """Source band indices that ``--drop-bands`` names: comma-separated indices (0-based) and
    ranges ``3-7`` (inclusive), and wavelength ranges in nm ``1350-1450nm`` (bands whose
    centre lies inside; needs wavelengths). InputError for anything else."""
    if not text:
        return []
    out = set()
    for part in str(text).split(","):
        item = part.strip().lower().replace(" ", "")
        if not item:
            continue
        is_nm = item.endswith("nm")
        body = item[:-2] if is_nm else item
        lo_text, sep, hi_text = body.partition("-")
        try:
            lo, hi = float(lo_text), float(hi_text if sep else lo_text)
        except ValueError:
            raise InputError(f"--drop-bands: {part.strip()!r} is not an index, a range 3-7 or a "
                             f"wavelength range 1350-1450nm") from None
        if hi < lo:
            raise InputError(f"--drop-bands: range {part.strip()!r} ends before it starts")
        if is_nm:
            if wavelength is None:
                raise InputError(f"--drop-bands {part.strip()}: the scene has no wavelengths in "
                                 f"nm; give band indices")
            w = np.asarray(wavelength)
            out.update(int(i) for i in np.flatnonzero((w >= lo) & (w <= hi)))
            continue
        if not (lo.is_integer() and hi.is_integer()) or lo < 0 or hi >= n_bands:
            raise InputError(f"--drop-bands: {part.strip()!r} is not a band index (or range) "
                             f"within 0-{n_bands - 1}")
        out.update(range(int(lo), int(hi) + 1))
    return sorted(out)


def _band_scaling(source: SceneSource, kept: list[int]):
    """Per-band (scale, offset) float32 vectors of the kept bands, or (None, None)."""
    if source.band_scale is None and source.band_offset is None:
        return None, None
    n = source.cube.shape[0]
    scale = np.ones(n) if source.band_scale is None else np.asarray(source.band_scale, np.float64)
    offset = np.zeros(n) if source.band_offset is None else np.asarray(source.band_offset, np.float64)
    return scale[kept], offset[kept]


def _to_float32(block: np.ndarray, nodata, scale=None, offset=None) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # out-of-range values become inf: invalid
        out = block.astype(np.float32)
        if nodata is not None and np.isfinite(nodata):
            out[block == nodata] = np.nan
        if scale is not None:
            out *= scale.astype(np.float32)[:, None, None]
            out += offset.astype(np.float32)[:, None, None]
    out[~np.isfinite(out)] = np.nan
    # a pixel is valid only when every band is: NaN in one band invalidates the spectrum
    out[:, np.isnan(out).any(axis=0)] = np.nan
    return out


def _coords(source: SceneSource, height: int, width: int) -> dict:
    """Pixel-centre map coordinates of a north-up transform; pixel indices when there is no
    transform or it is rotated/sheared (then no 1-D coordinate is a pixel centre: the full
    affine is kept in ``spatial_ref`` and maps are written with it)."""
    if source.transform is None or not source.transform.is_rectilinear \
            or source.transform.b != 0 or source.transform.d != 0:
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
    band_axis: str | None = None,
    drop_bands: str | None = None,
    swath: bool = False,
    chunk: int = DEFAULT_CHUNK,
    compression: str = "none",
    overwrite: bool = False,
) -> Path:
    """Read any supported scene and write it to ``dest`` as a cube store, in pieces.

    Everything is checked before anything is written (InputError otherwise); the readers'
    decisions and the bands left out are printed as ``[hsad] warning:`` lines and recorded in
    the cube's attrs."""
    if chunk < 1:
        raise InputError(f"--chunk must be positive, got {chunk}")
    ds = read_dataset(src, gt=gt, cube_key=cube_key, gt_key=gt_key, band_axis=band_axis,
                      drop_bands=drop_bands, swath=swath, chunk=chunk)
    for line in ds[CUBE].attrs.get("hsad_warnings", []):
        print(f"[hsad] warning: {line}", file=sys.stderr)
    return write_cube(ds, dest, compression=compression, overwrite=overwrite)


def read_dataset(src, *, gt=None, cube_key=None, gt_key=None, band_axis=None, drop_bands=None,
                 swath: bool = False, chunk: int = DEFAULT_CHUNK) -> xr.Dataset:
    """The lazy cube Dataset of a scene file, checked (:func:`band_survey`), nothing written;
    the bands left out are one more line of ``hsad_warnings``. ``swath``: drop a GLT (maps
    stay in swath geometry)."""
    from hsad_scale.readers.dispatch import read_scene

    source = read_scene(src, cube_key=cube_key, gt_key=gt_key, gt_path=gt, band_axis=band_axis)
    if source.glt is not None and (swath or source.ground_truth is not None):
        if not swath:
            source.notes.append("the ground truth is in swath geometry: maps are kept in swath "
                                "geometry, not moved through the GLT")
        source.glt = None
    survey = band_survey(source, drop_bands)
    if survey.summary():
        source.notes.append(survey.summary())
    ds = scene_dataset(source, chunk, survey=survey)
    ds.attrs.update(source=str(Path(src).name))
    return ds


def write_cube(ds: xr.Dataset, dest: str | Path, *, compression: str = "none", overwrite: bool = False) -> Path:
    """Write a cube Dataset to a Zarr store atomically, chunk by chunk (bounded memory)."""
    if compression not in COMPRESSIONS:
        raise InputError(f"unknown compression {compression!r}; choose from {', '.join(COMPRESSIONS)}")
    n_bands = ds.sizes["band"]
    chunks = (n_bands, *ds[CUBE].data.chunksize[1:])
    kept = {k: v for k, v in ds[CUBE].encoding.items() if k == "grid_mapping"}  # rioxarray's CRS link
    # every chunk written, even one of invalid (NaN = fill value) pixels only: a missing chunk
    # file then always means an incomplete store (chunk_reader refuses it)
    encoding = {CUBE: {**kept, "chunks": chunks, "compressors": _compressors(compression), "write_empty_chunks": True}}
    list_coordinates(ds)
    with atomic_path(dest, overwrite) as tmp:
        with warnings.catch_warnings():  # Zarr 3: consolidated metadata is not in its spec yet
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            job = ds.to_zarr(tmp, encoding=encoding, compute=False, consolidated=True)
        # local threads: sources are files on this machine, and h5py/mat readers need no pickling
        with progress.local_tasks(f"writing {Path(dest).name}"):
            dask.compute(job, scheduler="threads")
    return Path(dest)


def store_bands(ds: xr.Dataset, *, drop_bands: str | None = None, band_axis=None, swath: bool = False,
                **_other) -> xr.Dataset:
    """A cube store's Dataset without the bands ``drop_bands`` names (indices of the store's
    bands, or nm ranges), recorded in the attrs; InputError for the options that only apply to
    scene files (``band_axis``, ``swath``) or when fewer than 2 bands would remain."""
    if band_axis is not None or swath:
        raise InputError("--band-axis and --swath apply to scene files; the source is already a cube store")
    if not drop_bands:
        return ds
    wavelength = ds["wavelength"].values if "wavelength" in ds.coords else None
    drop = parse_drop_bands(drop_bands, ds.sizes["band"], wavelength)
    kept = [b for b in range(ds.sizes["band"]) if b not in drop]
    if len(kept) < 2:
        raise InputError(f"--drop-bands {drop_bands} leaves {len(kept)} band(s); a cube needs at least 2")
    out = ds.isel(band=kept)
    attrs = dict(ds[CUBE].attrs)
    attrs["hsad_warnings"] = list(attrs.get("hsad_warnings", [])) + [
        f"--drop-bands: store bands {index_ranges(drop)} left out"]
    out[CUBE].attrs = attrs
    return out


def ingest_record(ds: xr.Dataset) -> dict:
    """What ingest decided about a cube store, for ``run.json``: ``{"ingest": {source_bands,
    dropped_bands, dropped_band_reasons, warnings}}`` (empty for a store without them)."""
    attrs = ds[CUBE].attrs
    keys = ("source_bands", "dropped_bands", "dropped_band_reasons", "band_axis_evidence")
    record = {k: attrs[k] for k in keys if k in attrs}
    if attrs.get("hsad_warnings"):
        record["warnings"] = list(attrs["hsad_warnings"])
    return {"ingest": record} if record else {}


def list_coordinates(ds: xr.Dataset) -> xr.Dataset:
    """Name every non-index coordinate (``spatial_ref``, ``wavelength``) in each data variable's
    CF ``coordinates`` encoding, so that a plain ``xr.open_zarr`` opens ``spatial_ref`` as a
    coordinate and rioxarray finds the CRS and transform (xarray leaves a coordinate that a
    ``grid_mapping`` attribute names out of ``coordinates``). Returns ``ds`` (changed in place)."""
    names = " ".join(str(c) for c in ds.coords if c not in ds.dims)
    if names:
        for var in ds.data_vars.values():
            var.encoding.setdefault("coordinates", names)
    return ds


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
