"""The hsad command line: outputs of a run, and clear exit-2 errors that leave nothing behind."""

import json
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import xarray as xr

from hsad_scale.cli import main
from hsad_scale.synth import SceneSpec, synth


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(96, 80, 20, seed=5), chunk=32)


def _leftovers(folder, name):
    return [p.name for p in folder.iterdir() if name in p.name]


def test_detect_writes_the_whole_run_folder(small_cube, tmp_path, client, capsys):
    out = tmp_path / "run"
    assert main(["detect", str(small_cube), "--out", str(out), "--dask-address", client.scheduler.address]) == 0
    for name in ("scores.zarr", "scores.tif", "metrics.json", "run.json", "roc.png", "map.png"):
        assert (out / name).exists(), name
    score = xr.open_zarr(out / "scores.zarr")["score"]
    assert score.dims == ("y", "x") and score.shape == (96, 80) and score.dtype == np.float32
    with rasterio.open(out / "scores.tif") as tif:
        assert tif.crs.to_epsg() == 32633
        assert tif.transform.a == 30.0 and tif.transform.c == 500000.0
        np.testing.assert_array_equal(tif.read(1), score.values)
    run = json.loads((out / "run.json").read_text())
    assert run["dask"]["scheduler"] == client.scheduler.address
    assert {"rx-stats", "score", "evaluate"} <= set(run["stage_seconds"])
    assert run["background"]["regularised"] is False
    assert 0.5 < json.loads((out / "metrics.json").read_text())["auc"] <= 1.0
    assert _leftovers(tmp_path, ".tmp-") == []
    # the evaluate command (tile by tile on local threads) reads the same figures back
    assert main(["evaluate", str(out / "scores.zarr"), str(small_cube), "--json", str(tmp_path / "m.json")]) == 0
    assert "auc" in capsys.readouterr().out
    pixel_figures = {k: v for k, v in json.loads((out / "metrics.json").read_text()).items() if k != "objects"}
    assert json.loads((tmp_path / "m.json").read_text()) == pixel_figures  # objects: detect's detections only


def test_detect_ingests_a_mat_scene_into_the_run_folder(had_dir, manifest, tmp_path, client):
    row = next(r for r in manifest if r["name"] == "hydice")
    out = tmp_path / "run"
    assert main(["detect", str(had_dir / row["file"]), "--out", str(out), "--dask-address", client.scheduler.address]) == 0
    assert (out / "cube.zarr").is_dir()
    with rasterio.open(out / "scores.tif") as tif:  # no CRS: a COG on the pixel grid all the same
        assert tif.crs is None and tif.shape == (int(row["height"]), int(row["width"]))
    auc = json.loads((out / "metrics.json").read_text())["auc"]
    assert auc == pytest.approx(float(row["rx_auc_numpy"]), abs=1e-3)


def _bad_inputs(tmp_path, small_cube):
    text = tmp_path / "notes.txt"
    text.write_text("not a scene")
    flat = tmp_path / "flat.tif"
    with rasterio.open(flat, "w", driver="GTiff", width=8, height=8, count=1, dtype="float32") as f:
        f.write(np.ones((1, 8, 8), np.float32))
    cube = tmp_path / "cube.tif"
    with rasterio.open(cube, "w", driver="GTiff", width=16, height=16, count=4, dtype="float32") as f:
        f.write(np.random.default_rng(0).random((4, 16, 16), dtype=np.float32))
    wrong_gt = tmp_path / "gt.npy"
    np.save(wrong_gt, np.zeros((5, 5), np.uint8))
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "keep.txt").write_text("old results")
    return {
        "missing file": [str(tmp_path / "nope.mat")],
        "unknown format": [str(text)],
        "2-D image": [str(flat)],
        "ground truth of the wrong shape": [str(cube), "--gt", str(wrong_gt)],
        "existing run folder": [str(small_cube), "--out", str(existing)],
    }


@pytest.mark.parametrize("case", ["missing file", "unknown format", "2-D image", "ground truth of the wrong shape",
                                  "existing run folder"])
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(case, tmp_path, small_cube, capsys):
    args = _bad_inputs(tmp_path, small_cube)[case]
    out = args[args.index("--out") + 1] if "--out" in args else str(tmp_path / "run")
    if "--out" not in args:
        args = args + ["--out", out]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["detect", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if not line.startswith("[hsad]")]  # progress lines may precede it
    assert len(errors) == 1 and errors[0].startswith("hsad: error:") and err[-1] == errors[0], err
    after = sorted(p.name for p in tmp_path.iterdir())
    assert after == before  # no run folder, no temporary folder
    if case == "existing run folder":
        assert (tmp_path / "existing" / "keep.txt").read_text() == "old results"


def test_overwrite_replaces_a_run_folder(small_cube, tmp_path, client):
    out = tmp_path / "run"
    out.mkdir()
    (out / "stale.txt").write_text("x")
    args = ["detect", str(small_cube), "--out", str(out), "--dask-address", client.scheduler.address]
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "stale.txt").exists() and (out / "scores.zarr").exists()


def test_the_installed_command_exits_2_without_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hsad_scale.cli", "detect", str(tmp_path / "missing.mat"),
                           "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_synth_and_ingest_refuse_to_overwrite(tmp_path):
    dest = tmp_path / "s.zarr"
    assert main(["synth", str(dest), "--size", "16x16", "--bands", "4"]) == 0
    assert main(["synth", str(dest), "--size", "16x16", "--bands", "4"]) == 2
    assert main(["synth", str(tmp_path / "t.zarr"), "--size", "banana"]) == 2


def test_settings_are_checked_without_importing_torch():
    """AE/VAE settings are validated (and the cluster started) before PyTorch is imported."""
    import subprocess
    import sys

    code = ("import sys; from hsad_scale.pipeline import DetectOptions, learned_config; "
            "learned_config(DetectOptions(method='vae', settings=('beta=2',))); "
            "from hsad_scale import cluster, tiles, stats; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
