"""Multi-band GeoTIFF scenes, plus the GDAL-backed helpers the other readers share.

The lazy pixels come from ``rioxarray.open_rasterio`` (picklable, reopened by each
worker), the metadata (CRS, transform, nodata, band tags) straight from rasterio.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rioxarray
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from hsad_scale.errors import InputError
from hsad_scale.readers import SceneSource

#: Dask chunks for a ``(band, y, x)`` cube: every band in one chunk, dask sizes the tiles.
CHUNKS = {"band": -1, "y": "auto", "x": "auto"}

#: Factor to nanometres for each spelling of a wavelength unit (lower case).
_TO_NM = {
    **dict.fromkeys(("nm", "nanometer", "nanometers", "nanometre", "nanometres"), 1.0),
    **dict.fromkeys(
        ("um", "µm", "μm", "micron", "microns", "micrometer", "micrometers", "micrometre",
         "micrometres"),
        1e3,
    ),
    **dict.fromkeys(("mm", "millimeter", "millimeters", "millimetre", "millimetres"), 1e6),
    **dict.fromkeys(("m", "meter", "meters", "metre", "metres"), 1e9),
}
_NOT_WAVELENGTH = ("index", "band", "ghz", "mhz")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_NUMBER_WITH_UNIT = re.compile(
    r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*([a-zA-Zµμ]*)\s*"
)


def existing_file(path) -> Path:
    """``path`` as an absolute Path (lazy reads may run in another working directory);
    InputError when it does not exist or is not a file."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"input file not found: {p}")
    if not p.is_file():
        raise InputError(f"input is not a file: {p}")
    return p.absolute()


def one_line(error: Exception, limit: int = 300) -> str:
    """A library exception as one short line for an InputError message."""
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def wavelength_nm(values, units: str | None = None) -> np.ndarray | None:
    """Wavelengths ``(band,)`` as float64 nanometres, or None when they are not wavelengths.

    ``units`` (nm, µm, micrometers, mm, wavenumber cm-1, ...) decides the conversion; when it
    is absent or unknown, values all below 100 are taken as µm (no sensor band sits below
    100 nm, and µm wavelengths of VNIR to LWIR are 0.35-15); unitless band numbers
    (0..n-1 or 1..n) give None.
    """
    w = np.asarray(values, dtype=np.float64).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)):
        return None
    u = (units or "").strip().lower().replace("_", " ")
    if u in _TO_NM:
        return w * _TO_NM[u]
    if u.startswith("wavenumber") or u in ("cm-1", "cm^-1", "1/cm"):
        return 1e7 / w if np.all(w > 0) else None
    if u in _NOT_WAVELENGTH or (not u and _band_numbers(w)):
        return None
    return w * 1e3 if w.max() < 100 else w


def _band_numbers(w: np.ndarray) -> bool:
    """Whether values are just band numbers 0..n-1 or 1..n (not wavelengths)."""
    return w.size > 1 and bool(np.array_equal(w, np.arange(w.size) + w[0])) and w[0] in (0, 1)


def raster_source(path, fmt: str = "raster") -> SceneSource:
    """Lazy ``(band, y, x)`` cube of a file GDAL reads, with CRS (WKT), transform, nodata and
    wavelengths (nm) from the band metadata; source dtype kept, row i of the file is y = i."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                if src.count < 2:
                    raise InputError(f"{path} holds a 2-D (single-band) image, not a "
                                     f"hyperspectral cube (band, y, x)")
                crs = src.crs.to_wkt() if src.crs else None
                transform = src.transform
                nodata = typed_nodata(src.nodata, src.dtypes[0])
                wavelength = _band_wavelengths(src)
                attrs = {"driver": src.driver, "scales": src.scales, "offsets": src.offsets}
            pixels = rioxarray.open_rasterio(
                path, chunks=CHUNKS, mask_and_scale=False, parse_coordinates=False
            )
    except RasterioError as e:
        raise InputError(f"cannot read {fmt} file {path}: {one_line(e)}") from e
    if crs is None and transform.is_identity:
        transform = None
    return SceneSource(
        cube=pixels.data, wavelength=wavelength, crs=crs, transform=transform, nodata=nodata,
        attrs={"format": fmt, "path": str(path), **attrs},
    )


def read_raster_band(path, fmt: str = "raster") -> np.ndarray:
    """The single band of a raster file as numpy ``(y, x)`` (for ground-truth files)."""
    try:
        with rasterio.open(path) as src:
            if src.count != 1:
                raise InputError(f"ground truth {path} has {src.count} bands, expected 1")
            return src.read(1)
    except RasterioError as e:
        raise InputError(f"cannot read {fmt} file {path}: {one_line(e)}") from e


def read_geotiff(path) -> SceneSource:
    """Multi-band GeoTIFF as a lazy ``(band, y, x)`` cube in the file's dtype.

    CRS as WKT, ``affine.Affine`` transform (None when not georeferenced), nodata, and
    wavelengths in nm from per-band ``wavelength`` tags, GDAL's IMAGERY
    ``CENTRAL_WAVELENGTH_UM``, a dataset ``wavelength`` list tag, or numeric band descriptions.
    """
    return raster_source(existing_file(path), "GeoTIFF")


def typed_nodata(value, dtype):
    """Nodata as the pixel type's Python scalar (int for integer rasters), or None."""
    if value is None:
        return None
    if np.issubdtype(np.dtype(dtype), np.integer) and float(value).is_integer():
        return int(value)
    return float(value)


def _band_wavelengths(src) -> np.ndarray | None:
    """Wavelengths (nm) from the band/dataset metadata of an open rasterio dataset, or None."""
    n = src.count
    tags = {k.lower(): v for k, v in src.tags().items()}
    band_tags = [{k.lower(): v for k, v in src.tags(i).items()} for i in range(1, n + 1)]
    units = tags.get("wavelength_units") or band_tags[0].get("wavelength_units")
    per_band = [t.get("wavelength") for t in band_tags]
    if all(v is not None for v in per_band):
        return _floats_nm(per_band, units, n)
    imagery = [src.tags(i, ns="IMAGERY").get("CENTRAL_WAVELENGTH_UM") for i in range(1, n + 1)]
    if all(v is not None for v in imagery):
        return _floats_nm(imagery, "um", n)
    listed = tags.get("wavelength") or tags.get("wavelengths")
    if listed:
        return _floats_nm(_NUMBER.findall(listed), units, n)
    return _described_wavelengths(src.descriptions, units, n)


def _described_wavelengths(descriptions, units, n) -> np.ndarray | None:
    """Wavelengths from band descriptions that are each a number with an optional unit."""
    matches = [_NUMBER_WITH_UNIT.fullmatch(d or "") for d in descriptions]
    if not all(matches):
        return None
    unit = matches[0].group(2) or units
    return _floats_nm([m.group(1) for m in matches], unit, n)


def _floats_nm(values, units, n) -> np.ndarray | None:
    """``values`` parsed as floats and converted to nm when there is one per band, else None."""
    try:
        w = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None
    return wavelength_nm(w, units) if w.size == n else None
