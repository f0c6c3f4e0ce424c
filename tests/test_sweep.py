"""Sweeps of every registered detector: grid files for the statistical detectors (a method
without settings is a grid of one), trials evaluated tile by tile from a written score map
with the figures of the plain numpy reference (hsad_scale.evaluate), and ``hsad sweep`` of
local RX windows on a real scene."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

import hsad_scale.accessor  # noqa: F401  (registers ds.hsad)
from hsad_scale import cube as cubes, evaluate, roc_tiles, sweep as sweeps
from hsad_scale.cli import main
from hsad_scale.errors import InputError

FIGURES = ("auc", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "tpr_at_fpr_0.1", "pauc_0.01", "n_anomaly", "n_background")


@pytest.fixture(scope="module")
def scene(had_dir, manifest, tmp_path_factory):
    """A real 100 x 100 scene as a cube store in 32 x 32 tiles (16 tiles, ragged at the borders)."""
    row = next(r for r in manifest if r["name"] == "abu-airport-1")
    return cubes.ingest(had_dir / row["file"], tmp_path_factory.mktemp("sweep") / "scene.zarr", chunk=32)


def _reference(store, method: str, **settings) -> tuple[dict, np.ndarray]:
    """Figures of the plain numpy evaluation of the whole map in memory, and the map."""
    ds = cubes.open_cube(store)
    score = ds.hsad.detect(method, **settings)["score"].values
    return evaluate.metrics(score, ds[cubes.GROUND_TRUTH].values), score


# --------------------------------------------------------------------------------------
# grid files of the statistical detectors


def test_a_method_without_settings_is_a_grid_of_one():
    spec = sweeps.parse_grid({"method": "rx", "repeats": 2}, "grid.yaml")
    assert spec.preset is None and spec.parameters == []
    assert [(s.id, s.values, s.label) for s in spec.settings()] == [("s0", {}, "defaults")]
    assert len(spec.trials()) == 2 and spec.config(spec.settings()[0]).to_dict() == {}


def test_statistical_settings_are_swept_with_the_seed_advanced_by_repeat():
    spec = sweeps.parse_grid({"method": "local-rx", "fixed": {"inner": 3}, "grid": {"outer": [11, 21]}})
    assert [s.label for s in spec.settings()] == ["outer=11", "outer=21"]
    assert spec.config(spec.settings()[1], repeat=1).to_dict() == {"inner": 3, "outer": 21, "covariance": "global",
                                                                   "components": 20}
    clusters = sweeps.parse_grid({"method": "cluster-rx", "grid": {"clusters": [2, 3]}})
    assert [clusters.config(s, r).seed for s in clusters.settings() for r in (0, 1)] == [0, 1, 0, 1]


@pytest.mark.parametrize("grid, message", [
    ({"method": "rx", "grid": {"epochs": [1]}}, "unknown rx setting(s) in grid: epochs; valid: none"),
    ({"method": "local-rx", "grid": {"clusters": [2]}}, "unknown local-rx setting(s) in grid: clusters; valid: "),
    ({"method": "local-rx"}, "grid must map at least one setting"),
    ({"method": "local-rx", "grid": {"outer": [11, 4]}}, "grid setting outer=4: "),
    ({"method": "cluster-rx", "preset": "default-ae", "grid": {"clusters": [2]}}, "cluster-rx has no presets"),
    ({"method": "rx-nope"}, "method must be one of rx"),
])
def test_statistical_grid_files_are_validated_with_clear_messages(grid, message):
    with pytest.raises(InputError) as error:
        sweeps.parse_grid(grid, "grid.yaml")
    assert message in str(error.value) and "grid.yaml" in str(error.value), str(error.value)


# --------------------------------------------------------------------------------------
# trials: tile-wise counting equals the numpy reference


def test_trial_is_counted_tile_by_tile_with_the_figures_of_the_numpy_reference(scene, monkeypatch):
    """Above roc_tiles.IN_MEMORY_MAX_PIXELS a trial counts its written map tile by tile
    (dask arrays, never whole numpy maps), and its figures and curve equal evaluate.metrics
    of the same detector's map in memory."""
    seen = []
    original = roc_tiles.roc_counts_map

    def spy(score, truth):
        seen.append((type(score), type(truth), score.numblocks))
        return original(score, truth)

    monkeypatch.setattr(roc_tiles, "IN_MEMORY_MAX_PIXELS", 1000)
    monkeypatch.setattr(roc_tiles, "roc_counts_map", spy)
    spec = sweeps.parse_grid({"method": "local-rx", "fixed": {"inner": 3}, "grid": {"outer": [11]}})
    row = sweeps.run_trial(scene, spec, spec.settings()[0], 0)
    assert seen == [(roc_tiles.da.Array, roc_tiles.da.Array, (4, 4))]
    want, score = _reference(scene, "local-rx", inner=3, outer=11)
    assert {k: row[k] for k in FIGURES} == pytest.approx(want, abs=1e-12)
    fpr, tpr = evaluate.roc(score, cubes.open_cube(scene)[cubes.GROUND_TRUTH].values)
    np.testing.assert_array_equal(row["roc_tpr"], np.interp(evaluate.FPR_GRID, fpr, tpr).astype(np.float32))
    assert row["error"] is None and row["train_seconds"] > 0 and row["device"] == "cpu"


def test_a_grid_of_one_rx_sweep_writes_its_table(scene, tmp_path):
    spec = sweeps.parse_grid({"method": "rx"}, "grid.yaml")
    best = sweeps.run_sweep(scene, spec, tmp_path / "rx")
    table = pd.read_csv(tmp_path / "rx" / "results.csv")
    want, _ = _reference(scene, "rx")
    assert len(table) == 1 and table["error"].isna().all() and table["setting"].tolist() == ["defaults"]
    assert table["auc"].iloc[0] == pytest.approx(want["auc"], abs=1e-12)
    assert best["setting"] == "defaults" and best["config"] == {} and best["mean"] == pytest.approx(want["auc"])


# --------------------------------------------------------------------------------------
# hsad sweep of local RX windows (Prefect flow, cluster tasks)


def test_hsad_sweep_of_local_rx_windows_on_a_real_scene(scene, client, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"method": "local-rx", "fixed": {"inner": 3}, "grid": {"outer": [11, 21]}}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(scene), "--grid", str(grid), "--out", str(out),
                 "--dask-address", client.scheduler.address]) == 0
    table = pd.read_csv(out / "results.csv")
    assert table["outer"].tolist() == [11, 21] and table["error"].isna().all()
    assert (table["method"] == "local-rx").all()
    for outer, auc in zip(table["outer"], table["auc"]):
        assert auc == pytest.approx(_reference(scene, "local-rx", inner=3, outer=int(outer))[0]["auc"], abs=1e-12)
    best = json.loads((out / "best.json").read_text())
    assert best["values"]["outer"] == int(table.loc[table["auc"].idxmax(), "outer"])
    assert best["config"] == {"inner": 3, "outer": best["values"]["outer"], "covariance": "global", "components": 20}
    assert (out / "roc-outer.png").stat().st_size > 10_000


def test_hsad_sweep_setting_the_method_lacks_is_exit_2_before_any_cluster(scene, tmp_path, capsys, monkeypatch):
    import flows
    from hsad_scale import cluster

    def no_start(*args, **kwargs):
        raise AssertionError("a cluster or Prefect was started")

    monkeypatch.setattr(flows, "start_prefect", no_start)
    monkeypatch.setattr(cluster, "dask_client", no_start)
    grid = tmp_path / "grid.yaml"
    grid.write_text("method: local-rx\ngrid: {outer: [11, 21], clusters: [2]}\n")
    assert main(["sweep", str(scene), "--grid", str(grid), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("hsad: error: ") and "unknown local-rx setting(s) in grid: " \
        "clusters" in err, err
    assert not (tmp_path / "out").exists()
