"""ENVI scenes: ``.hdr`` text header + raw binary, any interleave (bsq, bil, bip).

Pixels, CRS and transform come from GDAL's ENVI driver (through rasterio, lazily), which
reads every interleave and byte order and turns ``map info`` / ``coordinate system string``
into a CRS and an affine transform. Wavelengths and ``data ignore value`` come from the
header itself (spectral's parser), at full precision.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import spectral.io.envi as spy_envi

from hsad_scale.errors import InputError
from hsad_scale.readers import SceneSource
from hsad_scale.readers.geotiff import (existing_file, one_line, raster_source, typed_nodata,
                                        wavelength_nm)

#: Data-file names tried next to ``NAME.hdr``: NAME, then NAME + each extension.
DATA_EXTENSIONS = ("", ".img", ".dat", ".raw", ".bin", ".bsq", ".bil", ".bip", ".sli",
                   ".hyspex", ".IMG", ".DAT", ".RAW", ".BSQ", ".BIL", ".BIP")


def read_envi(path) -> SceneSource:
    """ENVI image (``path`` = the ``.hdr`` or the data file) as a lazy ``(band, y, x)`` cube.

    Source dtype kept; wavelengths float64 nm (µm converted by ``wavelength units`` or by
    magnitude); nodata from ``data ignore value``; CRS WKT and transform from ``map info``.
    """
    header_path, data_path = envi_files(path)
    header = _header(header_path)
    source = raster_source(data_path, "ENVI")
    n_bands = source.cube.shape[0]
    if "wavelength" in header:
        source.wavelength = _wavelength(header, n_bands, header_path)
    ignore = header.get("data ignore value")
    if ignore is not None:
        source.nodata = typed_nodata(_number(ignore, header_path), source.cube.dtype)
    source.attrs.update(header=str(header_path), interleave=header.get("interleave"))
    return source


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
        return spy_envi.read_envi_header(str(header_path))
    except Exception as e:  # spectral raises several unrelated types for bad headers
        raise InputError(f"cannot read ENVI header {header_path}: {one_line(e)}") from e


def _wavelength(header: dict, n_bands: int, header_path: Path) -> np.ndarray | None:
    """Header ``wavelength`` list as nm; InputError when it does not have one value per band."""
    values = header["wavelength"]
    values = [values] if isinstance(values, str) else values
    try:
        w = np.array([float(v) for v in values], dtype=np.float64)
    except ValueError as e:
        raise InputError(f"ENVI header {header_path}: wavelength is not numeric: "
                         f"{one_line(e)}") from e
    if w.size != n_bands:
        raise InputError(f"ENVI header {header_path} lists {w.size} wavelengths "
                         f"for {n_bands} bands")
    return wavelength_nm(w, header.get("wavelength units"))


def _number(text, header_path: Path) -> float:
    """A header number (``data ignore value``)."""
    try:
        return float(text)
    except (TypeError, ValueError) as e:
        raise InputError(f"ENVI header {header_path}: not a number: {text!r}") from e
