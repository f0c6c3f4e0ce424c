"""Readers: one per source format, each ``path -> SceneSource`` (lazy cube + metadata).

Contract (every reader):
- ``cube`` is a lazy ``dask.array`` with dims ``(band, y, x)`` in the source's own dtype
  (int16/uint16/float...); row i, column j of the source image is ``cube[:, i, j]``.
- ``ground_truth`` is a numpy ``(y, x)`` array (any dtype, nonzero = anomaly) or None.
- ``wavelength`` is a float64 ``(band,)`` array in nanometres, or None.
- ``crs`` is a WKT string or None; ``transform`` an ``affine.Affine`` or None.
- ``nodata`` is the source's nodata value or None (NaN/Inf are always treated as invalid).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class SceneSource:
    cube: Any  # dask.array (band, y, x)
    ground_truth: np.ndarray | None = None
    wavelength: np.ndarray | None = None
    crs: str | None = None
    transform: Any = None  # affine.Affine
    nodata: float | None = None
    attrs: dict = field(default_factory=dict)
