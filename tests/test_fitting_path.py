"""One fitting path: ``hsad detect`` (pipeline), the accessor and the sweep give the same
scores (the sweep: the same figures) for the same settings of every method (they all fit and
score through hsad_scale.fitting); the CLI takes every registered method and refuses a
--method other than the saved model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import hsad_scale.accessor  # noqa: F401  (registers ds.hsad)
from hsad_scale import cube as cubes, evaluate, sweep as sweeps
from hsad_scale.cli import main
from hsad_scale.synth import SceneSpec, synth

AE = {"members": 1, "max_steps": 25, "latent": 2, "width": 8, "max_train_pixels": 900}


@pytest.fixture(scope="module")
def small_scene(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(30, 40, 10, seed=5), chunk=16)


def test_pipeline_accessor_and_sweep_agree_on_the_same_ae_settings(small_scene, tmp_path, client):
    out = tmp_path / "run"
    sets = [arg for k, v in AE.items() for arg in ("--set", f"{k}={v}")]
    assert main(["detect", str(small_scene), "--method", "ae", *sets, "--device", "cpu", "--out", str(out),
                 "--dask-address", client.scheduler.address]) == 0
    cli = xr.open_zarr(out / "scores.zarr", consolidated=False)["score_runs"].isel(run=0).values

    ds = cubes.open_cube(small_scene)
    accessor = ds.hsad.detect("ae", client=client, device="cpu", **AE)["score_runs"].isel(run=0).values
    np.testing.assert_allclose(accessor, cli, rtol=1e-5, atol=1e-6)

    spec = sweeps.parse_grid({"method": "ae", "fixed": {k: v for k, v in AE.items() if k != "latent"},
                              "grid": {"latent": [AE["latent"]]}}, "grid.yaml")
    row = sweeps.run_trial(small_scene, spec, spec.settings()[0], 0, device="cpu")
    truth = ds[cubes.GROUND_TRUTH].values
    assert row["auc"] == pytest.approx(evaluate.metrics(cli, truth)["auc"], abs=1e-6)
    assert row["tpr_at_fpr_0.01"] == pytest.approx(evaluate.metrics(cli, truth)["tpr_at_fpr_0.01"], abs=1e-6)


@pytest.mark.parametrize("method, sets", [("local-rx", ["inner=3", "outer=9"]), ("cluster-rx", ["clusters=3"]),
                                          ("rxd-utd", [])])
def test_every_registered_method_runs_from_the_cli_and_equals_the_accessor(small_scene, tmp_path, client, method,
                                                                           sets):
    out = tmp_path / method
    args = [a for s in sets for a in ("--set", s)]
    assert main(["detect", str(small_scene), "--method", method, *args, "--out", str(out),
                 "--dask-address", client.scheduler.address]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["method"] == method and json.loads((out / "model" / "detector.json").read_text())["method"] == method
    cli = xr.open_zarr(out / "scores.zarr", consolidated=False)["score"].values
    settings = {k: int(v) for k, v in (s.split("=") for s in sets)}
    accessor = cubes.open_cube(small_scene).hsad.detect(method, **settings)["score"].values
    np.testing.assert_allclose(accessor, cli, rtol=1e-5, atol=1e-6 * np.nanmax(np.abs(cli)))
    # the sweep's trial of the same settings: the figures of the CLI's map
    swept = dict(list(settings.items())[:1])
    spec = sweeps.parse_grid({"method": method, "fixed": {k: v for k, v in settings.items() if k not in swept},
                              "grid": {k: [v] for k, v in swept.items()}}, "grid.yaml")
    row = sweeps.run_trial(small_scene, spec, spec.settings()[0], 0)
    want = evaluate.metrics(cli, cubes.open_cube(small_scene)[cubes.GROUND_TRUTH].values)
    assert {k: row[k] for k in ("auc", "tpr_at_fpr_0.01", "pauc_0.01")} == pytest.approx(
        {k: want[k] for k in ("auc", "tpr_at_fpr_0.01", "pauc_0.01")}, abs=1e-6)
    # the saved model scores the cube again, with its method read from it
    again = tmp_path / f"{method}-again"
    assert main(["detect", str(small_scene), "--model", str(out), "--out", str(again),
                 "--dask-address", client.scheduler.address]) == 0
    assert json.loads((again / "run.json").read_text())["method"] == method
    np.testing.assert_array_equal(xr.open_zarr(again / "scores.zarr", consolidated=False)["score"].values, cli)


def test_method_other_than_the_saved_models_is_exit_2_with_one_line(small_scene, tmp_path, capsys):
    from hsad_scale.detectors import base

    base.make("local-rx", {"inner": 3, "outer": 9}).fit(cubes.open_cube(small_scene)[cubes.CUBE]).save(tmp_path / "m")
    for method in ("rx", "vae"):
        assert main(["detect", str(small_scene), "--method", method, "--model", str(tmp_path / "m"),
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("hsad: error: --method ") and "which is local-rx" in err, err
        assert not (tmp_path / "o").exists()
    assert main(["detect", str(small_scene), "--method", "local-rx", "--set", "outer=4", "--out",
                 str(tmp_path / "o")]) == 2
    assert "outer must be odd" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert main(["detect", str(small_scene), "--method", "rx", "--preset", "default-ae", "--out",
                 str(tmp_path / "o")]) == 2
    assert "rx has no presets" in capsys.readouterr().err
