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


def _cell_outputs(nb, snippet: str) -> list:
    """Outputs of the first code cell whose source holds ``snippet``."""
    return next(c.outputs for c in nb.cells if c.cell_type == "code" and snippet in c.source)


def _html_table(outputs) -> list[list[str]]:
    """The rows (cell texts, header row first) of the HTML table a cell displayed (a DataFrame)."""
    from html.parser import HTMLParser

    rows = []

    class Table(HTMLParser):
        cell = None

        def handle_starttag(self, tag, attrs):
            if tag == "tr":
                rows.append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th") and self.cell is not None:
                rows[-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    Table().feed(next(o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})))
    return [row for row in rows if row]


def _frame(outputs) -> dict:
    """A displayed DataFrame as {index label: {column: value}} (numbers as float where they parse)."""
    header, *body = _html_table(outputs)

    def value(text):
        try:
            return float(text)
        except ValueError:
            return text

    body = [row for row in body if any(row[1:])]  # not the index name's header row ("method")
    return {row[0]: {column: value(v) for column, v in zip(header[1:], row[1:])} for row in body}


def _pngs(nb) -> list[tuple[int, int]]:
    """(width, height) of every PNG image the notebook displayed, from each PNG's header."""
    import base64
    import struct

    sizes = []
    for output in _outputs(nb, "image/png"):
        png = base64.b64decode(output["data"]["image/png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", "not a PNG image"
        sizes.append(struct.unpack(">II", png[16:24]))
    return sizes


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
    from hsad_scale import cube as cubes, evaluate

    nb = _execute("01_explore_scene", {"out_dir": str(tmp_path)})
    assert "Dask dashboard: http://127.0.0.1:" in _text(nb)
    sizes = _pngs(nb)
    assert len(sizes) >= 4 and all(w >= 200 and h >= 150 for w, h in sizes)  # RGB, maps, spectra, ROC
    # the metrics table: RX's figures are the library's on the same scene; the AE's are figures
    table = _frame(_cell_outputs(nb, "figures = {"))
    columns = ["auc", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "tpr_at_fpr_0.1", "pauc_0.01"]
    assert set(table) == {"RX", "AE"} and all(list(row) == columns for row in table.values())
    ds = cubes.open_cube(tmp_path / "scene.zarr")
    want = evaluate.metrics(ds.hsad.rx().values, ds.ground_truth.values)
    for column in columns:
        assert table["RX"][column] == pytest.approx(round(want[column], 4), abs=1.01e-4), column
        assert 0.0 <= table["AE"][column] <= 1.0
    assert table["AE"]["auc"] > 0.9 and table["RX"]["auc"] > 0.9


@pytest.mark.slow
def test_02_reproduce_study(had_dir, tmp_path):
    from hsad_scale import cube as cubes, evaluate

    nb = _execute("02_reproduce_study", {"data_dir": str(had_dir), "out_dir": str(tmp_path)})
    # one ROC figure and one map figure per experiment, the latent space, the final figures
    assert len(_pngs(nb)) >= 1 + 7 * 2 + 1 + 2
    # the table of every (experiment, setting) of the small grids: 2 settings each, 3 metrics
    header, *rows = _html_table(_cell_outputs(nb, 'table.sort_values("auc"'))
    experiments = [row[header.index("experiment")] for row in rows]
    assert {e: experiments.count(e) for e in set(experiments)} == {
        "epochs": 2, "layers": 2, "batch size": 2, "learning rate": 2, "metric": 3, "latent size": 2, "VAE beta": 2}
    aucs = [float(row[header.index("auc")]) for row in rows]
    assert aucs == sorted(aucs, reverse=True) and all(0.5 < a <= 1 for a in aucs)
    # the comparison: the best AE is the table's best AE row, RX the library's RX on the same scene
    comparison = _frame(_cell_outputs(nb, "comparison = pd.DataFrame"))
    best = next(label for label in comparison if label.startswith("best AE: "))
    assert set(comparison) == {best, "VAE (study-vae)", "RX"}
    assert comparison[best]["AUC"] == max(a for a, e in zip(aucs, experiments) if e != "VAE beta")
    ds = cubes.open_cube(tmp_path / "sandiego.zarr")
    want = evaluate.metrics(ds.hsad.rx().values, ds.ground_truth.values)
    assert comparison["RX"]["AUC"] == pytest.approx(round(want["auc"], 4), abs=1.01e-4)
    assert comparison["RX"]["TPR @ FPR 1e-2"] == pytest.approx(round(want["tpr_at_fpr_0.01"], 4), abs=1.01e-4)
    assert comparison["RX"]["runs"] == 1 and comparison[best]["runs"] == 3


@pytest.mark.slow
def test_03_scale_out(tmp_path):
    import ast

    import numpy as np
    import rasterio
    import xarray as xr

    from hsad_scale import cube as cubes, evaluate

    nb = _execute("03_scale_out", {"out_dir": str(tmp_path)})
    text = _text(nb)
    assert "Dask dashboard: http://127.0.0.1:" in text and "EPSG:32633" in text
    assert (tmp_path / "dask-report-rx-stats.html").is_file()
    assert [w >= 200 and h >= 150 for w, h in _pngs(nb)] == [True]  # the map
    # the background statistics cover every pixel of the 512 x 512 cube
    background = ast.literal_eval(_cell_outputs(nb, 'rx.details["background"]')[-1]["data"]["text/plain"])
    assert background["pixels"] == 512 * 512
    # the saved maps: the GeoTIFF holds the Zarr store's scores with the cube's CRS
    scores = xr.open_zarr(tmp_path / "scores.zarr", consolidated=False)["score"].values
    with rasterio.open(tmp_path / "scores.tif") as tif:
        assert tif.crs.to_epsg() == 32633 and tif.shape == (512, 512)
        np.testing.assert_allclose(tif.read(1), scores, rtol=1e-6)
    # the figures shown are the library's evaluation of the saved map against the ground truth
    shown = ast.literal_eval(_cell_outputs(nb, "ds.hsad.evaluate(scores")[-1]["data"]["text/plain"])
    truth = cubes.open_cube(tmp_path / "scene-512x512x100.zarr").ground_truth.values
    want = evaluate.metrics(scores, truth)
    assert shown == {k: round(v, 4) if isinstance(v, float) else v for k, v in want.items()}
    assert shown["auc"] > 0.9
