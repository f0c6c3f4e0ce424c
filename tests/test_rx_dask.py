"""The Dask path (Zarr cube, tile reductions, map_blocks scoring on a LocalCluster of worker
processes) against a plain numpy float64 reference, on real scenes and tiny synthetic cubes."""

import numpy as np
import pytest

from conftest import load_mat_scene
from hsad_scale import cube as cubes
from hsad_scale.detectors.rx import rx_reference
from hsad_scale.evaluate import metrics
from hsad_scale.pipeline import fit_rx, rx_scores
from hsad_scale.synth import SceneSpec, synth


def _dask_rx(path):
    ds = cubes.open_cube(path)
    _, model = fit_rx(ds[cubes.CUBE])
    return rx_scores(ds[cubes.CUBE], model)["score"].values, ds


def test_real_scenes_match_numpy_reference_and_manifest_auc(had_dir, manifest, client, tmp_path):
    assert len(manifest) >= 13
    for row in manifest:
        store = cubes.ingest(had_dir / row["file"], tmp_path / f"{row['name']}.zarr", chunk=64)
        scores, ds = _dask_rx(store)
        cube, truth = load_mat_scene(had_dir, row)
        reference = rx_reference(cube.reshape(-1, cube.shape[2])).reshape(cube.shape[:2])
        np.testing.assert_allclose(scores, reference, rtol=1e-4, err_msg=row["name"])
        assert metrics(scores, ds[cubes.GROUND_TRUTH].values)["auc"] == pytest.approx(
            float(row["rx_auc_numpy"]), abs=1e-3), row["name"]
        np.testing.assert_array_equal(ds[cubes.GROUND_TRUTH].values, (truth > 0).astype(np.uint8))


@pytest.mark.parametrize("chunk", [(7, 13), (256, 256), (50, 3)])
def test_scores_do_not_depend_on_chunking(tmp_path, client, chunk):
    store = synth(tmp_path / "s.zarr", SceneSpec(60, 70, 9, seed=3), chunk=32)
    base, ds = _dask_rx(store)
    rechunked = ds.chunk({"y": chunk[0], "x": chunk[1]})
    _, model = fit_rx(rechunked[cubes.CUBE])
    other = rx_scores(rechunked[cubes.CUBE], model)["score"].values
    np.testing.assert_allclose(other, base, rtol=1e-5)
    pixels = ds[cubes.CUBE].values.reshape(9, -1).T
    np.testing.assert_allclose(base.ravel(), rx_reference(pixels), rtol=1e-4)


def test_invalid_pixels_score_nan_and_are_left_out_of_the_statistics(tmp_path, client):
    store = synth(tmp_path / "s.zarr", SceneSpec(40, 30, 6, seed=1), chunk=16)
    ds = cubes.open_cube(store).load()
    cube = ds[cubes.CUBE].values.copy()
    cube[:, 5, 7] = np.nan
    cube[2, 20, 3] = np.nan  # a NaN in one band invalidates the whole pixel
    cube[4, 11, 12] = np.inf  # so does an Inf (RX scores every pixel, then checks the non-finite scores)
    cube[:, 25, 1] = -np.inf
    ds[cubes.CUBE] = (("band", "y", "x"), cube)
    ds = ds.chunk({"y": 16, "x": 16})
    _, model = fit_rx(ds[cubes.CUBE])
    scores = rx_scores(ds[cubes.CUBE], model)["score"].values
    invalid = [(5, 7), (20, 3), (11, 12), (25, 1)]
    assert all(np.isnan(scores[r, c]) for r, c in invalid)
    assert np.isfinite(np.delete(scores.ravel(), [r * 30 + c for r, c in invalid])).all()
    pixels = cube.reshape(6, -1).T
    keep = np.isfinite(pixels.sum(axis=1))
    np.testing.assert_allclose(scores.ravel()[keep], rx_reference(pixels[keep]), rtol=1e-4)


def test_statistics_of_a_cube_split_along_bands_are_those_of_whole_spectra(client):
    import dask.array as da
    import xarray as xr

    from hsad_scale.stats import BackgroundStats
    from hsad_scale.tiles import background_stats

    values = np.random.default_rng(8).normal(size=(6, 20, 18)).astype(np.float32)
    cube = xr.DataArray(da.from_array(values, chunks=(2, 7, 9)), dims=("band", "y", "x"))
    got = background_stats(cube)
    want = BackgroundStats.from_pixels(values.reshape(6, -1).T)
    np.testing.assert_allclose(got.mean, want.mean, rtol=1e-10)
    np.testing.assert_allclose(got.scatter, want.scatter, rtol=1e-9)


def test_local_cluster_workers_fork_from_the_preloaded_server_with_the_worker_environment(client):
    """The LocalCluster's workers are children of the forkserver (not spawned by this
    process), start with hsad's tile modules imported, and have the worker environment."""
    import os
    import sys

    from hsad_scale.cluster import WORKER_ENV

    def probe():
        return os.getppid(), "hsad_scale.tiles" in sys.modules, {k: os.environ.get(k) for k in WORKER_ENV}

    for parent, preloaded, env in client.run(probe).values():
        assert parent != os.getpid() and preloaded
        assert env == {k: str(v) for k, v in WORKER_ENV.items()}


def test_tile_by_tile_evaluation_equals_in_memory_on_real_scenes(had_dir, manifest, client):
    """Counting on the cluster, tile by tile (odd 7 x 13 tiles), gives the figures and the
    curve of the in-memory evaluation exactly."""
    import dask.array as da

    from hsad_scale import evaluate
    from hsad_scale.roc_tiles import roc_counts_map

    for row in manifest:
        cube, truth = load_mat_scene(had_dir, row)
        scores = rx_reference(cube.reshape(-1, cube.shape[2])).reshape(cube.shape[:2]).astype(np.float32)
        scores[::17, ::5] = np.nan
        in_memory, (fpr, tpr) = evaluate.metrics_and_roc(scores, truth)
        counts = roc_counts_map(da.from_array(scores, chunks=(7, 13)), da.from_array(truth, chunks=(13, 7)))
        tiled, (tiled_fpr, tiled_tpr) = evaluate.metrics_from_counts(counts)
        assert tiled == in_memory, row["name"]
        np.testing.assert_array_equal(tiled_fpr, fpr)
        np.testing.assert_array_equal(tiled_tpr, tpr)


def test_detect_evaluates_large_maps_tile_by_tile(tmp_path, client, monkeypatch):
    """Above roc_tiles.IN_MEMORY_MAX_PIXELS, hsad detect counts dask-backed maps tile by tile
    (never whole numpy maps), and its figures equal an in-memory evaluation of the written scores."""
    import json

    import xarray as xr

    from hsad_scale import evaluate, pipeline, roc_tiles

    store = synth(tmp_path / "s.zarr", SceneSpec(90, 80, 8, seed=5), chunk=32)
    seen = []
    original = roc_tiles.roc_counts_map

    def spy(score, truth):
        seen.append((type(score), type(truth)))
        return original(score, truth)

    monkeypatch.setattr(roc_tiles, "IN_MEMORY_MAX_PIXELS", 1000)
    monkeypatch.setattr(roc_tiles, "roc_counts_map", spy)
    out = pipeline.run_detect(store, tmp_path / "run", client=client, quiet=True)
    assert seen and all(s is roc_tiles.da.Array and t is roc_tiles.da.Array for s, t in seen)
    written = xr.open_zarr(out / "scores.zarr", consolidated=False)["score"].values
    truth = cubes.open_cube(store)[cubes.GROUND_TRUTH].values
    figures = json.loads((out / "metrics.json").read_text())
    assert figures.pop("objects")["at_pfa"]["targets"] > 0  # object-level figures of the run's detections
    assert figures == pytest.approx(evaluate.metrics(written, truth))


def test_worker_logs_are_silenced_before_a_local_cluster_closes(client):
    """dask_client silences its workers' logs before closing (no heartbeat traceback after a
    run that succeeded); until then they log errors as usual."""
    import logging

    from hsad_scale.cluster import quiet_worker_logs

    def level():
        return logging.getLogger("distributed").getEffectiveLevel()

    before = client.run(level)
    assert logging.CRITICAL not in before.values()
    quiet_worker_logs(client)
    try:
        assert set(client.run(level).values()) == {logging.CRITICAL}
    finally:
        restore = before[next(iter(before))]
        client.run(lambda: logging.getLogger("distributed").setLevel(restore))
