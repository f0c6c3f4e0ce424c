"""Shared pytest fixtures."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

HAD_DIR = Path(__file__).parents[1].parent / "shared" / "data" / "had"


@pytest.fixture(scope="session")
def had_dir() -> Path:
    """Folder of the real HAD scenes (``MANIFEST.tsv`` + ``*.mat``): skipped when absent,
    a failure when absent on CI (``CI=true``)."""
    if not (HAD_DIR / "MANIFEST.tsv").is_file():
        message = f"real scenes not found: {HAD_DIR}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return HAD_DIR


@pytest.fixture(scope="session")
def manifest(had_dir: Path) -> list[dict]:
    """Rows of ``MANIFEST.tsv`` as dicts (all values strings)."""
    with open(had_dir / "MANIFEST.tsv", newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


@pytest.fixture(scope="session")
def client():
    """A real Dask LocalCluster: two single-threaded worker processes."""
    from hsad_scale.cluster import dask_client

    with dask_client(n_workers=2, dashboard_address=":0") as c:
        yield c


def load_mat_scene(had_dir: Path, row: dict):
    """(cube float64 (rows, cols, bands), ground truth (rows, cols)) read directly, as a reference."""
    import h5py
    import numpy as np
    import scipy.io

    path = had_dir / row["file"]
    try:
        m = scipy.io.loadmat(path)
        return m[row["cube_key"]].astype(np.float64), m[row["gt_key"]]
    except NotImplementedError:  # MATLAB v7.3 (HDF5): axes come reversed
        with h5py.File(path, "r") as f:
            return f[row["cube_key"]][()].transpose(2, 1, 0).astype(np.float64), f[row["gt_key"]][()].T
