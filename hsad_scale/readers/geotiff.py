"""Multi-band GeoTIFF scenes, plus the GDAL-backed helpers the other readers share.

The lazy pixels come from ``rioxarray.open_rasterio`` (picklable, reopened by each
worker), the metadata (CRS, transform, nodata, band tags) straight from rasterio.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

# GDAL's block cache defaults to 5 % of RAM; ingest reads every block once (the band survey,
# then the write), so a cache only adds memory: 0.8 GB of a 1.5 GB peak for an 800 MB ENVI
# image on a 23 GB machine. A user's own setting wins.
os.environ.setdefault("GDAL_CACHEMAX", "256")

import rasterio  # noqa: E402  (after GDAL_CACHEMAX)
import rioxarray  # noqa: E402
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
_TRAILING_WAVELENGTH = re.compile(
    r"\(?\s*([-+]?(?:\d+\.?\d*|\.\d+))\s*(nm|nanometers?|nanometres?|um|µm|μm|micrometers?|micrometres?|microns?)"
    r"\s*\)?\s*$", re.IGNORECASE)
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

    ``units`` (nm, µm, micrometers, mm, wavenumber cm-1, ...) decides the conversion. Any
    other stated unit (ENVI's default ``Unknown``, ``Index``, ...) gives None: band numbers
    written into a ``wavelength`` field are not wavelengths, and no magnitude rule tells them
    apart, and neither do converted values outside 100-25000 nm (a wrong unit). Without a unit, band numbers (consecutive integers) give None, values of 0.2-20
    are taken as µm and values of 200-20000 as nm; anything else gives None.
    """
    w = np.asarray(values, dtype=np.float64).ravel()
    if w.size == 0 or not np.all(np.isfinite(w)):
        return None
    u = (units or "").strip().lower().replace("_", " ")
    if u in _TO_NM:
        return _plausible(w * _TO_NM[u])
    if u.startswith("wavenumber") or u in ("cm-1", "cm^-1", "1/cm"):
        return _plausible(1e7 / w) if np.all(w > 0) else None
    if u or _band_numbers(w):
        return None
    if w.min() >= 0.2 and w.max() <= 20:
        return w * 1e3
    if w.min() >= 200 and w.max() <= 20000:
        return w
    return None


#: Wavelengths (nm) of imaging spectrometers, UV to thermal infrared: a converted value
#: outside this range means the stated unit is wrong (nm written as µm, or the reverse).
PLAUSIBLE_NM = (100.0, 25000.0)


def _plausible(nm: np.ndarray) -> np.ndarray | None:
    """``nm`` when every value is a plausible sensor wavelength, else None."""
    return nm if nm.min() >= PLAUSIBLE_NM[0] and nm.max() <= PLAUSIBLE_NM[1] else None


def wavelength_note(values, units: str | None, where: str) -> str:
    """The one-line note recorded when ``values`` of ``where`` are not taken as wavelengths."""
    w = np.asarray(values, dtype=np.float64).ravel()
    span = f"{w[0]:g}..{w[-1]:g}" if w.size and np.all(np.isfinite(w)) else "non-finite values"
    unit = f"units {units!r}" if units else "no units"
    return (f"{where}: wavelength values {span} with {unit} are not taken as wavelengths "
            f"(only nm/µm are); the cube has no wavelength coordinate")


def _band_numbers(w: np.ndarray) -> bool:
    """Whether values are band numbers: consecutive integers (0..n-1, 1..n, 5..n+4)."""
    return w.size > 1 and bool(np.all(w == np.round(w))) and bool(np.all(np.diff(w) == 1))


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
                if np.dtype(src.dtypes[0]).kind == "c":
                    raise InputError(f"{path} holds complex values ({src.dtypes[0]}): not reflectance "
                                     f"or radiance (take the magnitude or real part first)")
                crs = src.crs.to_wkt() if src.crs else None
                transform = src.transform
                nodata = typed_nodata(src.nodata, src.dtypes[0])
                notes = []
                wavelength = _band_wavelengths(src, notes, f"{fmt} {Path(path).name}")
                attrs = {"driver": src.driver}
                scales, offsets = _scale_offset(src)
            pixels = rioxarray.open_rasterio(
                path, chunks=CHUNKS, mask_and_scale=False, parse_coordinates=False
            )
    except RasterioError as e:
        raise InputError(f"cannot read {fmt} file {path}: {one_line(e)}") from e
    if crs is None and transform.is_identity:
        transform = None
    return SceneSource(
        cube=pixels.data, wavelength=wavelength, crs=crs, transform=transform, nodata=nodata,
        attrs={"format": fmt, "path": str(path), **attrs}, notes=notes,
        band_scale=scales, band_offset=offsets,
    )


def _scale_offset(src) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-band GDAL scale and offset (physical = stored x scale + offset), None when they
    are 1 and 0 for every band."""
    scales = np.array([1.0 if v is None else v for v in src.scales], dtype=np.float64)
    offsets = np.array([0.0 if v is None else v for v in src.offsets], dtype=np.float64)
    if np.all(scales == 1) and np.all(offsets == 0):
        return None, None
    return scales, offsets


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
    p = existing_file(path)
    source = raster_source(p, "GeoTIFF")
    if source.attrs.get("driver") not in ("GTiff", "COG"):
        raise InputError(f"{p} is not a GeoTIFF: GDAL reads it as {source.attrs.get('driver')}")
    xml = enmap_metadata_file(p)
    if xml is not None:
        apply_enmap_metadata(source, xml)
    return source


def enmap_metadata_file(path: Path) -> Path | None:
    """The EnMAP ``...-METADATA.XML`` next to a ``...-SPECTRAL_IMAGE.TIF``, or None."""
    stem = path.stem
    if "SPECTRAL_IMAGE" not in stem.upper():
        return None
    i = stem.upper().index("SPECTRAL_IMAGE")
    for ext in (".XML", ".xml"):
        candidate = path.with_name(stem[:i] + "METADATA" + ext)
        if candidate.is_file():
            return candidate
    return None


def apply_enmap_metadata(source: SceneSource, xml_path: Path) -> None:
    """Wavelengths (nm) and per-band gain/offset of an EnMAP product from its METADATA.XML
    (``specific/bandCharacterisation/bandID``: ``wavelengthCenterOfBand``, ``GainOfBand``,
    ``OffsetOfBand``; EnMAP L1B/L1C/L2A product specification): physical = DN x gain + offset.
    InputError when the XML is unreadable or lists another number of bands."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.parse(xml_path).getroot()
    except (ET.ParseError, OSError) as e:
        raise InputError(f"cannot read EnMAP metadata {xml_path}: {one_line(e)}") from e
    bands = root.findall("specific/bandCharacterisation/bandID")
    n = source.cube.shape[0]
    if not bands:
        return
    if len(bands) != n:
        raise InputError(f"EnMAP metadata {xml_path} describes {len(bands)} bands, the image has {n}")
    try:
        wl = np.array([float(b.findtext("wavelengthCenterOfBand")) for b in bands])
        gain = np.array([float(b.findtext("GainOfBand", "1")) for b in bands])
        offset = np.array([float(b.findtext("OffsetOfBand", "0")) for b in bands])
    except (TypeError, ValueError) as e:
        raise InputError(f"EnMAP metadata {xml_path}: band values are not numbers: {one_line(e)}") from e
    source.wavelength = wavelength_nm(wl, "nm")
    source.attrs["metadata"] = str(xml_path)
    if source.band_scale is not None:
        source.notes.append(f"{xml_path.name}: the GeoTIFF's own scale/offset used, not the XML gains")
    elif np.any(gain != 1) or np.any(offset != 0):
        source.band_scale, source.band_offset = gain, offset


def typed_nodata(value, dtype):
    """Nodata as the pixel type's Python scalar (int for integer rasters), or None."""
    if value is None:
        return None
    if np.issubdtype(np.dtype(dtype), np.integer) and float(value).is_integer():
        return int(value)
    return float(value)


def _band_wavelengths(src, notes: list, where: str) -> np.ndarray | None:
    """Wavelengths (nm) from the band/dataset metadata of an open rasterio dataset, or None
    (with a line in ``notes`` when values were found but are not wavelengths)."""
    n = src.count
    tags = {k.lower(): v for k, v in src.tags().items()}
    band_tags = [{k.lower(): v for k, v in src.tags(i).items()} for i in range(1, n + 1)]
    units = tags.get("wavelength_units") or band_tags[0].get("wavelength_units")
    per_band = [t.get("wavelength") for t in band_tags]
    if all(v is not None for v in per_band):
        return _floats_nm(per_band, units, n, notes, where)
    imagery = [src.tags(i, ns="IMAGERY").get("CENTRAL_WAVELENGTH_UM") for i in range(1, n + 1)]
    if all(v is not None for v in imagery):
        return _floats_nm(imagery, "um", n, notes, where)
    listed = tags.get("wavelength") or tags.get("wavelengths")
    if listed:
        return _floats_nm(_NUMBER.findall(listed), units, n, notes, where)
    return _described_wavelengths(src.descriptions, units, n, notes, where)


def _described_wavelengths(descriptions, units, n, notes, where) -> np.ndarray | None:
    """Wavelengths from band descriptions that are each a number with an optional unit, or
    that end with one in a known unit (ENVI's ``Band 12 (455.25 Nanometers)``)."""
    matches = [_NUMBER_WITH_UNIT.fullmatch(d or "") for d in descriptions]
    if all(matches):
        unit = matches[0].group(2) or units
        return _floats_nm([m.group(1) for m in matches], unit, n, notes, where)
    tails = [_TRAILING_WAVELENGTH.search(d or "") for d in descriptions]
    if all(tails) and len({m.group(2).lower() for m in tails}) == 1:
        return _floats_nm([m.group(1) for m in tails], tails[0].group(2), n, notes, where)
    return None


def _floats_nm(values, units, n, notes: list, where: str) -> np.ndarray | None:
    """``values`` parsed as floats and converted to nm when there is one per band, else None."""
    try:
        w = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError:
        return None
    if w.size != n:
        return None
    nm = wavelength_nm(w, units)
    if nm is None:
        notes.append(wavelength_note(w, units, where))
    return nm
