"""Pick the reader for a scene file by extension, sibling ``.hdr`` or magic bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hsad_scale.errors import InputError
from hsad_scale.names import MAT_EXTENSIONS, NETCDF_EXTENSIONS, TIFF_EXTENSIONS
from hsad_scale.readers import SceneSource
from hsad_scale.readers.envi import envi_files, find_header, read_envi
from hsad_scale.readers.geotiff import existing_file, one_line, read_geotiff, read_raster_band
from hsad_scale.readers.mat import read_mat, read_mat_ground_truth
from hsad_scale.readers.netcdf import read_netcdf

_MAGIC = (
    (b"MATLAB", "mat"),
    (b"\x89HDF\r\n\x1a\n", "netcdf"),
    (b"CDF\x01", "netcdf"), (b"CDF\x02", "netcdf"), (b"CDF\x05", "netcdf"),
    (b"II*\x00", "geotiff"), (b"MM\x00*", "geotiff"),
    (b"II+\x00", "geotiff"), (b"MM\x00+", "geotiff"),  # BigTIFF
    (b"ENVI", "envi"),
)


def read_scene(path, cube_key: str | None = None, gt_key: str | None = None,
               gt_path=None, band_axis=None) -> SceneSource:
    """Read any supported scene as a :class:`SceneSource` (lazy ``(band, y, x)`` cube).

    Formats: ``.mat`` (v5, v7.3), ENVI (``.hdr`` or a data file with a sibling ``.hdr``),
    GeoTIFF, NetCDF/HDF5 (EMIT L2A included). ``cube_key``/``gt_key`` name variables in .mat
    and NetCDF/HDF5 files (``cube_key`` may be an HDF5 group path); ``band_axis`` says which
    stored axis holds the bands when the file does not (.mat, NetCDF/HDF5); ``gt_path`` is a
    separate ground truth (``.mat`` 2-D, single-band GeoTIFF or ENVI, ``.npy``) that must be
    ``(y, x)``; with it, ``gt_key`` names its variable. InputError for anything that does not
    hold what it claims.
    """
    p = existing_file(path)
    fmt = scene_format(p)
    cube_gt_key = None if gt_path is not None else gt_key
    if fmt in ("envi", "geotiff") and (cube_key is not None or cube_gt_key is not None
                                       or band_axis is not None):
        raise InputError(f"{p} is {fmt}: --cube-key/--gt-key/--band-axis only apply to .mat and "
                         f"NetCDF/HDF5 inputs")
    truth = None if gt_path is None else load_ground_truth(gt_path, gt_key)
    truth_shape = None if truth is None else truth.shape
    if fmt == "mat":
        source = read_mat(p, cube_key, cube_gt_key, band_axis=band_axis, truth_shape=truth_shape)
    elif fmt == "netcdf":
        source = read_netcdf(p, cube_key, cube_gt_key, band_dim=band_axis, truth_shape=truth_shape)
    elif fmt == "envi":
        source = read_envi(p)
    else:
        source = read_geotiff(p)
    _check_cube(source, p)
    if truth is not None:
        if truth.shape != tuple(source.cube.shape[1:]):
            raise InputError(f"ground truth {gt_path} has shape {truth.shape}, expected (y, x) = "
                             f"{tuple(source.cube.shape[1:])}")
        source.ground_truth = truth
        source.attrs["gt_path"] = str(gt_path)
    return source


def scene_format(path: Path) -> str:
    """``"mat"``, ``"envi"``, ``"geotiff"`` or ``"netcdf"``; InputError for anything else."""
    suffix = path.suffix.lower()
    head = _head(path)
    if suffix in MAT_EXTENSIONS or head.startswith(b"MATLAB"):
        return "mat"
    if suffix == ".hdr":
        return "envi"
    if suffix in TIFF_EXTENSIONS:
        return "geotiff"
    if suffix in NETCDF_EXTENSIONS:
        return "netcdf"
    if find_header(path) is not None:
        return "envi"
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    raise InputError(f"unknown format of {path}: expected .mat, ENVI (.hdr), GeoTIFF (.tif) "
                     f"or NetCDF/HDF5 (.nc, .h5)")


def read_ground_truth(path, shape: tuple, gt_key: str | None = None) -> np.ndarray:
    """Ground truth file (``.mat`` 2-D, single-band GeoTIFF/ENVI, ``.npy``) as numpy ``(y, x)``;
    InputError when it is not 2-D or its shape is not ``shape``."""
    gt = load_ground_truth(path, gt_key)
    if gt.shape != tuple(shape):
        raise InputError(f"ground truth {path} has shape {gt.shape}, expected (y, x) = {tuple(shape)}")
    return gt


def load_ground_truth(path, gt_key: str | None = None) -> np.ndarray:
    """Ground truth file (``.mat`` 2-D, single-band GeoTIFF/ENVI, ``.npy``) as numpy
    ``(rows, cols)``; InputError when unreadable or not 2-D."""
    p = existing_file(path)
    suffix = p.suffix.lower()
    if suffix == ".npy":
        gt = _load_npy(p)
    elif suffix in MAT_EXTENSIONS:
        gt = read_mat_ground_truth(p, gt_key)
    elif suffix in TIFF_EXTENSIONS:
        gt = read_raster_band(p, "GeoTIFF")
    elif suffix == ".hdr" or find_header(p) is not None:
        gt = read_raster_band(envi_files(p)[1], "ENVI")
    else:
        raise InputError(f"unknown ground-truth format of {p}: expected .mat, .tif, ENVI or .npy")
    if gt.ndim == 3 and gt.shape[0] == 1:
        gt = gt[0]
    if gt.ndim != 2:
        raise InputError(f"ground truth {p} has shape {gt.shape}, expected 2-D (y, x)")
    return gt


def _check_cube(source: SceneSource, path: Path) -> None:
    """InputError unless the cube is 3-D with at least two bands."""
    shape = source.cube.shape
    if len(shape) != 3 or shape[0] < 2:
        raise InputError(f"{path} holds a 2-D (single-band) image of shape {shape}, "
                         f"not a hyperspectral cube (band, y, x)")
    if min(shape) == 0:
        raise InputError(f"{path} holds an empty image: (band, y, x) = {tuple(shape)}")


def _load_npy(path: Path) -> np.ndarray:
    """A ``.npy`` array (no pickles); InputError when unreadable."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise InputError(f"cannot read {path} as .npy: {one_line(e)}") from e


def _head(path: Path, n: int = 8) -> bytes:
    """The first ``n`` bytes of the file."""
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise InputError(f"cannot read {path}: {one_line(e)}") from e
