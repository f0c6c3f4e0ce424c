"""ENVI scenes: ``.hdr`` text header + raw binary, any interleave (bsq, bil, bip).

Pixels, CRS and transform come from GDAL's ENVI driver (through rasterio, lazily), which
reads every interleave and byte order and turns ``map info`` / ``coordinate system string``
into a CRS and an affine transform. Wavelengths and ``data ignore value`` come from the
header itself (spectral's parser), at full precision.
"""

from __future__ import annotations

from pathlib import Path

import warnings

import numpy as np
import spectral.io.envi as spy_envi

from hsad_scale.errors import InputError
from hsad_scale.readers import SceneSource
from hsad_scale.readers.geotiff import (existing_file, one_line, raster_source, typed_nodata,
                                        wavelength_nm, wavelength_note)

#: Bytes per value of each ENVI ``data type`` code that a cube may hold (real numbers).
DATA_TYPE_BYTES = {1: 1, 2: 2, 3: 4, 4: 4, 5: 8, 12: 2, 13: 4, 14: 8, 15: 8}
COMPLEX_DATA_TYPES = {6: "complex64", 9: "complex128"}
INTERLEAVES = ("bsq", "bil", "bip")

#: Data-file names tried next to ``NAME.hdr``: NAME, then NAME + each extension.
DATA_EXTENSIONS = ("", ".img", ".dat", ".raw", ".bin", ".bsq", ".bil", ".bip", ".sli",
                   ".hyspex", ".IMG", ".DAT", ".RAW", ".BSQ", ".BIL", ".BIP")


def read_envi(path) -> SceneSource:
    """ENVI image (``path`` = the ``.hdr`` or the data file) as a lazy ``(band, y, x)`` cube.

    Source dtype kept; wavelengths float64 nm (only with ``wavelength units`` nm/µm, or no
    units and values that are plainly nm or µm); nodata from ``data ignore value``; bands with
    ``bbl`` = 0 marked bad; CRS WKT and transform from ``map info`` (rotation included).

    Raises InputError when the header and the data file disagree: data file shorter or longer
    than ``header offset + lines x samples x bands x bytes``, offset past its end, unknown
    ``interleave``, complex or unknown ``data type``.
    """
    header_path, data_path = envi_files(path)
    header = _header(header_path)
    check_layout(header, header_path, data_path)
    source = raster_source(data_path, "ENVI")
    n_bands = source.cube.shape[0]
    source.wavelength, source.notes = None, []  # the header's own fields decide, at full precision
    if "wavelength" in header:
        source.wavelength = _wavelength(header, n_bands, header_path, source.notes)
    ignore = header.get("data ignore value")
    if ignore is not None:
        source.nodata = typed_nodata(_number(ignore, header_path), source.cube.dtype)
    source.bad_bands.update(_bad_band_list(header, n_bands, header_path))
    source.attrs.update(header=str(header_path), interleave=header.get("interleave"))
    return source


def check_layout(header: dict, header_path: Path, data_path: Path) -> None:
    """InputError unless the data file holds exactly what the header describes."""
    interleave = str(header.get("interleave", "bsq")).strip().lower()
    if interleave not in INTERLEAVES:
        raise InputError(f"ENVI header {header_path}: unknown interleave {interleave!r} "
                         f"(expected bsq, bil or bip)")
    dtype_code = int(_number(header.get("data type"), header_path, "data type"))
    if dtype_code in COMPLEX_DATA_TYPES:
        raise InputError(f"ENVI header {header_path}: data type {dtype_code} is "
                         f"{COMPLEX_DATA_TYPES[dtype_code]}: complex values are not reflectance "
                         f"or radiance (take the magnitude or real part first)")
    if dtype_code not in DATA_TYPE_BYTES:
        raise InputError(f"ENVI header {header_path}: unknown data type {dtype_code}")
    sizes = [int(_number(header.get(k), header_path, k)) for k in ("lines", "samples", "bands")]
    offset = int(_number(header.get("header offset", 0), header_path, "header offset"))
    if min(sizes) < 1 or offset < 0:
        raise InputError(f"ENVI header {header_path}: lines, samples, bands = {sizes} and "
                         f"header offset = {offset} do not describe an image")
    actual = data_path.stat().st_size
    expected = offset + int(np.prod(sizes, dtype=np.int64)) * DATA_TYPE_BYTES[dtype_code]
    if offset >= actual:
        raise InputError(f"ENVI data file {data_path} holds {actual} bytes but its header offset "
                         f"is {offset}: the offset is past the end of the file")
    if actual != expected:
        what = "smaller" if actual < expected else "larger"
        raise InputError(
            f"ENVI data file {data_path} is {what} than its header describes: {actual} bytes, "
            f"header offset + lines x samples x bands x bytes = {offset} + {sizes[0]} x {sizes[1]} "
            f"x {sizes[2]} x {DATA_TYPE_BYTES[dtype_code]} = {expected} bytes"
            + (" (truncated download or copy?)" if actual < expected else ""))


def envi_files(path) -> tuple[Path, Path]:
    """``(header, data file)`` of an ENVI image given either one; InputError when one is missing."""
    p = existing_file(path)
    if p.suffix.lower() == ".hdr":
        stem = p.with_suffix("")
        for ext in DATA_EXTENSIONS:
            candidate = stem.with_name(stem.name + ext)
            if candidate.is_file():
                return p, candidate
        raise InputError(f"ENVI header {p} has no data file next to it (looked for {stem.name}, "
                         f"{stem.name}.img, {stem.name}.dat, ...)")
    header = find_header(p)
    if header is None:
        raise InputError(f"no ENVI header next to {p} (looked for {p.name}.hdr and {p.stem}.hdr)")
    return header, p


def find_header(data_path: Path) -> Path | None:
    """The ``.hdr`` next to a data file (``NAME.EXT.hdr`` or ``NAME.hdr``), or None."""
    for candidate in (data_path.with_name(data_path.name + ".hdr"), data_path.with_suffix(".hdr"),
                      data_path.with_name(data_path.name + ".HDR"), data_path.with_suffix(".HDR")):
        if candidate.is_file() and candidate != data_path:
            return candidate
    return None


def _header(header_path: Path) -> dict:
    """The parsed header (lower-case keys, string or list-of-string values)."""
    try:
        with warnings.catch_warnings():  # spectral warns (multi-line) about upper-case keys
            warnings.simplefilter("ignore")
            return spy_envi.read_envi_header(str(header_path))
    except Exception as e:  # spectral raises several unrelated types for bad headers
        raise InputError(f"cannot read ENVI header {header_path}: {one_line(e)}") from e


def _wavelength(header: dict, n_bands: int, header_path: Path, notes: list) -> np.ndarray | None:
    """Header ``wavelength`` list as nm (None, with a line in ``notes``, when its units are
    not nm/µm); InputError when it does not have one value per band."""
    w = _numbers(header["wavelength"], header_path, "wavelength")
    if w.size != n_bands:
        raise InputError(f"ENVI header {header_path} lists {w.size} wavelengths "
                         f"for {n_bands} bands")
    units = header.get("wavelength units")
    nm = wavelength_nm(w, units)
    if nm is None:
        notes.append(wavelength_note(w, units, f"ENVI header {header_path.name}"))
    return nm


def _bad_band_list(header: dict, n_bands: int, header_path: Path) -> dict:
    """``{band index: "bbl = 0"}`` from the header's bad-band list (1 good, 0 bad)."""
    if "bbl" not in header:
        return {}
    bbl = _numbers(header["bbl"], header_path, "bbl")
    if bbl.size != n_bands:
        raise InputError(f"ENVI header {header_path} lists {bbl.size} bbl values for {n_bands} bands")
    return {int(i): "bbl = 0 in the ENVI header" for i in np.flatnonzero(bbl == 0)}


def _numbers(values, header_path: Path, key: str) -> np.ndarray:
    """A header list (or single value) as float64; InputError when not numeric."""
    values = [values] if isinstance(values, str) else values
    try:
        return np.array([float(v) for v in values], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"ENVI header {header_path}: {key} is not numeric: {one_line(e)}") from e


def _number(text, header_path: Path, key: str = "data ignore value") -> float:
    """A header number; InputError when missing or not a number."""
    try:
        return float(text)
    except (TypeError, ValueError) as e:
        raise InputError(f"ENVI header {header_path}: {key} is not a number: {text!r}") from e
