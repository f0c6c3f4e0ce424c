"""NetCDF / HDF5 scenes through xarray (h5netcdf, then netCDF4), read lazily.

EMIT L1B/L2A layout: ``reflectance(downtrack, crosstrack, bands)`` with ``_FillValue`` -9999
and wavelengths (nm) in group ``sensor_band_parameters``, variable ``wavelengths``. Generic
files: the single 3-D data variable (or ``cube_key``); the band dimension found by name, else
the smallest; the two others kept in source order as (y, x) unless named like y/x.
Values are not decoded: the source dtype is kept, ``_FillValue``/``missing_value`` is nodata.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import xarray as xr
from affine import Affine

from hsad_scale.errors import InputError
from hsad_scale.readers import SceneSource
from hsad_scale.readers.geotiff import existing_file, one_line, wavelength_nm, wavelength_note
from hsad_scale.readers.layout import decide_band_axis, user_band_axis
from hsad_scale.readers.mat import GT_HINTS, GT_NAMES

BAND_DIM = re.compile(r"band|wave|spectr|channel|^wl$|^lambda$", re.IGNORECASE)
Y_NAMES = {"y", "lat", "latitude", "row", "rows", "line", "lines", "downtrack", "along_track",
           "northing", "nrows"}
X_NAMES = {"x", "lon", "longitude", "col", "cols", "column", "columns", "sample", "samples",
           "crosstrack", "cross_track", "easting", "ncols"}
WAVELENGTH_NAMES = ("wavelengths", "wavelength", "wl", "center_wavelength", "wavelength_nm")
BAND_GROUPS = ("sensor_band_parameters",)
ENGINES = ("h5netcdf", "netcdf4")


def read_netcdf(path, cube_key: str | None = None, gt_key: str | None = None, *,
                band_dim=None, truth_shape: tuple | None = None) -> SceneSource:
    """NetCDF/HDF5 scene as a lazy ``(band, y, x)`` dask cube in the stored dtype.

    ``cube_key`` names the variable, or an HDF5 path ``group/.../variable``; by default the
    only 3-D numeric variable of the root (InputError when there are several). The band
    dimension comes from evidence (:mod:`hsad_scale.readers.layout`): dimension names, the
    ground truth's shape, a wavelength vector's length, else ``band_dim`` (a dim name or
    first/middle/last). Wavelengths float64 nm (EMIT ``sensor_band_parameters`` group or a
    variable/coordinate along the band dimension, units from its ``units`` attribute; EMIT
    ``good_wavelengths`` = 0 marks bad bands); ground truth: a 2-D ``(y, x)`` variable named
    like ``gt`` (or ``gt_key``); CRS/transform only when the variable has a CF ``grid_mapping``.
    """
    p = existing_file(path)
    check_classic_size(p)
    cube_key = cube_key or _only_hdf5_cube(p)
    group, key = _split_key(cube_key)
    ds = _open(p, group)
    name = _cube_name(ds, key, p)
    var = _without_singletons(ds[name])
    where = f"'{cube_key or name}' in {p}"
    truths = _truth_shapes(ds, var, gt_key, truth_shape, p)
    waves = _wavelength_sizes(p, ds, var)
    prisma = _prisma_bands(p, cube_key)
    if prisma is not None:
        waves[prisma["list"]] = prisma["wavelength"].size
    axis, evidence = decide_band_axis(var.shape, where, band_axis=user_band_axis(band_dim, var.dims),
                                      truth_shapes=truths, wavelength_sizes=waves,
                                      named_axes=_named_axes(var))
    bdim = var.dims[axis]
    if var.sizes[bdim] < 2:
        raise InputError(f"'{name}' in {p} has one band: a 2-D (single-band) image is not a cube")
    ydim, xdim = _spatial_dims(var, bdim)
    cube = var.chunk({bdim: -1, ydim: "auto", xdim: "auto"}).transpose(bdim, ydim, xdim).data
    crs, transform = _georef(ds, var, ydim, xdim)
    nodata = var.attrs.get("_FillValue", var.attrs.get("missing_value"))
    notes = []
    source = SceneSource(
        cube=cube,
        ground_truth=None if truth_shape is not None else _ground_truth(ds, gt_key, ydim, xdim, p),
        wavelength=_wavelength(p, ds, var, bdim, notes),
        crs=crs, transform=transform,
        nodata=None if nodata is None else np.asarray(nodata).ravel()[0].item(),
        bad_bands=_good_wavelengths(p, var.sizes[bdim]),
        notes=notes,
        attrs={"format": "netcdf", "path": str(p), "cube_key": cube_key or name,
               "dims": (bdim, ydim, xdim), "band_axis_evidence": evidence,
               **{k: var.attrs[k] for k in ("scale_factor", "add_offset", "units")
                  if k in var.attrs}},
    )
    source.band_scale, source.band_offset = _cf_scale(var, var.sizes[bdim])
    source.glt = _glt(p, ds, (var.sizes[ydim], var.sizes[xdim]))
    if prisma is not None and prisma["wavelength"].size == var.sizes[bdim]:
        _apply_prisma(source, prisma)
    return source


def check_classic_size(path) -> None:
    """InputError when a classic NetCDF file (CDF-1/CDF-2) is shorter than its header says:
    the netCDF library reads the missing part as fill values, silently. The header is parsed
    by scipy with the file memory-mapped (no data read): a variable's bytes beyond the end of
    the file fail to map."""
    import warnings

    import scipy.io

    with open(path, "rb") as f:
        if f.read(4) not in (b"CDF\x01", b"CDF\x02"):
            return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns when mapped arrays outlive the file
            scipy.io.netcdf_file(path, "r", mmap=True).close()
    except ValueError as e:
        raise InputError(f"NetCDF file {path} is smaller than its header describes (truncated "
                         f"download or copy?): {one_line(e, 120)}") from None
    except (TypeError, OSError, IndexError):
        return  # a header scipy does not parse: the netCDF library says what is wrong


def _only_hdf5_cube(path) -> str | None:
    """The HDF5 path of the only 3-D numeric dataset of a file whose root holds none (HDF-EOS
    products such as PRISMA keep cubes in groups); None when the root has one or the file is
    not HDF5; InputError listing the paths when there are several."""
    import h5py

    try:
        if not h5py.is_hdf5(str(path)):
            return None
        found = []
        with h5py.File(path, "r") as f:
            if any(isinstance(v, h5py.Dataset) and v.ndim == 3 for v in f.values()):
                return None
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset)
                         and obj.ndim == 3 and obj.dtype.kind in "biuf" else None)
    except OSError:
        return None  # unreadable: _open says why
    if len(found) > 1:
        raise InputError(f"several 3-D datasets in {path} ({', '.join(found)}): pass --cube-key "
                         f"with one of these paths")
    return found[0] if found else None


#: PRISMA L2 root attributes per cube: wavelength list, its flags, reflectance scale min/max.
PRISMA_ATTRS = {"vnir": ("List_Cw_Vnir", "List_Cw_Vnir_Flags", "L2ScaleVnirMin", "L2ScaleVnirMax"),
                "swir": ("List_Cw_Swir", "List_Cw_Swir_Flags", "L2ScaleSwirMin", "L2ScaleSwirMax")}


def _prisma_bands(path, cube_key: str | None) -> dict | None:
    """PRISMA L2 band metadata of the VNIR or SWIR cube named by ``cube_key`` (root
    attributes ``List_Cw_Vnir``, ``List_Cw_Vnir_Flags``, ``L2ScaleVnirMin``/``Max``, and the
    SWIR ones), or None for other files."""
    import h5py

    if cube_key is None:
        return None
    kind = "vnir" if "vnir" in cube_key.lower() else "swir" if "swir" in cube_key.lower() else None
    if kind is None:
        return None
    wl_name, flag_name, lo_name, hi_name = PRISMA_ATTRS[kind]
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except OSError:
        return None
    if wl_name not in attrs:
        return None
    out = {"list": wl_name, "wavelength": np.asarray(attrs[wl_name], dtype=np.float64).ravel()}
    if flag_name in attrs:
        out["flags"] = (flag_name, np.asarray(attrs[flag_name]).ravel())
    if lo_name in attrs and hi_name in attrs:
        out["scale"] = (float(np.ravel(attrs[lo_name])[0]), float(np.ravel(attrs[hi_name])[0]))
    return out


def _apply_prisma(source: SceneSource, prisma: dict) -> None:
    """Wavelengths (nm), flagged-off bands and the L2 reflectance scaling of a PRISMA cube:
    reflectance = DN / 65535 x (max - min) + min (PRISMA Product Specification)."""
    w = prisma["wavelength"]
    if "flags" in prisma:
        name, flags = prisma["flags"]
        if flags.size == w.size:
            source.bad_bands.update({int(i): f"{name} = 0 (PRISMA)" for i in np.flatnonzero(flags == 0)})
    usable = w > 0
    if usable.all():
        source.wavelength = w
    else:  # flagged-off bands carry wavelength 0: the rest is still a wavelength in nm
        for i in np.flatnonzero(~usable):
            source.bad_bands.setdefault(int(i), f"{prisma['list']} = 0 (PRISMA)")
        source.wavelength = np.where(usable, w, np.nan)
    if "scale" in prisma:
        lo, hi = prisma["scale"]
        n = w.size
        source.band_scale, source.band_offset = np.full(n, (hi - lo) / 65535.0), np.full(n, lo)


def _glt(path, ds: xr.Dataset, swath_shape: tuple):
    """EMIT's geometry lookup table (group ``location``: ``glt_x``, ``glt_y``; root attributes
    ``geotransform`` (GDAL order) and ``spatial_ref`` (WKT)), or None; InputError when it
    points outside the swath."""
    from hsad_scale.readers import GeoLookupTable

    loc = _try_open(path, "location")
    if loc is None or "glt_x" not in loc.variables or "glt_y" not in loc.variables:
        return None
    if "geotransform" not in ds.attrs or "spatial_ref" not in ds.attrs:
        return None
    gx = np.asarray(loc["glt_x"].values).astype(np.int64)
    gy = np.asarray(loc["glt_y"].values).astype(np.int64)
    fill = [loc[k].attrs.get("_FillValue") for k in ("glt_x", "glt_y")]
    for f, g in zip(fill, (gx, gy)):
        if f is not None:
            g[g == int(np.asarray(f).ravel()[0])] = 0
    gx[gx < 0] = 0
    gy[gy < 0] = 0
    if gx.shape != gy.shape or gx.ndim != 2:
        raise InputError(f"{path}: location/glt_x {gx.shape} and glt_y {gy.shape} are not one 2-D grid")
    if gx.max() > swath_shape[1] or gy.max() > swath_shape[0]:
        raise InputError(f"{path}: the GLT points outside the swath {swath_shape} (glt_y up to "
                         f"{gy.max()}, glt_x up to {gx.max()})")
    if not np.any((gx > 0) & (gy > 0)):
        raise InputError(f"{path}: the GLT (location/glt_x, glt_y) maps no pixel")
    t = [float(v) for v in np.asarray(ds.attrs["geotransform"]).ravel()]
    return GeoLookupTable(x=gx.astype(np.int32), y=gy.astype(np.int32),
                          crs=str(ds.attrs["spatial_ref"]), transform=Affine.from_gdal(*t))


def _split_key(cube_key: str | None) -> tuple[str | None, str | None]:
    """``(group, variable)`` of a ``cube_key`` that may be an HDF5 path (``a/b/VNIR_Cube``)."""
    if cube_key is None or "/" not in cube_key.strip("/"):
        return None, None if cube_key is None else cube_key.strip("/")
    group, _, key = cube_key.strip("/").rpartition("/")
    return group, key


def _cf_scale(var: xr.DataArray, n_bands: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """CF ``scale_factor``/``add_offset`` as per-band float64 vectors, or (None, None)."""
    if "scale_factor" not in var.attrs and "add_offset" not in var.attrs:
        return None, None
    scale = float(np.asarray(var.attrs.get("scale_factor", 1.0)).ravel()[0])
    offset = float(np.asarray(var.attrs.get("add_offset", 0.0)).ravel()[0])
    return np.full(n_bands, scale), np.full(n_bands, offset)


def _named_axes(var: xr.DataArray) -> dict:
    """``{axis: why}`` of the axes that dimension names mark as the band axis."""
    dims = [str(d) for d in var.dims]
    named = {i: f"dimension '{d}'" for i, d in enumerate(dims) if BAND_DIM.search(d)}
    for i in range(3):
        others = [d.lower() for j, d in enumerate(dims) if j != i]
        if any(o in Y_NAMES for o in others) and any(o in X_NAMES for o in others):
            named.setdefault(i, f"dimensions {', '.join(dims[j] for j in range(3) if j != i)} are y and x")
    return named


def _truth_shapes(ds: xr.Dataset, var: xr.DataArray, gt_key, truth_shape, path) -> dict:
    """Ground-truth candidates ``{name: shape in the cube's axis order}``."""
    if truth_shape is not None:
        return {"--gt": tuple(truth_shape)}
    if gt_key is not None:
        if gt_key not in ds.variables:
            raise InputError(f"variable '{gt_key}' not found in {path}; variables: {_listing(ds)}")
        names = [gt_key]
    else:
        names = [k for k in ds.variables if k != var.name and
                 (str(k).lower() in GT_NAMES or any(h in str(k).lower() for h in GT_HINTS))]
    out = {}
    for k in names:
        v = _squeezed(ds[k])
        if v.ndim != 2 or min(v.shape) < 2:
            if gt_key is not None:
                raise InputError(f"ground truth '{k}' in {path} has dims {dict(v.sizes)}, expected 2-D (y, x)")
            continue
        if set(v.dims) <= set(var.dims):  # shared dims: its shape in the cube's order
            out[str(k)] = tuple(v.sizes[d] for d in var.dims if d in v.dims)
        else:
            out[str(k)] = tuple(v.shape)
    return out


def _wavelength_sizes(path, ds: xr.Dataset, var: xr.DataArray) -> dict:
    """``{name: length}`` of 1-D wavelength variables (root or EMIT band group)."""
    sizes = {k: ds[k].size for k in WAVELENGTH_NAMES if k in ds.variables and ds[k].ndim == 1}
    for group in BAND_GROUPS:
        band_ds = _try_open(path, group)
        if band_ds is not None:
            sizes.update({f"{group}/{k}": band_ds[k].size for k in WAVELENGTH_NAMES
                          if k in band_ds.variables and band_ds[k].ndim == 1})
    return sizes


def _good_wavelengths(path, n_bands: int) -> dict:
    """``{band index: reason}`` of EMIT's ``good_wavelengths`` = 0 (bands it flags bad)."""
    band_ds = _try_open(path, "sensor_band_parameters")
    if band_ds is None or "good_wavelengths" not in band_ds.variables:
        return {}
    good = np.asarray(band_ds["good_wavelengths"].values).ravel()
    if good.size != n_bands:
        return {}
    return {int(i): "good_wavelengths = 0 (EMIT sensor_band_parameters)" for i in np.flatnonzero(good == 0)}


def _try_open(path, group: str):
    """The group of the file, or None when it has none of that name."""
    try:
        with open(path, "rb") as f:
            if not f.read(8).startswith(b"\x89HDF"):
                return None
        import h5py

        with h5py.File(path, "r") as f:
            if group not in f:
                return None
        return _open(path, group)
    except (OSError, InputError):
        return None


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
        if ds[key].dtype.kind not in "biuf":
            raise InputError(f"'{key}' in {path} holds {ds[key].dtype} values, not real numbers")
        if _without_singletons(ds[key]).ndim != 3:
            raise InputError(f"'{key}' in {path} has dims {ds[key].dims}: a 2-D (single-band) "
                             f"image is not a cube" if ds[key].ndim == 2 else
                             f"'{key}' in {path} has dims {ds[key].dims}, expected 3")
        return key
    cubes = [k for k, v in ds.data_vars.items() if _without_singletons(v).ndim == 3 and v.dtype.kind in "biuf"
             and not (_squeezed(v).ndim == 2 and any(h in str(k).lower() for h in (*GT_NAMES, *GT_HINTS)))]
    complex_cubes = [k for k, v in ds.data_vars.items() if v.ndim == 3 and v.dtype.kind == "c"]
    if not cubes and complex_cubes:
        raise InputError(f"'{complex_cubes[0]}' in {path} holds complex values: not reflectance or "
                         f"radiance (take the magnitude or real part first)")
    if len(cubes) != 1:
        what = f"several 3-D variables ({', '.join(cubes)})" if cubes else "no 3-D data variable"
        raise InputError(f"{what} in {path}; pass cube_key (variables: {_listing(ds)})")
    return cubes[0]


def _spatial_dims(var: xr.DataArray, bdim: str) -> tuple[str, str]:
    """``(y, x)`` dims: by name when named like y and x, else in the variable's order."""
    first, second = (d for d in var.dims if d != bdim)
    if str(first).lower() in X_NAMES and str(second).lower() in Y_NAMES:
        return second, first
    return first, second


def _wavelength(path, ds: xr.Dataset, var: xr.DataArray, bdim: str, notes: list) -> np.ndarray | None:
    """Wavelengths (nm) from the EMIT band group, else a variable/coordinate along ``bdim``;
    None (with a line in ``notes``) when its values or units are not wavelengths."""
    n = var.sizes[bdim]
    candidates = [ds[k] for k in WAVELENGTH_NAMES if k in ds.variables]
    if bdim in ds.variables and ("units" in ds[bdim].attrs or "wave" in str(bdim).lower()):
        candidates.append(ds[bdim])  # the band coordinate, when it looks like wavelengths
    for group in BAND_GROUPS:
        band_ds = _try_open(path, group)
        if band_ds is not None:
            candidates = [band_ds[k] for k in WAVELENGTH_NAMES if k in band_ds.variables] + candidates
    for w in candidates:
        if w.ndim == 1 and w.size == n and w.dtype.kind in "iuf":
            units = w.attrs.get("units")
            nm = wavelength_nm(w.values, units)
            if nm is None:
                notes.append(wavelength_note(w.values, units, f"'{w.name}' in {Path(path).name}"))
            return nm
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
    names = [lower[n] for n in GT_NAMES if n in lower]
    names += [k for k in ds.variables if k not in names and any(h in str(k).lower() for h in GT_HINTS)]
    for name in names:
        gt = _plane(ds[name], ydim, xdim, shape)
        if gt is not None:
            return gt
    return None


def _without_singletons(v: xr.DataArray) -> xr.DataArray:
    """A variable of more than 3 dims without its length-1 dims (``time``, ``z``): CF
    products store one acquisition as ``(time=1, y, x, band)``."""
    if v.ndim <= 3:
        return v
    return v.squeeze([d for d in v.dims if v.sizes[d] == 1], drop=True)


def _squeezed(v: xr.DataArray) -> xr.DataArray:
    """A 3-D variable with one singleton axis ((1, rows, cols) from PyTorch code) as 2-D."""
    return v.squeeze() if v.ndim == 3 and sum(n == 1 for n in v.shape) == 1 else v


def _plane(v: xr.DataArray, ydim: str, xdim: str, shape: tuple) -> np.ndarray | None:
    """``v`` as numpy ``(y, x)`` when it has the cube's spatial dims or shape, else None."""
    v = _squeezed(v)
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
