"""Background region: a raster on the scene's grid that restricts the STATISTICS of the
statistical detectors (RX's mean and covariance, UTD and RXD-UTD's, local RX's global
covariance, cluster RX's k-means sample and classes) to its pixels; every pixel is still
scored. ArcGIS's "Detect Image Anomalies" offers the same (a background region).

A mask file is a single-band GeoTIFF (``.tif``/``.tiff``) or a ``.npy`` array ``(y, x)`` of
the cube's spatial shape: nonzero (and finite) = a background pixel; or polygons (GeoJSON,
GeoPackage, Shapefile, GeoParquet) in the scene's CRS (reprojected when the file names
another), burnt onto the cube's grid by :func:`rasterio.features.rasterize` (a pixel is
background when its centre is inside a polygon). The AE/VAE are not restricted (statistical
detectors only).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hsad_scale.errors import InputError


#: Suffixes of polygon files (read with geopandas).
POLYGON_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".parquet")


def is_polygons(path) -> bool:
    return isinstance(path, (str, Path)) and Path(path).suffix.lower() in POLYGON_SUFFIXES


def check_file(path: str | Path) -> np.ndarray | None:
    """What can be checked of a mask file before the cube is read: the raster mask
    (:func:`read_mask`), or None for a polygon file (it needs the cube's grid); InputError
    for a missing file."""
    if is_polygons(path):
        if not Path(path).is_file():
            raise InputError(f"background mask {path} does not exist")
        return None
    return read_mask(path)


def rasterize_polygons(path: str | Path, cube) -> np.ndarray:
    """``(y, x)`` bool: the pixels of ``cube`` (DataArray with a CRS and transform, rioxarray)
    whose centres lie inside the polygons of ``path``. InputError for a cube without a CRS,
    an unreadable file, no polygon or no pixel inside."""
    import geopandas
    import rioxarray  # noqa: F401  (the .rio accessor)
    from rasterio.features import rasterize

    p = Path(path)
    if cube.rio.crs is None:
        raise InputError(f"background mask {p.name}: polygons need a georeferenced cube (this one has no CRS): "
                         "give a raster mask (GeoTIFF or .npy) instead")
    try:
        frame = geopandas.read_parquet(p) if p.suffix.lower() == ".parquet" else geopandas.read_file(p)
    except Exception as exc:
        raise InputError(f"background mask {p} is not a readable polygon file: {str(exc).splitlines()[0]}") from None
    if frame.crs is not None and frame.crs != cube.rio.crs:
        frame = frame.to_crs(cube.rio.crs)
    shapes = [g for g in frame.geometry if g is not None and not g.is_empty and g.geom_type in ("Polygon",
                                                                                                  "MultiPolygon")]
    if not shapes:
        raise InputError(f"background mask {p} holds no polygon")
    mask = rasterize(shapes, out_shape=(cube.sizes["y"], cube.sizes["x"]), transform=cube.rio.transform(),
                     fill=0, default_value=1, dtype="uint8").astype(bool)
    if not mask.any():
        raise InputError(f"background mask {p}: no pixel centre of the scene lies inside its polygons")
    return mask


def read_mask(path: str | Path) -> np.ndarray:
    """The mask ``(y, x)`` bool of a ``.npy`` file or a single-band GeoTIFF (nonzero and
    finite = background). InputError for a missing or unreadable file, another suffix, more
    than one band, not 2-D, or no background pixel."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"background mask {p} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            values = np.load(p, allow_pickle=False)
        elif suffix in (".tif", ".tiff"):
            import rasterio

            with rasterio.open(p) as f:
                if f.count != 1:
                    raise InputError(f"background mask {p} has {f.count} bands, expected one")
                values = f.read(1)
        else:
            raise InputError(f"cannot read a background mask from {p.name}: use a single-band GeoTIFF or .npy")
    except InputError:
        raise
    except Exception as exc:  # rasterio/numpy errors on a damaged file
        raise InputError(f"background mask {p} is not readable: {str(exc).splitlines()[0] if str(exc) else exc}") \
            from None
    values = np.asarray(values)
    if values.ndim != 2:
        raise InputError(f"background mask {p} must be 2-D (y, x), got shape {values.shape}")
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise InputError(f"background mask {p} must hold numbers, got {values.dtype}")
    mask = np.isfinite(values) & (values != 0) if values.dtype.kind == "f" else values != 0
    if not mask.any():
        raise InputError(f"background mask {p} selects no pixel (no nonzero value)")
    return mask


def check_shape(mask: np.ndarray, shape_yx: tuple, source: str = "background mask") -> None:
    """InputError unless ``mask`` ``(y, x)`` has the cube's spatial shape ``shape_yx``."""
    if tuple(mask.shape) != tuple(shape_yx):
        raise InputError(f"{source} has shape {tuple(mask.shape)}, the cube's (y, x) is {tuple(shape_yx)}")


def as_mask(mask, shape_yx: tuple, cube=None) -> np.ndarray:
    """``mask`` (a path, an array or a DataArray ``(y, x)``) as bool ``(y, x)`` of the cube's
    shape ``shape_yx`` (a polygon file: rasterised on ``cube``'s grid); InputError otherwise."""
    if is_polygons(mask):
        if cube is None:
            raise InputError("a polygon background mask needs the cube's grid")
        out = rasterize_polygons(mask, cube)
    elif isinstance(mask, (str, Path)):
        out = read_mask(mask)
    else:
        values = np.asarray(getattr(mask, "values", mask))
        if values.ndim != 2:
            raise InputError(f"background mask must be 2-D (y, x), got shape {values.shape}")
        out = np.isfinite(values) & (values != 0) if values.dtype.kind == "f" else values != 0
        if not out.any():
            raise InputError("background mask selects no pixel (no nonzero value)")
    check_shape(out, shape_yx)
    return out


def restrict(cube, mask: np.ndarray):
    """The cube DataArray ``(band, y, x)`` with every pixel outside ``mask`` ``(y, x)`` set to
    NaN (lazy; tiles as the cube's): the statistics skip invalid pixels, so fitting on it
    uses the background region only. Integer cubes become floating point (as xarray's
    ``where`` promotes them)."""
    import dask.array as da
    import xarray as xr

    chunks = cube.data.chunks[1:] if cube.chunks is not None else "auto"
    keep = xr.DataArray(da.from_array(mask, chunks=chunks), dims=("y", "x"))
    return cube.where(keep)


def describe(path, mask: np.ndarray) -> dict:
    """What ``run.json`` records of a background mask: its path and pixel count."""
    return {"path": None if path is None else str(path), "pixels": int(mask.sum()), "of_pixels": int(mask.size)}
