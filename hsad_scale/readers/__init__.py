"""Readers: one per source format, each ``path -> SceneSource`` (lazy cube + metadata).

Contract (every reader):
- ``cube`` is a lazy ``dask.array`` with dims ``(band, y, x)`` in the source's own dtype
  (int16/uint16/float...); row i, column j of the source image is ``cube[:, i, j]``.
- ``ground_truth`` is a numpy ``(y, x)`` array (any dtype, nonzero = anomaly) or None.
- ``wavelength`` is a float64 ``(band,)`` array in nanometres, or None.
- ``crs`` is a WKT string or None; ``transform`` an ``affine.Affine`` or None.
- ``nodata`` is the source's nodata value or None (NaN/Inf are always treated as invalid).
- ``bad_bands`` maps a source band index to why the product marks it bad (``bbl`` = 0, EMIT
  ``good_wavelengths`` = 0): such bands are left out of the cube at ingest.
- ``notes`` are decisions the reader had to take (one line each): printed as
  ``[hsad] warning: ...`` and recorded in the cube store's attributes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class GeoLookupTable:
    """A geometry lookup table (GLT, as EMIT's ``location/glt_x``, ``glt_y``): the swath pixel
    of each pixel of an orthorectified grid. ``x``/``y``: int32 ``(ortho_y, ortho_x)``, 1-based
    crosstrack/downtrack indices, 0 where no swath pixel falls; ``crs`` WKT and ``transform``
    (``affine.Affine``) of the orthorectified grid."""

    x: np.ndarray
    y: np.ndarray
    crs: str
    transform: Any


@dataclass
class SceneSource:
    cube: Any  # dask.array (band, y, x)
    ground_truth: np.ndarray | None = None
    wavelength: np.ndarray | None = None
    crs: str | None = None
    transform: Any = None  # affine.Affine
    nodata: float | None = None
    attrs: dict = field(default_factory=dict)
    bad_bands: dict = field(default_factory=dict)  # source band index -> reason
    notes: list = field(default_factory=list)
    glt: Any = None  # GeoLookupTable (EMIT location/glt_x, glt_y) or None
    band_scale: Any = None  # float64 (band,): physical = stored x scale + offset, or None
    band_offset: Any = None
