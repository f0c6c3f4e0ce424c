"""NetCDF / HDF5 scenes through xarray (h5netcdf, then netCDF4), read lazily.

EMIT L1B/L2A layout: ``reflectance(downtrack, crosstrack, bands)`` with ``_FillValue`` -9999
and wavelengths (nm) in group ``sensor_band_parameters``, variable ``wavelengths``. Generic
files: the single 3-D data variable (or ``cube_key``); the band dimension found by name, else
the smallest; the two others kept in source order as (y, x) unless named like y/x.
Values are not decoded: the source dtype is kept, ``_FillValue``/``missing_value`` is nodata.
"""

from __future__ import annotations

import re

import numpy as np
import xarray as xr
from affine import Affine

from hsad_scale.errors import InputError
from hsad_scale.readers import SceneSource
from hsad_scale.readers.geotiff import existing_file, one_line, wavelength_nm
from hsad_scale.readers.mat import GT_NAMES

BAND_DIM = re.compile(r"band|wave|spectr|channel|^wl$|^lambda$", re.IGNORECASE)
Y_NAMES = {"y", "lat", "latitude", "row", "rows", "line", "lines", "downtrack", "along_track",
           "northing", "nrows"}
X_NAMES = {"x", "lon", "longitude", "col", "cols", "column", "columns", "sample", "samples",
           "crosstrack", "cross_track", "easting", "ncols"}
WAVELENGTH_NAMES = ("wavelengths", "wavelength", "wl", "center_wavelength", "wavelength_nm")
BAND_GROUPS = ("sensor_band_parameters",)
ENGINES = ("h5netcdf", "netcdf4")


def read_netcdf(path, cube_key: str | None = None, gt_key: str | None = None, *,
                band_dim: str | None = None) -> SceneSource:
    """NetCDF/HDF5 scene as a lazy ``(band, y, x)`` dask cube in the stored dtype.

    Wavelengths float64 nm (EMIT group or a coordinate/variable on the band dimension, units
    from its ``units`` attribute); ground truth: a 2-D ``(y, x)`` variable named like ``gt``
    (or ``gt_key``); CRS/transform only when the variable has a CF ``grid_mapping``.
    """
    p = existing_file(path)
    ds = _open(p)
    name = _cube_name(ds, cube_key, p)
    var = ds[name]
    bdim = _band_dim(var, band_dim, p)
    if var.sizes[bdim] < 2:
        raise InputError(f"'{name}' in {p} has one band: a 2-D (single-band) image is not a cube")
    ydim, xdim = _spatial_dims(var, bdim)
    cube = var.chunk({bdim: -1, ydim: "auto", xdim: "auto"}).transpose(bdim, ydim, xdim).data
    crs, transform = _georef(ds, var, ydim, xdim)
    nodata = var.attrs.get("_FillValue", var.attrs.get("missing_value"))
    return SceneSource(
        cube=cube,
        ground_truth=_ground_truth(ds, gt_key, ydim, xdim, p),
        wavelength=_wavelength(p, ds, var, bdim),
        crs=crs, transform=transform,
        nodata=None if nodata is None else np.asarray(nodata).ravel()[0].item(),
        attrs={"format": "netcdf", "path": str(p), "cube_key": name, "dims": (bdim, ydim, xdim),
               **{k: var.attrs[k] for k in ("scale_factor", "add_offset", "units")
                  if k in var.attrs}},
    )


def _open(path, group: str | None = None) -> xr.Dataset:
    """The root (or ``group``) of the file, undecoded and lazy; InputError when unreadable."""
    errors = []
    for engine in ENGINES:
        extra = {"phony_dims": "sort"} if engine == "h5netcdf" else {}
        try:
            return xr.open_dataset(path, engine=engine, group=group, mask_and_scale=False,
                                   decode_times=False, decode_coords=False, **extra)
        except Exception as e:  # each engine has its own exception types for foreign files
            errors.append(f"{engine}: {one_line(e, 150)}")
    where = "" if group is None else f" group {group}"
    raise InputError(f"cannot read {path}{where} as NetCDF/HDF5 ({'; '.join(errors)})")


def _cube_name(ds: xr.Dataset, key: str | None, path) -> str:
    """``key`` checked, else the only 3-D numeric data variable."""
    if key is not None:
        if key not in ds.variables:
            raise InputError(f"variable '{key}' not found in {path}; variables: {_listing(ds)}")
        if ds[key].ndim != 3:
            raise InputError(f"'{key}' in {path} has dims {ds[key].dims}: a 2-D (single-band) "
                             f"image is not a cube" if ds[key].ndim == 2 else
                             f"'{key}' in {path} has dims {ds[key].dims}, expected 3")
        return key
    cubes = [k for k, v in ds.data_vars.items() if v.ndim == 3 and v.dtype.kind in "biuf"]
    if len(cubes) != 1:
        what = f"several 3-D variables ({', '.join(cubes)})" if cubes else "no 3-D data variable"
        raise InputError(f"{what} in {path}; pass cube_key (variables: {_listing(ds)})")
    return cubes[0]


def _band_dim(var: xr.DataArray, band_dim: str | None, path) -> str:
    """The band dimension: ``band_dim``, else the one named like a band, else the smallest."""
    if band_dim is not None:
        if band_dim not in var.dims:
            raise InputError(f"band_dim '{band_dim}' is not a dimension of {var.name} {var.dims}")
        return band_dim
    named = [d for d in var.dims if BAND_DIM.search(str(d))]
    if len(named) == 1:
        return named[0]
    sizes = sorted(var.sizes.items(), key=lambda kv: kv[1])
    if sizes[0][1] == sizes[1][1]:
        raise InputError(f"cannot tell the band dimension of {var.name} {dict(var.sizes)} in "
                         f"{path}; name it band/wavelength or pass band_dim")
    return sizes[0][0]


def _spatial_dims(var: xr.DataArray, bdim: str) -> tuple[str, str]:
    """``(y, x)`` dims: by name when named like y and x, else in the variable's order."""
    first, second = (d for d in var.dims if d != bdim)
    if str(first).lower() in X_NAMES and str(second).lower() in Y_NAMES:
        return second, first
    return first, second


def _wavelength(path, ds: xr.Dataset, var: xr.DataArray, bdim: str) -> np.ndarray | None:
    """Wavelengths (nm) from the EMIT band group, else a variable/coordinate along ``bdim``."""
    n = var.sizes[bdim]
    candidates = [ds[k] for k in WAVELENGTH_NAMES if k in ds.variables]
    if bdim in ds.variables and ("units" in ds[bdim].attrs or "wave" in str(bdim).lower()):
        candidates.append(ds[bdim])  # the band coordinate, when it looks like wavelengths
    for group in BAND_GROUPS:
        try:
            band_ds = _open(path, group)
        except InputError:
            continue
        candidates = [band_ds[k] for k in WAVELENGTH_NAMES if k in band_ds.variables] + candidates
    for w in candidates:
        if w.ndim == 1 and w.size == n and w.dtype.kind in "iuf":
            return wavelength_nm(w.values, w.attrs.get("units"))
    return None


def _ground_truth(ds: xr.Dataset, key: str | None, ydim: str, xdim: str, path) -> np.ndarray | None:
    """``key`` (checked) or a ``(y, x)`` variable with a ground-truth name, as numpy ``(y, x)``."""
    shape = (ds.sizes[ydim], ds.sizes[xdim])
    if key is not None:
        if key not in ds.variables:
            raise InputError(f"variable '{key}' not found in {path}; variables: {_listing(ds)}")
        gt = _plane(ds[key], ydim, xdim, shape)
        if gt is None:
            raise InputError(f"ground truth '{key}' in {path} has dims {dict(ds[key].sizes)}, "
                             f"expected ({ydim}: {shape[0]}, {xdim}: {shape[1]})")
        return gt
    lower = {str(k).lower(): k for k in ds.variables}
    name = next((lower[n] for n in GT_NAMES if n in lower), None)
    return None if name is None else _plane(ds[name], ydim, xdim, shape)


def _plane(v: xr.DataArray, ydim: str, xdim: str, shape: tuple) -> np.ndarray | None:
    """``v`` as numpy ``(y, x)`` when it has the cube's spatial dims or shape, else None."""
    if set(v.dims) == {ydim, xdim}:
        return v.transpose(ydim, xdim).values
    return v.values if v.shape == shape else None


def _georef(ds: xr.Dataset, var: xr.DataArray, ydim: str, xdim: str):
    """``(crs WKT, Affine)`` from a CF ``grid_mapping`` (its WKT and GDAL ``GeoTransform``, or
    regular 1-D y/x coordinates), else ``(None, None)``."""
    gm = ds.variables.get(var.attrs.get("grid_mapping", ""))
    if gm is None:
        return None, None
    crs = gm.attrs.get("crs_wkt") or gm.attrs.get("spatial_ref")
    if "GeoTransform" in gm.attrs:
        return crs, Affine.from_gdal(*(float(v) for v in str(gm.attrs["GeoTransform"]).split()))
    if ydim in ds.variables and xdim in ds.variables:
        y, x = ds[ydim].values.astype(float), ds[xdim].values.astype(float)
        if y.size > 1 and x.size > 1 and _regular(y) and _regular(x):
            dy, dx = y[1] - y[0], x[1] - x[0]
            return crs, Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)
    return crs, None


def _regular(c: np.ndarray) -> bool:
    """Whether 1-D coordinates are evenly spaced."""
    step = np.diff(c)
    return bool(np.allclose(step, step[0], rtol=1e-6, atol=0))


def _listing(ds: xr.Dataset) -> str:
    """``name(dims), ...`` for messages."""
    return ", ".join(f"{k}{tuple(v.dims)}" for k, v in ds.variables.items()) or "none"
