"""The ``ds.hsad`` accessor: lazy maps with the cube's coords and CRS, metadata kept by every
call, and the same numbers as the ``hsad`` command line on a real scene."""

import json
import subprocess
import sys

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

import hsad_scale.accessor  # noqa: F401  (registers ds.hsad)
from hsad_scale import cube as cubes, pipeline
from hsad_scale.accessor import Fitted
from hsad_scale.cli import main
from hsad_scale.errors import InputError
from hsad_scale.synth import SceneSpec, synth

AE_SETTINGS = dict(preset="study-ae", max_train_pixels=600, repeats=2)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    path = synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(96, 80, 24, seed=3), chunk=32)
    return cubes.open_cube(path)


def _snapshot(ds):
    return {"wavelength": ds["wavelength"].values.copy(), "crs": ds.rio.crs, "transform": ds.rio.transform(),
            "attrs": dict(ds.attrs), "cube_attrs": dict(ds["cube"].attrs), "vars": sorted(ds.variables)}


def _same_grid(score, ds):
    assert score.dims == ("y", "x")
    np.testing.assert_array_equal(score["x"].values, ds["x"].values)
    np.testing.assert_array_equal(score["y"].values, ds["y"].values)
    assert "spatial_ref" in score.coords
    assert score.rio.crs == ds.rio.crs
    assert score.rio.transform() == ds.rio.transform()


def test_import_hsad_scale_registers_the_accessor():
    code = "import hsad_scale, xarray as xr; print(hasattr(xr.Dataset, 'hsad') and hasattr(xr.DataArray, 'hsad'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True"


def test_rx_is_lazy_on_the_cube_grid_and_equals_the_pipeline(scene, client):
    before = _snapshot(scene)
    score = scene.hsad.rx()
    assert isinstance(score.data, da.Array)
    assert score.dtype == np.float32 and score.name == "score"
    _same_grid(score, scene)
    cube = scene["cube"]
    expected = pipeline.rx_scores(cube, pipeline.fit_rx(cube)[1])["score"].values
    np.testing.assert_array_equal(score.values, expected)
    # the cube DataArray's accessor gives the same map, with the same grid and CRS
    from_array = scene["cube"].hsad.rx()
    _same_grid(from_array, scene)
    np.testing.assert_array_equal(from_array.values, expected)
    # a fitted model is reused (no second reduction) and gives the same map
    fitted = scene.hsad.fit("rx")
    assert isinstance(fitted, Fitted) and fitted.stats.count == 96 * 80
    np.testing.assert_array_equal(scene.hsad.rx(model=fitted).values, expected)
    np.testing.assert_array_equal(scene.hsad.rx(model=fitted.stats).values, expected)
    after = _snapshot(scene)
    np.testing.assert_array_equal(before.pop("wavelength"), after.pop("wavelength"))
    assert before == after


def test_every_call_keeps_the_metadata(scene, client):
    before = _snapshot(scene)
    rx = scene.hsad.rx()
    ae = scene.hsad.detect("ae", metrics=["mse", "sam"], client=client, **AE_SETTINGS)
    assert set(ae.data_vars) == {"score", "score_runs", "score_sam", "score_runs_sam"}
    assert all(isinstance(ae[v].data, da.Array) for v in ae.data_vars)
    assert ae.sizes["run"] == 2
    _same_grid(ae["score"], scene)
    rgb = scene.hsad.rgb()
    assert isinstance(rgb.data, da.Array) and rgb.dims == ("y", "x", "rgb")
    wavelength = scene["wavelength"].values
    expected = [int(np.argmin(np.abs(wavelength - t))) for t in (640, 550, 460)]
    assert list(rgb["band"].values) == expected
    np.testing.assert_array_equal(rgb["wavelength"].values, wavelength[expected])
    assert rgb.rio.crs == scene.rio.crs
    np.testing.assert_array_equal(scene.hsad.rgb(bands=(3, 2, 1))["band"].values, [3, 2, 1])
    figures = scene.hsad.evaluate(rx), scene.hsad.evaluate(ae)
    assert 0.5 < figures[0]["auc"] <= 1 and "runs" in figures[1] and "sam" in figures[1]["per_metric"]
    for fig in (scene.hsad.plot_map({"RX": rx, "AE": ae["score"]}, normalise="minmax"), scene.hsad.plot_map(ae),
                rx.hsad.plot_map(), scene.hsad.plot_rgb(), scene.hsad.plot_spectra(rx, top=3),
                scene.hsad.plot_roc({"RX": rx, "AE": ae["score_runs"]})):
        assert isinstance(fig, plt.Figure)
        plt.close(fig)
    after = _snapshot(scene)
    np.testing.assert_array_equal(before.pop("wavelength"), after.pop("wavelength"))
    assert before == after


def test_the_cube_dataarray_needs_truth_passed_and_bad_calls_are_clear(scene):
    cube = scene["cube"]
    score = scene.hsad.rx()
    with pytest.raises(InputError, match="ground truth"):
        cube.hsad.evaluate(score)
    assert cube.hsad.evaluate(score, truth=scene["ground_truth"]) == scene.hsad.evaluate(score)
    with pytest.raises(InputError, match="unknown method"):
        scene.hsad.detect("pca")
    with pytest.raises(InputError, match="no cube"):
        scene["ground_truth"].hsad.rx()
    with pytest.raises(InputError, match="unknown ae setting"):
        scene.hsad.fit("ae", no_such_setting=1)


def test_accessor_gives_the_cli_numbers_on_a_real_scene(had_dir, manifest, tmp_path, client):
    row = next(r for r in manifest if r["name"] == "hydice")
    address = client.scheduler.address
    rx_dir, ae_dir = tmp_path / "rx", tmp_path / "ae"
    assert main(["detect", str(had_dir / row["file"]), "--out", str(rx_dir), "--dask-address", address]) == 0
    cube_path = rx_dir / "cube.zarr"
    assert main(["detect", str(cube_path), "--method", "ae", "--preset", "study-ae", "--set", "max_train_pixels=2000",
                 "--repeats", "2", "--metric", "mse,resid-mahal", "--out", str(ae_dir), "--dask-address", address]) == 0
    ds = cubes.open_cube(cube_path)

    rx = ds.hsad.rx()
    cli_rx = xr.open_zarr(rx_dir / "scores.zarr", consolidated=False)["score"].values
    np.testing.assert_allclose(rx.values, cli_rx, rtol=1e-6)
    cli_metrics = json.loads((rx_dir / "metrics.json").read_text())
    cli_objects = cli_metrics.pop("objects")  # object-level figures: those of the run's detections
    assert ds.hsad.evaluate(rx) == pytest.approx(cli_metrics, rel=1e-9)
    assert ds.hsad.detections(rx).attrs["detections"]["object_evaluation"] == cli_objects
    assert cli_metrics["auc"] == pytest.approx(float(row["rx_auc_numpy"]), abs=1e-3)

    ae = ds.hsad.detect("ae", preset="study-ae", max_train_pixels=2000, repeats=2, metrics=["mse", "resid-mahal"],
                        client=client)
    cli_ae = xr.open_zarr(ae_dir / "scores.zarr", consolidated=False)
    assert set(ae.data_vars) == set(cli_ae.data_vars)
    for name in ae.data_vars:
        np.testing.assert_allclose(ae[name].values, cli_ae[name].values, rtol=1e-5, atol=1e-6, err_msg=name)
    figures = ds.hsad.evaluate(ae)
    cli_figures = json.loads((ae_dir / "metrics.json").read_text())
    assert figures["auc"] == pytest.approx(cli_figures["auc"], abs=1e-6)
    assert figures["per_metric"]["resid-mahal"]["auc"] == pytest.approx(cli_figures["per_metric"]["resid-mahal"]["auc"],
                                                                       abs=1e-6)
    assert [r["auc"] for r in figures["runs"]] == pytest.approx([r["auc"] for r in cli_figures["runs"]], abs=1e-6)


def test_an_in_memory_cube_is_tiled_and_scores_the_same(scene):
    loaded = scene.compute()  # a new, NumPy-backed Dataset
    assert loaded["cube"].chunks is None
    score = loaded.hsad.rx()
    assert isinstance(score.data, da.Array)
    np.testing.assert_allclose(score.values, scene.hsad.rx().values, rtol=1e-5)
    plain = xr.DataArray(scene["cube"].values, dims=("band", "y", "x"))  # no coords at all
    assert plain.hsad.rx().shape == (96, 80)
    with pytest.raises(InputError, match="apply to fitting"):
        scene.hsad.detect("rx", model=scene.hsad.fit("rx"), epochs=3)
