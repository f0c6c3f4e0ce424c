"""hsad-scale: hyperspectral anomaly detection on chunked Zarr cubes (RX, AE, VAE)."""

__version__ = "0.1.0"

import warnings as _warnings

# Stores are written with consolidated metadata (a plain ``xr.open_zarr`` opens them silently,
# CRS included); Zarr 3 warns on every such write that the format does not specify it yet.
_warnings.filterwarnings("ignore", message="Consolidated metadata is currently not part",
                         category=UserWarning)

from hsad_scale import accessor  # noqa: E402,F401  (registers the ``.hsad`` xarray accessor)
