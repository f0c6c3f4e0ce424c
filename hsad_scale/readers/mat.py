"""MATLAB ``.mat`` scenes: v4/v5 through ``scipy.io.loadmat``, v7.3 (HDF5) through h5py, lazily.

A ``.mat`` cube is MATLAB ``(rows, cols, bands)``; the reader returns ``(bands, rows, cols)``.
h5py shows a v7.3 variable with its axes reversed (MATLAB is column-major), so the cube
appears as ``(bands, cols, rows)`` and a ground truth as ``(cols, rows)``. Shapes below are
always given in MATLAB order.
"""

from __future__ import annotations

import os
from pathlib import Path

import dask.array as da
from dask.base import tokenize
import h5py
import numpy as np
import scipy.io
import scipy.sparse

from hsad_scale.errors import InputError
from hsad_scale.readers import SceneSource
from hsad_scale.readers.geotiff import existing_file, one_line, wavelength_nm, wavelength_note
from hsad_scale.readers.layout import decide_band_axis, spatial_shape, user_band_axis

#: Usual variable names, most likely first (compared case-insensitively).
CUBE_NAMES = ("data", "hsi", "cube", "img", "image", "x")
GT_NAMES = ("map", "gt", "groundtruth", "mask", "hsi_gt", "ground_truth", "label", "labels")
GT_HINTS = ("gt", "truth", "map", "mask", "label", "anomal", "target")
WAVELENGTH_NAMES = ("wavelength", "wavelengths", "wl", "wave", "lambda", "wavelength_nm")
CHUNKS = (-1, "auto", "auto")  # (band, y, x): all bands in one chunk
_NON_NUMERIC_CLASSES = (b"char", b"cell", b"struct", b"function_handle", b"string")


def read_mat(path, cube_key: str | None = None, gt_key: str | None = None, *,
             materialize: bool = False, band_axis=None, truth_shape: tuple | None = None) -> SceneSource:
    """MATLAB scene as a lazy ``(band, y, x)`` dask cube in the stored dtype.

    ``cube_key`` defaults to the only 3-D numeric variable (InputError when there are
    several). Its band axis comes from evidence (:mod:`hsad_scale.readers.layout`): the shape
    of the ground truth (``gt_key``, a 2-D variable named like ``map``/``gt``, or
    ``truth_shape`` of a separate file), the length of a ``wavelength`` vector, else
    ``band_axis`` (first/middle/last in MATLAB order); InputError when nothing decides.
    Ground truth returned as numpy ``(y, x)`` (None when there is none); a 1 x bands
    ``wavelength`` variable becomes the wavelengths (nm). v7.3 cubes are read per chunk
    from the file (reopened each time, so the graph pickles); ``materialize=True`` loads
    them into memory at once. v4/v5 files are always loaded whole (scipy cannot do otherwise).
    """
    mat = _open(existing_file(path))
    name = _cube_name(mat, cube_key)
    shape = tuple(mat.shapes[name])
    if gt_key is not None:
        _check_key(mat, gt_key)
        if len(mat.shapes[gt_key]) != 2:
            raise InputError(f"ground truth '{gt_key}' in {mat.path} has shape {mat.shapes[gt_key]}, "
                             f"expected 2-D (rows, cols)")
        truths = {gt_key: tuple(mat.shapes[gt_key])}
    elif truth_shape is not None:
        truths = {"--gt": tuple(truth_shape)}
    else:
        truths = _named_planes(mat, exclude=name)
    waves = {k: int(np.prod(s)) for k, s in mat.shapes.items()
             if k.lower() in WAVELENGTH_NAMES and len(s) <= 2 and min(s) == 1}
    axis, evidence = decide_band_axis(shape, f"'{name}' in {mat.path}",
                                      band_axis=user_band_axis(band_axis), truth_shapes=truths,
                                      wavelength_sizes=waves)
    if shape[axis] < 2:
        raise InputError(f"'{name}' in {mat.path} has shape {shape}: a 2-D (single-band) image, "
                         f"not a (rows, cols, bands) cube")
    rows_cols = spatial_shape(shape, axis)
    gt_name = gt_key if gt_key is not None else (
        None if truth_shape is not None else _gt_name(mat, rows_cols, exclude=name))
    notes = []
    if axis != 2:
        notes.append(f"'{name}' {shape} in {mat.path.name} is stored with its bands on axis {axis} "
                     f"(MATLAB order), not last; decided by {evidence}")
    source = SceneSource(
        cube=mat.cube(name, axis, materialize),
        ground_truth=None if gt_name is None else mat.array(gt_name),
        wavelength=_wavelength(mat, shape[axis], notes),
        attrs={"format": "mat", "mat_version": mat.version, "path": str(mat.path),
               "cube_key": name, "gt_key": gt_name, "band_axis": axis, "band_axis_evidence": evidence},
        notes=notes,
    )
    return source


def read_mat_ground_truth(path, gt_key: str | None = None) -> np.ndarray:
    """A 2-D variable of a ``.mat`` file as numpy ``(rows, cols)``: ``gt_key``, else the one
    named like a ground truth, else the only 2-D array (not a vector) in the file."""
    mat = _open(existing_file(path))
    if gt_key is not None:
        _check_key(mat, gt_key)
        if len(mat.shapes[gt_key]) != 2:
            raise InputError(f"ground truth '{gt_key}' in {mat.path} has shape "
                             f"{mat.shapes[gt_key]}, expected 2-D (rows, cols)")
        return mat.array(gt_key)
    planes = {k: s for k, s in mat.shapes.items() if len(s) == 2 and min(s) > 1}
    name = _preferred(planes, GT_NAMES, GT_HINTS)
    if name is None and len(planes) == 1:
        name = next(iter(planes))
    if name is None:
        raise InputError(f"cannot tell which variable of {mat.path} is the ground truth "
                         f"(2-D variables: {_listing(planes)}); pass gt_key")
    return mat.array(name)


class _MatFile:
    """The numeric variables of a .mat file: ``shapes`` (MATLAB order) and loaders."""

    def __init__(self, path: Path, version: str, shapes: dict, arrays: dict | None):
        self.path, self.version, self._arrays = path, version, arrays
        # a ground truth saved with a singleton axis ((1, rows, cols) from PyTorch code,
        # (rows, cols, 1)) is the 2-D plane it holds
        self.shapes = {k: (tuple(d for d in s if d != 1) if _truth_name(k) and len(s) == 3
                           and sum(d == 1 for d in s) == 1 else tuple(s)) for k, s in shapes.items()}

    def array(self, name: str) -> np.ndarray:
        """The whole variable as numpy, MATLAB shape (a ground truth's singleton axis dropped)."""
        if self._arrays is not None:
            return self._arrays[name].reshape(self.shapes[name])
        with _h5_file(self.path) as f:
            return f[name][()].T.reshape(self.shapes[name])

    def cube(self, name: str, band_axis: int, materialize: bool) -> da.Array:
        """The 3-D variable as a dask ``(bands, rows, cols)`` array; ``band_axis`` in MATLAB
        order, the two other axes are (rows, cols) in MATLAB order."""
        order = [band_axis] + [a for a in range(3) if a != band_axis]
        if self._arrays is not None or materialize:
            return da.from_array(np.ascontiguousarray(np.transpose(self.array(name), order)),
                                 chunks=CHUNKS)
        view = H5Variable(str(self.path), name)  # h5py order: MATLAB's reversed
        h5_order = [2 - a for a in order]
        chunks = tuple(-1 if a == 2 - band_axis else "auto" for a in range(3))
        lazy = da.from_array(view, chunks=chunks, name=f"mat-{name}-{view.token()}",
                             meta=np.empty((0, 0, 0), view.dtype), fancy=False)
        return lazy.transpose(h5_order)


class H5Variable:
    """Picklable array-like of one HDF5 dataset that reopens the file for every read, so
    dask can read chunks from any thread, process or cluster worker."""

    def __init__(self, path: str, key: str):
        self.path, self.key = path, key
        with _h5_file(path) as f:
            self.shape, self.dtype = f[key].shape, f[key].dtype
        self.ndim = len(self.shape)

    def __getitem__(self, index):
        with h5py.File(self.path, "r") as f:
            return f[self.key][index]

    def token(self) -> str:
        """Identity of the data: path, key, file size and modification time."""
        st = os.stat(self.path)
        return tokenize(os.path.abspath(self.path), self.key, st.st_size, st.st_mtime_ns)

    def __dask_tokenize__(self):
        return (H5Variable, self.token())


def _open(path: Path) -> _MatFile:
    """Index the numeric variables of a .mat file (v7.3 lazily, older versions loaded)."""
    if h5py.is_hdf5(str(path)):
        with _h5_file(path) as f:
            shapes = {k: f[k].shape[::-1] for k in f if _h5_numeric(f[k])}
        return _MatFile(path, "7.3", shapes, None)
    try:
        loaded = scipy.io.loadmat(str(path))
    except Exception as e:  # scipy raises MatReadError, ValueError, TypeError, ... on bad files
        raise InputError(f"cannot read MATLAB file {path}: {one_line(e)}") from e
    complex_cubes = [k for k, v in loaded.items() if isinstance(v, np.ndarray) and v.dtype.kind == "c"
                     and v.ndim == 3]
    if complex_cubes:
        raise InputError(f"'{complex_cubes[0]}' in {path} holds complex values: not reflectance or "
                         f"radiance (take the magnitude or real part first)")
    arrays = {k: _dense(v) for k, v in loaded.items() if not k.startswith("__")}
    arrays = {k: v for k, v in arrays.items() if v is not None}
    return _MatFile(path, "5", {k: v.shape for k, v in arrays.items()}, arrays)


def _h5_file(path) -> h5py.File:
    """The HDF5 file open for reading; InputError when HDF5 cannot open it."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise InputError(f"cannot read MATLAB v7.3 (HDF5) file {path}: {one_line(e)}") from e


def _h5_numeric(obj) -> bool:
    """Whether an HDF5 member is a numeric MATLAB array (not a struct, cell, char or empty)."""
    return (isinstance(obj, h5py.Dataset) and obj.dtype.kind in "biuf"
            and obj.attrs.get("MATLAB_class", b"double") not in _NON_NUMERIC_CLASSES
            and not obj.attrs.get("MATLAB_empty", 0))


def _dense(value) -> np.ndarray | None:
    """A loaded v5 variable as a numeric ndarray (sparse densified), or None when not numeric."""
    if scipy.sparse.issparse(value):
        value = value.toarray()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return value
    return None


def _check_key(mat: _MatFile, key: str) -> None:
    """InputError naming the available variables when ``key`` is not a numeric variable."""
    if key not in mat.shapes:
        raise InputError(f"variable '{key}' not found in {mat.path}; "
                         f"numeric variables: {_listing(mat.shapes)}")


def _cube_name(mat: _MatFile, key: str | None) -> str:
    """The cube variable: ``key`` checked, else the only 3-D one (InputError when there are
    none or several: picking one would be a guess)."""
    if key is not None:
        _check_key(mat, key)
        if len(mat.shapes[key]) != 3:
            raise InputError(f"'{key}' in {mat.path} has shape {mat.shapes[key]}: a 2-D "
                             f"(single-band) image, not a (rows, cols, bands) cube")
        return key
    candidates = [k for k, s in mat.shapes.items() if len(s) == 3]
    if not candidates:
        raise InputError(f"no 3-D (rows, cols, bands) cube in {mat.path}; a single-band image "
                         f"is not a hyperspectral cube (variables: {_listing(mat.shapes)})")
    if len(candidates) > 1:
        raise InputError(f"{mat.path} holds several 3-D variables "
                         f"({_listing({k: mat.shapes[k] for k in candidates})}): pass --cube-key")
    return candidates[0]


def _truth_name(name: str) -> bool:
    """Whether a variable is named like a ground truth."""
    return name.lower() in GT_NAMES or any(h in name.lower() for h in GT_HINTS)


def _named_planes(mat: _MatFile, exclude: str) -> dict:
    """2-D variables named like a ground truth ``{name: shape}`` (vectors only when they fit
    a spatial layout of the cube ``exclude``)."""
    cube = mat.shapes[exclude]
    named = {k: tuple(s) for k, s in mat.shapes.items() if k != exclude and len(s) == 2 and _truth_name(k)}
    # a named vector is a ground truth only when it is the image of a one-line scene
    return {k: s for k, s in named.items()
            if min(s) > 1 or any(spatial_shape(cube, a) == s for a in range(3))}


def _gt_name(mat: _MatFile, shape: tuple, exclude: str) -> str | None:
    """The ground-truth variable of spatial ``shape``: one with a ground-truth name, else the
    only 2-D variable of that shape; None when absent or ambiguous."""
    planes = {k: s for k, s in mat.shapes.items() if tuple(s) == tuple(shape) and k != exclude}
    name = _preferred(planes, GT_NAMES, GT_HINTS)
    return name if name is not None or len(planes) != 1 else next(iter(planes))


def _preferred(variables, names, hints=()) -> str | None:
    """First variable whose name is in ``names`` (case-insensitive, in that order), else the
    first whose name contains one of ``hints``, else None."""
    lower = {k.lower(): k for k in variables}
    for n in names:
        if n in lower:
            return lower[n]
    return next((k for k in variables if any(h in k.lower() for h in hints)), None)


def _wavelength(mat: _MatFile, bands: int, notes: list) -> np.ndarray | None:
    """A 1 x bands (or bands x 1) variable named like ``wavelength``, in nm, or None (with a
    line in ``notes`` when its values are not plainly nm or µm)."""
    for k, s in mat.shapes.items():
        if k.lower() in WAVELENGTH_NAMES and int(np.prod(s)) == bands and min(s) == 1:
            values = mat.array(k).ravel()
            nm = wavelength_nm(values)
            if nm is None:
                notes.append(wavelength_note(values, None, f"'{k}' in {mat.path.name}"))
            return nm
    return None


def _listing(shapes: dict) -> str:
    """``name (shape), ...`` for messages."""
    return ", ".join(f"{k} {tuple(s)}" for k, s in shapes.items()) or "none"
