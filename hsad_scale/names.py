"""Names shared by several modules: variables of a cube store and a score map, ensembles,
training devices, metric keys, scene file suffixes. Plain constants, no imports beyond the
method registry's names (:mod:`hsad_scale.detectors`, re-exported here), so any module may
import this one without loading anything heavy.
"""

from __future__ import annotations

from hsad_scale.detectors import LEARNED_METHODS, METHODS  # noqa: F401 (the registry's names, re-exported)

#: Variables of a cube store (``hsad ingest``): the cube ``(band, y, x)`` and the optional
#: ground-truth mask ``(y, x)``.
CUBE = "cube"
GROUND_TRUTH = "ground_truth"
#: The variable of a score map ``(y, x)`` (``scores.zarr`` and the detectors' ``score`` output).
SCORE = "score"

#: How the score maps of repeated learned runs are combined.
ENSEMBLES = ("mean", "max")
#: Training devices of the learned detectors (``auto``: CUDA when available).
DEVICES = ("auto", "cpu", "cuda")

#: Quality figures of a score map against a ground truth, as :func:`hsad_scale.evaluate.metrics`
#: names them (a test checks they agree): the keys a sweep may pick its best setting by.
METRIC_KEYS = ("auc", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "tpr_at_fpr_0.1", "pauc_0.01")

#: Scene file suffixes (lower case) by the reader that opens them.
MAT_EXTENSIONS = (".mat",)
TIFF_EXTENSIONS = (".tif", ".tiff", ".gtif", ".gtiff")
NETCDF_EXTENSIONS = (".nc", ".nc4", ".cdf", ".netcdf", ".h5", ".hdf5", ".he5")
ENVI_HEADER = ".hdr"
#: Every single-file scene (an ENVI scene is found by its header); a Zarr cube store is a folder.
SCENE_SUFFIXES = MAT_EXTENSIONS + TIFF_EXTENSIONS + NETCDF_EXTENSIONS + (ENVI_HEADER,)
STORE_SUFFIX = ".zarr"
