"""AE/VAE on cubes: the Dask tile-wise scores against scoring the whole array at once, and the
CLI's repeats, ensembles, saved models and settings errors."""

import json

import numpy as np
import pytest
import xarray as xr

from hsad_scale import cube as cubes, learned
from hsad_scale.cli import main
from hsad_scale.detectors import autoencoder as ae
from hsad_scale.synth import SceneSpec, synth

FAST = ["--set", "epochs=1", "--set", "max_steps=40", "--set", "members=1", "--set", "holdout=0.0"]


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(64, 48, 16, seed=2), chunk=(24))


@pytest.mark.parametrize("method", ["ae", "vae"])
def test_tile_wise_scores_equal_whole_array_scores(small_cube, client, method):
    ds = cubes.open_cube(small_cube)
    cube = ds[cubes.CUBE].chunk({"y": 17, "x": 13})
    config = learned.resolve_config(method, overrides=["epochs=1", "max_steps=40", "members=2"])
    scaling = learned.fit_scaling(cube, config)
    models, sample, workers = learned.train_runs(client, cube, config, 2, scaling, "cpu")
    assert len(models) == 2 and len(workers) == 2
    metrics = ("resid-mahal", "mse", "sam") if method == "ae" else ("latent-mahal", "joint-mahal", "l1")
    scores, details = learned.learned_scores(cube, models, metrics, sample)
    pixels = ds[cubes.CUBE].values.reshape(16, -1).T
    for k, metric in enumerate(metrics):
        name = "score_runs" if k == 0 else f"score_runs_{metric}"
        for r, model in enumerate(models):
            expected = ae.score_in_memory(model, pixels, metric).reshape(64, 48)
            np.testing.assert_allclose(scores[name].isel(run=r).values, expected, rtol=2e-4, atol=1e-6,
                                       err_msg=f"{method} {metric} run {r}")
    assert set(details["feature_background"]) == {f"run{r}-{m}" for r in range(2) for m in metrics
                                                 if ae.METRIC_KIND[m] == "mahalanobis"}


def test_kept_features_give_the_same_scores_without_reading_the_cube_again(small_cube, tmp_path, client):
    import shutil

    store = shutil.copytree(small_cube, tmp_path / "copy.zarr")
    cube = cubes.open_cube(store)[cubes.CUBE].chunk({"y": 17, "x": 13})
    invalid = np.zeros((64, 48), dtype=bool)
    invalid[3::7, 1::5] = True
    cube = cube.where(~xr.DataArray(invalid, dims=("y", "x")))  # some invalid (NaN) pixels
    config = learned.resolve_config("ae", overrides=["epochs=1", "max_steps=40", "members=2"])
    models, sample, _ = learned.train_runs(client, cube, config, 2, learned.fit_scaling(cube, config), "cpu")
    metrics = ("resid-mahal", "joint-mahal")
    assert learned.features_fit_in_memory(cube, models, [(r, m) for r in range(2) for m in metrics])
    two_pass, details = learned.learned_scores(cube, models, metrics, sample, keep_features=False)
    two_pass = two_pass.compute()
    kept, kept_details = learned.learned_scores(cube, models, metrics, sample)
    assert kept_details["features_kept_in_memory"] and not details["features_kept_in_memory"]
    for key, kept_background in kept_details["feature_background"].items():  # the same regularisation
        two_pass_background = details["feature_background"][key]
        assert kept_background.keys() == two_pass_background.keys()
        for field, value in kept_background.items():
            assert value == (pytest.approx(two_pass_background[field], rel=1e-6) if isinstance(value, float)
                             else two_pass_background[field]), (key, field)
    n_invalid = int(np.isnan(cube.isel(band=0).values).sum())
    shutil.rmtree(store)  # the scoring pass must not read the cube
    kept = kept.compute()
    for name in two_pass.data_vars:
        # the same computation; only BLAS summation order may differ with a buffer's alignment
        np.testing.assert_allclose(kept[name].values, two_pass[name].values, rtol=1e-5, atol=1e-6, err_msg=name)
    assert np.isnan(kept["score"].values).sum() == n_invalid > 0


def test_features_are_not_kept_for_direct_metrics_or_without_a_cluster(small_cube):
    cube = cubes.open_cube(small_cube)[cubes.CUBE]
    model = ae.fit(cube.values.reshape(16, -1).T[::4], learned.resolve_config("ae", overrides=["max_steps=5"]))
    import dask

    with dask.config.set(scheduler="synchronous"):  # as in a sweep trial on a worker
        assert not learned.features_fit_in_memory(cube, [model], [(0, "resid-mahal")])
    assert not learned.features_fit_in_memory(cube, [model], [(0, "resid-mahal"), (0, "mse")])


def test_detect_ae_with_repeats_writes_runs_ensemble_and_models(small_cube, tmp_path, client):
    out = tmp_path / "run"
    args = ["detect", str(small_cube), "--method", "ae", "--repeats", "2", "--metric", "resid-mahal,sam",
            "--out", str(out), "--dask-address", client.scheduler.address, *FAST]
    assert main(args) == 0
    scores = xr.open_zarr(out / "scores.zarr")
    assert scores["score_runs"].dims == ("run", "y", "x") and scores.sizes["run"] == 2
    assert list(scores["run"].values) == [0, 1]
    assert {"score", "score_sam", "score_runs_sam"} <= set(scores.data_vars)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["runs"]) == 2 and "sam" in metrics["per_metric"]
    assert set(metrics["runs_summary"]) == {"mean", "std"}
    assert len(metrics["averaged_roc"]["tpr_mean"]) == len(metrics["averaged_roc"]["fpr"])
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["epochs"] == 1 and run["training_pixels"] == 64 * 48
    assert sorted(p.name for p in (out / "model").iterdir()) == ["detector.json", "run-0", "run-1"]
    assert json.loads((out / "model" / "detector.json").read_text())["method"] == "ae"

    # the saved models score the same cube identically without retraining (method read from the model)
    again = tmp_path / "again"
    assert main(["detect", str(small_cube), "--model", str(out), "--metric", "resid-mahal,sam",
                 "--out", str(again), "--dask-address", client.scheduler.address]) == 0
    assert json.loads((again / "run.json").read_text())["method"] == "ae"
    rescored = xr.open_zarr(again / "scores.zarr")
    np.testing.assert_array_equal(rescored["score_runs"].values, scores["score_runs"].values)
    # and the same ensemble: the runs' normalisers come from the same sample of pixels
    np.testing.assert_allclose(rescored["score"].values, scores["score"].values, rtol=1e-5, atol=1e-6)


def test_max_ensemble_is_the_per_pixel_maximum_of_normalised_runs(small_cube, tmp_path, client):
    out = tmp_path / "run"
    assert main(["detect", str(small_cube), "--method", "vae", "--repeats", "2", "--ensemble", "max",
                 "--out", str(out), "--dask-address", client.scheduler.address, *FAST]) == 0
    scores = xr.open_zarr(out / "scores.zarr")
    norms = json.loads((out / "run.json").read_text())["normalisers"]
    metric = ae.PRESETS["default-vae"].metric
    normalised = [(scores["score_runs"].isel(run=r).values - norms[f"run{r}-{metric}"][0]) / norms[f"run{r}-{metric}"][1]
                  for r in range(2)]
    np.testing.assert_allclose(scores["score"].values, np.maximum(*normalised), rtol=1e-5, atol=1e-5)


def test_rx_statistics_apply_to_another_acquisition(small_cube, tmp_path, client):
    first = tmp_path / "first"
    assert main(["detect", str(small_cube), "--out", str(first), "--dask-address", client.scheduler.address]) == 0
    other = synth(tmp_path / "other.zarr", SceneSpec(40, 40, 16, seed=9), chunk=20)
    applied = tmp_path / "applied"
    assert main(["detect", str(other), "--model", str(first), "--out", str(applied),
                 "--dask-address", client.scheduler.address]) == 0
    from hsad_scale.stats import BackgroundStats, whitener

    stats = BackgroundStats.load(first / "model" / "rx_stats.npz")
    pixels = cubes.open_cube(other)[cubes.CUBE].values.reshape(16, -1).T
    expected = whitener(stats).mahalanobis(pixels).reshape(40, 40)
    np.testing.assert_allclose(xr.open_zarr(applied / "scores.zarr")["score"].values, expected, rtol=1e-5)


@pytest.mark.parametrize("bad", [["--set", "nonsense=3"], ["--set", "epochs=-1"], ["--preset", "no-such"],
                                 ["--preset", "study-vae"], ["--set", "epochs"]])
def test_bad_settings_exit_2(small_cube, tmp_path, bad, capsys):
    assert main(["detect", str(small_cube), "--method", "ae", "--out", str(tmp_path / "run"), *bad]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("hsad: error:")
    assert not (tmp_path / "run").exists()


def test_saved_method_names_the_detector_of_a_saved_model(tmp_path, capsys):
    from hsad_scale.pipeline import saved_method
    from hsad_scale.stats import BackgroundStats

    (tmp_path / "rx" / "model").mkdir(parents=True)
    BackgroundStats.from_pixels(np.random.default_rng(0).normal(size=(50, 3))).save(tmp_path / "rx" / "model" / "rx_stats.npz")
    assert saved_method(tmp_path / "rx") == "rx"
    (tmp_path / "empty").mkdir()
    assert main(["detect", str(tmp_path / "rx"), "--model", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no saved model" in capsys.readouterr().err
    assert main(["detect", str(tmp_path / "rx"), "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("scaling", ["standardise", "band-minmax", "global-minmax"])
def test_one_pass_scaling_and_sample_equal_numpy_and_the_sample_pass(small_cube, client, scaling):
    ds = cubes.open_cube(small_cube)
    values = ds[cubes.CUBE].values.copy()
    values[:, 5, 3:9] = np.nan  # invalid pixels are left out of the scaling
    cube = xr.DataArray(values, dims=("band", "y", "x")).chunk({"band": -1, "y": 17, "x": 13})
    config = ae.AEConfig(scaling=scaling, max_train_pixels=500, seed=4)
    together, pixels = learned.scaling_and_sample(cube, config)
    reference = ae.BandScaling.from_pixels(values.reshape(values.shape[0], -1).T, scaling)
    np.testing.assert_allclose(together.offset, reference.offset, rtol=1e-10)
    np.testing.assert_allclose(together.scale, reference.scale, rtol=1e-10)
    np.testing.assert_array_equal(pixels, learned.sample_pixels(cube, 500, seed=4))
    assert len(pixels) <= 500 and np.isfinite(pixels).all()
    alone = learned.fit_scaling(cube, config)
    np.testing.assert_array_equal(alone.scale, together.scale)
    kept_scaling, kept = learned.scaling_and_sample(cube, config, keep_on_cluster=True)  # left on a worker
    assert isinstance(kept, learned.ClusterSample) and len(kept) == len(pixels)
    np.testing.assert_array_equal(kept.future.result(), pixels)
    np.testing.assert_array_equal(kept_scaling.scale, together.scale)
    models, rows, _ = learned.train_runs(client, cube, config.replace(max_steps=3), 1, kept_scaling, "cpu", kept)
    np.testing.assert_array_equal(rows, learned.normaliser_rows(pixels))


def test_a_small_scene_is_sampled_whole_each_pixel_once(small_cube):
    """Every valid pixel once when the scene is below the sample size, also where several
    equal tiles pick the same local indices (their tasks once shared one key)."""
    ds = cubes.open_cube(small_cube)
    cube = ds[cubes.CUBE]
    pixels = learned.sample_pixels(cube, 10**6)
    everything = cube.values.reshape(cube.shape[0], -1).T
    assert pixels.shape == everything.shape
    assert len(np.unique(pixels, axis=0)) == len(np.unique(everything, axis=0))
    np.testing.assert_array_equal(np.sort(pixels, axis=0), np.sort(everything, axis=0))
