"""hsad-scale: hyperspectral anomaly detection on chunked Zarr cubes (RX, AE, VAE)."""

__version__ = "0.1.0"
