"""Background region (``--background-mask``, ``background_mask=``): the statistics of the
statistical detectors come from the mask's pixels only, every pixel is scored; on a real
scene against a numpy reference, the CLI against the library, bad masks refused (exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import hsad_scale.accessor  # noqa: F401  (registers ds.hsad)
from conftest import load_mat_scene
from hsad_scale import cube as cubes, fitting
from hsad_scale.cli import main
from hsad_scale.errors import InputError
from hsad_scale.stats import BackgroundStats

SCENE = "abu-airport-1"


@pytest.fixture(scope="module")
def scene(had_dir, manifest, tmp_path_factory):
    """(cube store tiled 32 x 32, image (B, y, x) float64 read directly, truth, background mask)."""
    row = next(r for r in manifest if r["name"] == SCENE)
    store = cubes.ingest(had_dir / row["file"], tmp_path_factory.mktemp("bm") / "scene.zarr", chunk=32)
    image, truth = load_mat_scene(had_dir, row)
    ny, nx = truth.shape
    mask = (truth == 0) & (np.arange(nx)[None, :] < nx * 2 // 3)  # no target, left two thirds
    mask[:10] = False
    return store, image.transpose(2, 0, 1), truth, mask


def _masked_rx_reference(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RX of EVERY pixel with the mean and covariance of the masked pixels only (numpy)."""
    pixels = image.reshape(image.shape[0], -1).T
    background = pixels[mask.ravel()]
    centred = pixels - background.mean(axis=0)
    inv = np.linalg.inv(np.cov(background, rowvar=False))
    return np.einsum("ij,jk,ik->i", centred, inv, centred).reshape(mask.shape)


def test_rx_with_a_mask_equals_the_numpy_reference_and_all_ones_equals_no_mask(scene):
    store, image, _, mask = scene
    cube = cubes.open_cube(store)[cubes.CUBE]
    det = fitting.fit_detector(cube, "rx", background_mask=mask)
    assert det.stats.count == mask.sum() and det.whitener.ridge == 0.0
    got = det.score(cube)["score"].values
    want = _masked_rx_reference(image, mask)
    assert np.isfinite(got).all()  # every pixel scored, outside the mask too
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-3 * want.max())
    unmasked = fitting.fit_detector(cube, "rx").score(cube)["score"].values
    assert not np.allclose(unmasked, got, rtol=1e-2)  # the mask changes the statistics
    ones = fitting.fit_detector(cube, "rx", background_mask=np.ones(mask.shape, dtype=np.uint8))
    np.testing.assert_allclose(ones.score(cube)["score"].values, unmasked, rtol=1e-6)


def test_every_statistical_detector_fits_on_the_mask_only(scene):
    store, image, _, mask = scene
    cube = cubes.open_cube(store)[cubes.CUBE]
    want = BackgroundStats.from_pixels(image.reshape(image.shape[0], -1).T[mask.ravel()])
    for method, settings in (("utd", None), ("rxd-utd", None), ("local-rx", {"inner": 3, "outer": 9})):
        det = fitting.fit_detector(cube, method, settings, background_mask=mask)
        assert det.stats.count == want.count, method
        np.testing.assert_allclose(det.stats.mean, want.mean, rtol=1e-9)
        np.testing.assert_allclose(det.stats.covariance, want.covariance, rtol=1e-6, atol=1e-9 * want.covariance.max())
        assert np.isfinite(det.score(cube)["score"].values).all(), method
    clustered = fitting.fit_detector(cube, "cluster-rx", {"clusters": 3}, background_mask=mask)
    assert sum(s.count for s in clustered.stats) == mask.sum()  # classes of masked pixels only
    with pytest.raises(InputError, match="statistical detectors only"):
        fitting.fit_detector(cube, "ae", background_mask=mask)
    with pytest.raises(InputError, match=r"shape \(50, 100\), the cube's \(y, x\) is \(100, 100\)"):
        fitting.fit_detector(cube, "rx", background_mask=mask[:50])


def test_cli_and_library_give_the_same_scores_and_run_json_records_the_mask(scene, tmp_path, client):
    import rasterio

    store, _, _, mask = scene
    tif = tmp_path / "background.tif"
    with rasterio.open(tif, "w", driver="GTiff", width=mask.shape[1], height=mask.shape[0], count=1,
                       dtype="uint8") as f:
        f.write(mask.astype(np.uint8), 1)
    out = tmp_path / "run"
    assert main(["detect", str(store), "--method", "rx", "--background-mask", str(tif), "--out", str(out),
                 "--dask-address", client.scheduler.address]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["background_mask"] == {"path": str(tif), "pixels": int(mask.sum()), "of_pixels": mask.size}
    assert run["background"]["pixels"] == int(mask.sum())
    cli = xr.open_zarr(out / "scores.zarr", consolidated=False)["score"].values
    ds = cubes.open_cube(store)
    np.testing.assert_array_equal(ds.hsad.detect("rx", background_mask=tif)["score"].values, cli)
    np.testing.assert_array_equal(ds.hsad.detect("rx", background_mask=mask)["score"].values, cli)


def test_wrong_shape_or_an_ae_is_exit_2_with_one_line_and_nothing_written(scene, had_dir, manifest, tmp_path,
                                                                            capsys):
    store, _, _, mask = scene
    np.save(tmp_path / "small.npy", mask[:, :60])
    row = next(r for r in manifest if r["name"] == SCENE)
    for src in (store, had_dir / row["file"]):  # a cube store (its metadata) and a scene file (after ingest)
        out = tmp_path / "out"
        assert main(["detect", str(src), "--background-mask", str(tmp_path / "small.npy"), "--out", str(out)]) == 2
        # a scene file is ingested first (its "[hsad] ingest done" stage line), then refused
        err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[hsad] ingest done")]
        assert len(err) == 1 and err[0].startswith("hsad: error: background mask has shape (100, 60), "), err
        assert not out.exists() and not list(tmp_path.glob(".out*"))
    np.save(tmp_path / "good.npy", mask)
    for args, message in ((["--method", "ae"], "statistical detectors only"),
                          (["--model", str(tmp_path / "good.npy")], None)):
        assert main(["detect", str(store), "--background-mask", str(tmp_path / "good.npy"), *args,
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and (message is None or message in err), err
        assert not (tmp_path / "o").exists()
    np.save(tmp_path / "empty.npy", np.zeros_like(mask))
    assert main(["detect", str(store), "--background-mask", str(tmp_path / "empty.npy"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "selects no pixel" in capsys.readouterr().err


def test_polygons_in_the_scenes_crs_are_the_pixels_whose_centres_they_hold(tmp_path, client):
    import geopandas
    from shapely.geometry import box

    from hsad_scale.synth import SceneSpec, synth

    store = synth(tmp_path / "s.zarr", SceneSpec(30, 40, 8, seed=3), chunk=16)  # EPSG:32633, 30 m pixels
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:20, 3:25] = True
    x0, y0 = 500000.0, 4500000.0
    polygon = box(x0 + 30 * 3, y0 - 30 * 20, x0 + 30 * 25, y0 - 30 * 5)  # edges of rows 5..19, columns 3..24
    geojson = tmp_path / "background.geojson"
    geopandas.GeoDataFrame(geometry=[polygon], crs="EPSG:32633").to_file(geojson, driver="GeoJSON")
    out = tmp_path / "run"
    assert main(["detect", str(store), "--background-mask", str(geojson), "--out", str(out),
                 "--dask-address", client.scheduler.address]) == 0
    assert json.loads((out / "run.json").read_text())["background_mask"]["pixels"] == mask.sum()
    cli = xr.open_zarr(out / "scores.zarr", consolidated=False)["score"].values
    np.testing.assert_array_equal(cubes.open_cube(store).hsad.detect("rx", background_mask=mask)["score"].values, cli)
    # the same rectangle in geographic coordinates is reprojected onto the scene's grid
    lonlat = geopandas.GeoDataFrame(geometry=[polygon.buffer(-1.0)], crs="EPSG:32633").to_crs("EPSG:4326")
    lonlat.to_file(tmp_path / "lonlat.geojson", driver="GeoJSON")
    cube = cubes.open_cube(store)[cubes.CUBE]
    det = fitting.fit_detector(cube, "rx", background_mask=tmp_path / "lonlat.geojson")
    assert det.stats.count == mask.sum()
