"""The notebooks in notebooks/: committed without outputs, with a ``parameters`` cell of small
defaults, and each one executes from start to end (with nbclient, as ``pytest --nbmake`` or
papermill would) within a few minutes on two cores."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["01_explore_scene", "02_reproduce_study", "03_scale_out"]
CELL_TIMEOUT = 600


def _read(name: str):
    return nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)


def _execute(name: str, parameters: dict):
    """Run the notebook in notebooks/ with ``parameters`` injected after its parameters cell
    (as papermill does); returns the executed notebook."""
    from nbclient import NotebookClient

    nb = _read(name)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
    NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def _outputs(nb, kind: str) -> list:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if kind in o.get("data", {}) or o.get("output_type") == kind]


def _text(nb) -> str:
    parts = []
    for o in (o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])):
        parts.append(o.get("text", "") + o.get("data", {}).get("text/plain", "") + o.get("data", {}).get("text/html", ""))
    return "\n".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_clean_with_a_parameters_cell(name):
    nb = _read(name)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "commit notebooks without outputs"
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"


@pytest.mark.slow
def test_01_explore_scene(tmp_path):
    nb = _execute("01_explore_scene", {"out_dir": str(tmp_path)})
    text = _text(nb)
    assert "Dask dashboard: http" in text
    assert len(_outputs(nb, "image/png")) >= 4  # RGB, maps, spectra, ROC
    assert "auc" in text and "RX" in text and "AE" in text
    assert (tmp_path / "scene.zarr").is_dir()


@pytest.mark.slow
def test_02_reproduce_study(had_dir, tmp_path):
    nb = _execute("02_reproduce_study", {"data_dir": str(had_dir), "out_dir": str(tmp_path)})
    text = _text(nb)
    # one ROC figure and one map figure per experiment, the latent space, the final figures
    assert len(_outputs(nb, "image/png")) >= 1 + 7 * 2 + 1 + 2
    for experiment in ("epochs", "layers", "batch size", "learning rate", "metric", "latent size", "VAE beta"):
        assert experiment in text
    assert "best AE" in text and "VAE (study-vae)" in text and "RX" in text


@pytest.mark.slow
def test_03_scale_out(tmp_path):
    nb = _execute("03_scale_out", {"out_dir": str(tmp_path)})
    text = _text(nb)
    assert "Dask dashboard: http" in text and "EPSG:32633" in text
    assert (tmp_path / "scores.zarr").is_dir() and (tmp_path / "scores.tif").is_file()
    assert (tmp_path / "dask-report-rx-stats.html").is_file()
    assert len(_outputs(nb, "image/png")) >= 1 and "auc" in text

    import rasterio

    with rasterio.open(tmp_path / "scores.tif") as tif:
        assert tif.crs.to_epsg() == 32633 and tif.shape == (512, 512)
