"""hsad-scale: hyperspectral anomaly detection on chunked Zarr cubes (RX, AE, VAE)."""

__version__ = "0.1.0"

from hsad_scale import accessor  # noqa: E402,F401  (registers the ``.hsad`` xarray accessor)
