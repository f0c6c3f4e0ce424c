"""Detections: thresholds at a PFA, objects across tiles, vector files and COG rasters."""

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from scipy import ndimage

from hsad_scale import cube as cubes, detections as det, pipeline
from hsad_scale.errors import InputError
from hsad_scale.stats import BackgroundStats, whitener
from hsad_scale.synth import SceneSpec, synth
from tests.conftest import load_mat_scene

EIGHT = np.ones((3, 3), bool)
SCENES = ("abu-airport-1", "abu-beach-1", "abu-urban-2")


def _rx(cube: np.ndarray) -> np.ndarray:
    """Reference RX (squared Mahalanobis distance, float64) of a (rows, cols, bands) cube."""
    pixels = cube.reshape(-1, cube.shape[2])
    centred = pixels - pixels.mean(axis=0)
    inverse = np.linalg.pinv(np.cov(centred, rowvar=False))
    return np.einsum("ij,jk,ik->i", centred, inverse, centred).reshape(cube.shape[:2]).astype(np.float32)


@pytest.fixture(scope="module")
def real_maps(had_dir, manifest):
    rows = {r["name"]: r for r in manifest}
    return {name: (_rx(c), t) for name in SCENES for c, t in [load_mat_scene(had_dir, rows[name])]}


def _ties(scores, threshold):
    return int(np.count_nonzero(scores == np.float32(threshold)))


# --------------------------------------------------------------------------------------
# thresholds


@pytest.mark.parametrize("pfa", [1e-3, 1e-2, 0.1, 0.37])
def test_empirical_threshold_is_the_exact_quantile_on_real_scenes(real_maps, pfa):
    for name, (scores, _) in real_maps.items():
        scores = scores.copy()
        scores[:3, :5] = np.nan  # invalid pixels are left out of N
        finite = np.sort(scores[np.isfinite(scores)])[::-1]
        found = det.thresholds(xr.DataArray(scores, dims=("y", "x")).chunk({"y": 7, "x": 13}), [pfa])
        threshold, flagged = found.empirical[pfa]
        k = int(np.floor(pfa * finite.size))
        assert found.n_valid == finite.size
        assert threshold == finite[k - 1], name  # the k-th largest score, exactly
        assert flagged == np.count_nonzero(scores >= np.float32(threshold))
        # the documented error: below one pixel, plus the pixels tied with the threshold
        assert -1 < flagged - pfa * finite.size < 1 + _ties(scores, threshold)


def test_selection_keys_order_every_float32():
    values = np.array([-np.inf, -3e38, -1.5, -1e-40, -0.0, 0.0, 1e-45, 1e-40, 2.0, 3e38, np.inf], np.float32)
    keys = det.order_keys(values[1:-1])  # infinities are not finite scores
    assert np.all(np.diff(keys.astype(np.int64)) >= 0) and keys[3] == keys[4]  # -0.0 and 0.0 tie
    assert [det.key_value(k) for k in keys] == [float(v) + 0.0 for v in values[1:-1]]
    assert det.thresholds(np.full((4, 4), 2.5, np.float32), [0.5]).empirical[0.5] == (2.5, 16)  # all tied
    assert det.thresholds(np.arange(10, dtype=np.float32).reshape(2, 5), [0.05]).empirical[0.05] == (np.inf, 0)  # k = 0
    with pytest.raises(InputError, match="no valid"):
        det.thresholds(np.full((3, 3), np.nan, np.float32), [0.1])
    for bad in (0, 1, -0.1, 2, "x"):
        with pytest.raises(InputError, match="pfa"):
            det.check_pfa(bad)


def test_chi2_threshold_flags_pfa_times_n_on_a_gaussian_cube():
    """On a Gaussian background, RX (squared Mahalanobis distance) follows chi-square with B
    degrees of freedom: the threshold flags P x N pixels within sampling error."""
    rng = np.random.default_rng(5)
    bands, n = 12, 400_000
    mixing = rng.normal(size=(bands, bands))
    pixels = (rng.normal(size=(n, bands)) @ mixing + rng.normal(size=bands) * 10).astype(np.float32)
    scores = whitener(BackgroundStats.from_pixels(pixels)).mahalanobis(pixels).astype(np.float32).reshape(400, 1000)
    for pfa in (1e-3, 1e-2):
        found = det.thresholds(xr.DataArray(scores, dims=("y", "x")).chunk(256), [pfa], chi2_pfa=pfa, bands=bands)
        threshold, flagged = found.chi2
        from scipy.stats import chi2

        assert threshold == pytest.approx(chi2.isf(pfa, bands), rel=1e-6)
        assert flagged == np.count_nonzero(scores >= np.float32(threshold))
        expected = pfa * n
        assert abs(flagged - expected) < 4 * np.sqrt(expected * (1 - pfa)), (pfa, flagged, expected)


def test_chi2_rule_is_for_rx_only_and_reported_on_real_scenes(real_maps):
    scores, _ = real_maps["abu-airport-1"]
    frame, record = det.run_detections(scores, pfa=1e-3, rule="chi2", bands=205)
    assert record["rule"] == "chi2" and record["threshold"] == record["chi2"]["threshold"]
    assert record["flagged_pixels"] == np.count_nonzero(scores >= np.float32(record["threshold"]))
    assert record["chi2"]["flagged_over_expected"] > 5  # the real background is far from Gaussian
    with pytest.raises(InputError, match="RX"):
        det.run_detections(scores, rule="chi2")
    with pytest.raises(InputError, match="RX"):
        pipeline.DetectOptions(method="ae", threshold="chi2")


# --------------------------------------------------------------------------------------
# objects across tiles


@pytest.mark.parametrize("tile", [(7, 13), (256, 256)])
@pytest.mark.parametrize("pfa", [1e-2, 0.1])
def test_objects_equal_scipy_label_on_the_whole_map(real_maps, tile, pfa):
    for name, (scores, _) in real_maps.items():
        threshold = det.thresholds(scores, [pfa]).empirical[pfa][0]
        stats, lookups, data, _ = det.find_objects(scores, threshold, tile=tile)
        reference, n = ndimage.label(scores >= np.float32(threshold), structure=EIGHT)
        assert len(stats["pixels"]) == n, name
        labels = np.concatenate([strip for _, strip in det.label_rows(data, threshold, lookups)])
        # the same partition of the pixels: one object id per reference label and back
        inside = reference > 0
        pairs = np.unique(np.stack([reference[inside], labels[inside]]), axis=1)
        assert pairs.shape[1] == n and len(np.unique(pairs[1])) == n and not labels[~inside].any()
        idx = np.arange(1, n + 1)
        ref_pixels = ndimage.sum_labels(inside, reference, idx)
        ref_peaks = ndimage.maximum(scores, reference, idx)
        rows, cols = np.indices(scores.shape)
        at_peak = inside & (scores == ref_peaks[np.maximum(reference - 1, 0)])  # ties: the first in row-major order
        ref_peak_pos = np.array([np.argwhere(at_peak & (reference == i))[0] for i in idx])
        order = np.lexsort((ref_peak_pos[:, 1], ref_peak_pos[:, 0], -ref_peaks))  # ranked as the detections
        np.testing.assert_array_equal(stats["pixels"], ref_pixels[order])
        np.testing.assert_array_equal(stats["peak_score"], ref_peaks[order].astype(np.float64))
        np.testing.assert_array_equal(np.stack([stats["peak_row"], stats["peak_col"]], 1), ref_peak_pos[order])
        np.testing.assert_allclose(stats["sum_row"], ndimage.sum_labels(rows, reference, idx)[order])
        np.testing.assert_allclose(stats["sum_score"], ndimage.sum_labels(scores.astype(np.float64), reference,
                                                                          idx)[order], rtol=1e-9)
        boxes = ndimage.find_objects(reference)
        assert [(stats["row_min"][i], stats["col_max"][i]) for i in range(n)] == [
            (boxes[j][0].start, boxes[j][1].stop - 1) for j in order]
        # ids follow the peaks, highest first
        assert np.all(np.diff(stats["peak_score"]) <= 0)


@pytest.mark.parametrize("shape", [(1, 500), (500, 1)])
def test_single_line_maps_give_objects_files_and_a_map(shape, tmp_path):
    from hsad_scale import plots

    scores = np.random.default_rng(2).gamma(2.0, size=shape).astype(np.float32)
    truth = (scores > 6).astype(np.uint8)
    frame, record = det.run_detections(scores, tmp_path, pfa=0.05, truth=truth, tile=(7, 7))
    reference, n = ndimage.label(scores >= np.float32(record["threshold"]), structure=EIGHT)
    assert record["objects"] == len(frame) == n and record["object_evaluation"]["at_pfa"]["targets"] > 0
    fig = plots.plot_maps({"RX": scores}, truth, outlines=list(frame.geometry))  # no contour of a single line
    assert fig.axes[0].get_legend() is not None


def test_objects_touching_only_across_tile_corners_are_merged():
    mask = np.zeros((8, 8), np.float32)
    mask[3, 3] = mask[4, 4] = 1  # diagonal neighbours in four different 4 x 4 tiles
    mask[3, 4 + 3] = mask[4, 4 + 2] = 1  # an anti-diagonal pair across a tile row border
    stats, _, _, _ = det.find_objects(mask, 0.5, tile=(4, 4))
    assert list(stats["pixels"]) == [2, 2]


@pytest.mark.parametrize("tile", [(7, 13), (256, 256)])
def test_object_level_figures_equal_a_whole_map_reference(real_maps, tile):
    for name, (scores, truth) in real_maps.items():
        truth_labels, n_targets = ndimage.label(truth > 0, structure=EIGHT)
        peaks = ndimage.maximum(scores, truth_labels, np.arange(1, n_targets + 1))
        found = det.thresholds(scores, det.SWEEP_PFAS)
        result = det.object_evaluation(scores, truth, found, 1e-2, found.empirical[1e-2][0], det.MapGrid.of(scores),
                                       tile=tile)
        assert [r["pfa"] for r in result["sweep"]] == list(det.SWEEP_PFAS)
        # the same figures from the labelling pass of run_detections (one pass for every threshold)
        assert det.run_detections(scores, pfa=1e-2, truth=truth, tile=tile)[1]["object_evaluation"] == result
        for row in result["sweep"] + [result["at_pfa"]]:
            threshold = np.inf if row["threshold"] is None else row["threshold"]  # None: PFA x N < 1, nothing flagged
            assert (row["threshold"] is None) == (row["pfa"] * scores.size < 1)
            mask = scores >= np.float32(threshold)
            labels, n = ndimage.label(mask, structure=EIGHT)
            with_truth = np.unique(labels[(truth > 0) & mask])
            assert row["objects"] == n and row["false_alarm_objects"] == n - with_truth.size, name
            assert row["targets"] == n_targets and row["targets_detected"] == int(np.sum(peaks >= threshold))
            # a target counts as detected when one of its pixels is in a detection
            assert row["targets_detected"] == np.unique(truth_labels[mask & (truth_labels > 0)]).size


# --------------------------------------------------------------------------------------
# files: GeoParquet, GeoJSON, CSV, COG


def _georeferenced_map(shape=(600, 700), seed=3):
    from affine import Affine

    rng = np.random.default_rng(seed)
    scores = rng.gamma(2.0, size=shape).astype(np.float32)
    scores[100:104, 200:203] += 40
    scores[5, :3] = np.nan
    transform = Affine(30.0, 0, 500_000.0, 0, -30.0, 4_600_000.0)
    da_ = xr.DataArray(scores, dims=("y", "x"), name="score",
                       coords={"y": 4_600_000.0 - 30 * (np.arange(shape[0]) + 0.5),
                               "x": 500_000.0 + 30 * (np.arange(shape[1]) + 0.5)})
    return da_.rio.write_crs("EPSG:32633").rio.write_transform(transform).chunk(256)


def test_vector_files_read_back_with_crs_rows_and_lonlat(tmp_path):
    import geopandas as gpd
    import pandas as pd

    scores = _georeferenced_map()
    cube = xr.DataArray(np.random.default_rng(0).random((5, *scores.shape), np.float32), dims=("band", "y", "x"),
                        coords={"wavelength": ("band", [450.0, 550.0, 650.0, 750.0, 850.0])}).chunk(
        {"band": -1, "y": 256, "x": 256})
    frame, record = det.run_detections(scores, tmp_path, pfa=1e-3, cube=cube)
    n = record["objects"]
    assert n == len(frame) > 1 and frame["id"].tolist() == list(range(1, n + 1))
    for name in ("detections.parquet", "detections.geojson", "peaks.geojson"):
        back = gpd.read_parquet(tmp_path / name) if name.endswith("parquet") else gpd.read_file(tmp_path / name)
        assert len(back) == n and back.crs.to_epsg() == 32633, name
    back = gpd.read_parquet(tmp_path / "detections.parquet")
    assert back.geometry.geom_type.isin(["Polygon", "MultiPolygon"]).all() and back["peak"].crs.to_epsg() == 32633
    # the outline holds exactly its pixels: its area is pixels x 30 m x 30 m, as area_m2
    np.testing.assert_allclose(back.geometry.area, back["pixels"] * 900.0)
    np.testing.assert_allclose(back["area_m2"], back["pixels"] * 900.0)
    assert back.geometry.contains(back["peak"]).all()
    # the strongest object is the implanted one; its centroid in the CRS and in lon/lat
    first = back.iloc[0]
    assert (first["row_min"], first["row_max"], first["col_min"], first["col_max"]) == (100, 103, 200, 202)
    assert (first["x"], first["y"]) == (500_000 + 30 * 201.5, 4_600_000 - 30 * 102.0)
    from pyproj import Transformer

    lon, lat = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True).transform(first["x"], first["y"])
    assert (first["lon"], first["lat"]) == pytest.approx((lon, lat)) and 14 < lon < 16 and 41 < lat < 42
    np.testing.assert_allclose(first["spectrum"], cube.values[:, first["peak_row"], first["peak_col"]])
    table = pd.read_csv(tmp_path / "detections.csv")
    spectra = pd.read_csv(tmp_path / "spectra.csv")
    assert len(table) == n and list(spectra.columns) == ["id", "450", "550", "650", "750", "850"]
    assert record["files"] == ["detections.tif", "detections.parquet", "detections.geojson", "peaks.geojson",
                               "detections.csv", "spectra.csv"]


def test_rasters_are_valid_cogs_with_overviews_descriptions_and_nodata(tmp_path):
    import rasterio
    from rio_cogeo.cogeo import cog_validate

    from hsad_scale import outputs

    scores = _georeferenced_map()
    outputs.write_score_cog(scores, tmp_path / "scores.tif", rows_per_strip=100)
    frame, record = det.run_detections(scores, tmp_path, pfa=1e-3)
    for name in ("scores.tif", "detections.tif"):
        valid, errors, warnings = cog_validate(str(tmp_path / name))
        assert valid and not errors and not warnings, (name, errors, warnings)
        with rasterio.open(tmp_path / name) as tif:
            assert tif.overviews(1) == [2, 4] and tif.crs.to_epsg() == 32633 and tif.descriptions[0]
            assert tif.transform == scores.rio.transform() and tif.nodata is not None
            values = tif.read(1)
        if name == "scores.tif":
            np.testing.assert_array_equal(values, scores.values)
        else:
            assert values.dtype == np.uint32 and values[5, 0] == det.LABEL_NODATA
            inside = (values > 0) & (values != det.LABEL_NODATA)
            assert inside.sum() == frame["pixels"].sum() == record["flagged_pixels"]
            assert values[101, 201] == 1  # the highest peak is detection 1


# --------------------------------------------------------------------------------------
# hsad detect / hsad detections


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(64, 72, 16, seed=7), chunk=32)


def _hsad(*args):
    return subprocess.run([sys.executable, "-m", "hsad_scale.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_detect_writes_detections_cogs_and_records_both_thresholds(scene, tmp_path, client):
    from rio_cogeo.cogeo import cog_validate

    options = pipeline.DetectOptions(pfa=1e-2, normalise=True)
    run = pipeline.run_detect(scene, tmp_path / "run", options, client=client, quiet=True)
    record = json.loads((run / "run.json").read_text())
    found = record["detections"]
    assert found["pfa"] == 1e-2 and found["rule"] == "empirical" and found["chi2"]["degrees_of_freedom"] == 16
    assert found["empirical"]["threshold"] == found["threshold"] and found["objects"] >= 1
    assert record["options"]["pfa"] == 1e-2 and record["scores_tif"]["normalised"]["method"] == "min-max"
    for name in ("scores.tif", "detections/detections.tif"):
        assert cog_validate(str(run / name))[0]  # on the pixel grid: the synthetic cube has no CRS
    text = (run / "metrics.json").read_text()
    assert "Infinity" not in text and "NaN" not in text  # strict JSON (PFA x N < 1 records a None threshold)
    metrics = json.loads(text)
    assert metrics["objects"]["at_pfa"]["pfa"] == 1e-2 and len(metrics["objects"]["sweep"]) == len(det.SWEEP_PFAS)
    html = (run / "report.html").read_text()
    assert "<h2>Detections</h2>" in html and "empirical (used)" in html and "false-alarm objects" in html
    assert (run / "objects.png").is_file() and (run / "spectra.png").is_file()
    # the 0-1 raster ranks pixels as the scores do: same AUC
    import rasterio

    from hsad_scale.evaluate import metrics as roc_metrics

    with rasterio.open(run / "scores.tif") as tif:
        normalised = tif.read(1)
    truth = cubes.open_cube(scene)["ground_truth"].values
    assert np.nanmin(normalised) == 0 and np.nanmax(normalised) == 1
    assert roc_metrics(normalised, truth)["auc"] == pytest.approx(metrics["auc"], abs=1e-6)


def test_map_has_map_axes_a_legend_and_detection_outlines():
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    from hsad_scale import plots

    scores = _georeferenced_map()
    truth = np.zeros(scores.shape, np.uint8)
    truth[100:104, 200:203] = 1
    frame, _ = det.run_detections(scores, pfa=1e-4)
    fig = plots.plot_maps({"RX": scores}, truth, grid=det.MapGrid.of(scores), outlines=list(frame.geometry),
                          outline_label="detections")
    ax = fig.axes[0]
    assert "EPSG:32633" in ax.get_xlabel() and ax.get_xlim() == (500_000.0, 500_000.0 + 30 * 700)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ground truth", "detections"]
    lines = [c for c in ax.collections if isinstance(c, LineCollection) and not hasattr(c, "levels")]
    assert sum(len(c.get_segments()) for c in lines) >= len(frame)
    plt.close(fig)


def test_hsad_detections_rethresholds_a_run_without_rescoring(scene, tmp_path, client):
    run = pipeline.run_detect(scene, tmp_path / "run", client=client, quiet=True)
    before = (run / "scores.zarr" / "score" / "zarr.json").stat().st_mtime_ns
    refused = _hsad("detections", run, "--pfa", "1e-2")
    assert refused.returncode == 2 and "already exists" in refused.stderr and refused.stderr.count("\n") == 1
    done = _hsad("detections", run, "--pfa", "1e-2", "--threshold", "chi2", "--overwrite")
    assert done.returncode == 0, done.stderr
    record = json.loads((run / "run.json").read_text())["detections"]
    assert record["pfa"] == 1e-2 and record["rule"] == "chi2" and record["threshold"] == record["chi2"]["threshold"]
    assert json.loads((run / "metrics.json").read_text())["objects"]["at_pfa"]["pfa"] == 1e-2
    assert (run / "scores.zarr" / "score" / "zarr.json").stat().st_mtime_ns == before
    assert not list(run.glob(".detections*"))  # no temporary left
    bad = _hsad("detections", run, "--pfa", "2", "--overwrite")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--pfa" in bad.stderr, bad.stderr
    with pytest.raises(InputError, match="not a run folder"):
        pipeline.redo_detections(tmp_path, 1e-3)


def test_accessor_returns_a_geodataframe(scene):
    import geopandas as gpd

    ds = cubes.open_cube(scene)
    scores = ds.hsad.rx()
    frame = ds.hsad.detections(scores, pfa=1e-2)
    assert isinstance(frame, gpd.GeoDataFrame) and len(frame) == frame.attrs["detections"]["objects"] > 0
    assert frame.attrs["detections"]["object_evaluation"]["at_pfa"]["targets"] > 0
    assert len(frame.iloc[0]["spectrum"]) == 16
