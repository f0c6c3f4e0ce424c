"""The detector contract (hsad_scale.detectors.base, saved) and the detectors on it, each
against a numpy reference written here (or Spectral Python) on real scenes; the Dask path
on a LocalCluster of worker processes; scores that do not depend on the tiles; save/load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import spectral
from spectral.algorithms.spatial import inner_outer_window_mask_creator

from conftest import load_mat_scene
from hsad_scale import cube as cubes
from hsad_scale.detectors import base, saved
from hsad_scale.detectors.rx import rx_reference
from hsad_scale.errors import InputError
from hsad_scale.synth import SceneSpec, synth

#: scenes for the slower per-pixel references: integer and float sources, 64 to 205 bands,
#: one MATLAB v7.3 file
REFERENCE_SCENES = ("abu-airport-1", "hydice", "muufl-100x100")


def _row(manifest, name):
    return next(r for r in manifest if r["name"] == name)


def _scene(had_dir, manifest, name, tmp_path, chunk=256):
    """(cube DataArray from an ingested store, the scene (B, y, x) float64 read directly, truth)."""
    row = _row(manifest, name)
    store = cubes.ingest(had_dir / row["file"], tmp_path / f"{name}-{chunk}.zarr", chunk=chunk)
    image, truth = load_mat_scene(had_dir, row)
    return cubes.open_cube(store)[cubes.CUBE], image.transpose(2, 0, 1), truth


def _local_mean_rx_reference(image: np.ndarray, inner: int, outer: int, cov: np.ndarray) -> np.ndarray:
    """Per pixel: the mean of the pixels in Spectral Python's outer window less its inner
    window (its own mask function), then (x - m)^T pinv(cov) (x - m)."""
    bands, ny, nx = image.shape
    create_mask = inner_outer_window_mask_creator((ny, nx), inner, outer)
    inv = np.linalg.pinv(cov)
    out = np.empty((ny, nx))
    for i in range(ny):
        for j in range(nx):
            (ii0, ii1, ij0, ij1), (oi0, oi1, oj0, oj1) = create_mask(i, j)
            total = image[:, oi0:oi1, oj0:oj1].sum(axis=(1, 2))
            guard = image[:, ii0:ii1, ij0:ij1].sum(axis=(1, 2))
            count = (oi1 - oi0) * (oj1 - oj0) - (ii1 - ii0) * (ij1 - ij0)
            d = image[:, i, j] - (total - guard) / count
            out[i, j] = d @ inv @ d
    return out


# --------------------------------------------------------------------------------------
# the contract


def test_registry_lists_the_methods_and_rejects_unknown_methods_and_settings():
    from hsad_scale.detectors import LEARNED_METHODS, METHODS

    assert sorted(base.methods()) == sorted(METHODS)
    assert sorted(m for m in METHODS if base.detector_class(m).needs_torch) == sorted(LEARNED_METHODS)
    with pytest.raises(InputError, match="unknown method 'rxx'"):
        base.make("rxx")
    with pytest.raises(InputError, match="outer must be odd"):
        base.make("local-rx", {"inner": 5, "outer": 4})
    with pytest.raises(InputError, match="unknown setting"):
        base.make("cluster-rx", {"k": 3})
    with pytest.raises(InputError, match="holds 16 pixels, not more than components=20"):
        base.make("local-rx", {"inner": 3, "outer": 5, "covariance": "local"})
    with pytest.raises(ValueError, match="not fitted"):
        base.make("rx").score_pixels(np.zeros((3, 2)))


def test_global_rx_through_the_contract_is_the_pipeline_rx(tmp_path, client):
    from hsad_scale.pipeline import fit_rx, rx_scores

    store = synth(tmp_path / "s.zarr", SceneSpec(40, 50, 12, seed=2), chunk=16)
    cube = cubes.open_cube(store)[cubes.CUBE]
    stats, model = fit_rx(cube)
    want = rx_scores(cube, model)["score"].values
    det = base.make("rx").fit(cube)
    np.testing.assert_array_equal(det.score(cube)["score"].values, want)
    assert det.describe()["background"]["pixels"] == stats.count == 2000
    np.testing.assert_allclose(want.ravel(), rx_reference(cube.values.reshape(12, -1).T), rtol=1e-4)


def test_every_detector_saves_and_loads_with_the_same_scores_and_the_lookup_checks_the_method(tmp_path):
    image = np.random.default_rng(4).normal(size=(6, 30, 26)).astype(np.float32)
    image[:, 3, 4] = np.nan
    for method, settings in [("rx", None), ("utd", None), ("rxd-utd", None), ("local-rx", {"inner": 3, "outer": 9}),
                             ("local-rx", {"inner": 1, "outer": 7, "covariance": "local", "components": 3}),
                             ("cluster-rx", {"clusters": 3})]:
        det = base.make(method, settings).fit(image)
        folder = det.save(tmp_path / f"{method}-{len(list(tmp_path.iterdir()))}")
        meta = json.loads((folder / "detector.json").read_text())
        assert meta["method"] == method
        loaded = saved.load_detector(folder, method)
        assert loaded.settings == det.settings
        scores = det.score_image(image)
        np.testing.assert_array_equal(loaded.score_image(image), scores)
        assert np.isnan(scores[3, 4]) and np.isfinite(np.delete(scores.ravel(), 3 * 26 + 4)).all(), method
        assert saved.saved_method(folder) == method
        other = "rx" if method != "rx" else "utd"
        with pytest.raises(InputError, match=f"--method {other} does not match the saved model .* which is {method}"):
            saved.load_detector(folder, other)


def test_saved_lookup_reads_older_rx_folders_and_model_files_and_rejects_what_is_no_model(tmp_path):
    from hsad_scale.stats import BackgroundStats

    stats = BackgroundStats.from_pixels(np.random.default_rng(0).normal(size=(50, 4)))
    (tmp_path / "run" / "model").mkdir(parents=True)
    stats.save(tmp_path / "run" / "model" / "rx_stats.npz")  # a run folder written before detector.json
    for path in (tmp_path / "run", tmp_path / "run" / "model", tmp_path / "run" / "model" / "rx_stats.npz"):
        assert saved.saved_method(path) == "rx"
        np.testing.assert_array_equal(saved.load_detector(path).stats.scatter, stats.scatter)
    ae_folder = tmp_path / "ae" / "run-0"
    ae_folder.mkdir(parents=True)
    (ae_folder / "model.json").write_text(json.dumps({"config": {"kind": "ae"}}))
    assert saved.saved_method(tmp_path / "ae") == "ae"
    with pytest.raises(InputError, match="--method vae does not match the saved model .* which is ae"):
        saved.check_method(tmp_path / "ae", "vae")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no saved model in"):
        saved.saved_method(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "detector.json").write_text("{not json")
    with pytest.raises(InputError, match="is not a saved hsad detector"):
        saved.saved_method(tmp_path / "bad")


def test_ae_saves_and_loads_through_the_contract(tmp_path):
    image = np.random.default_rng(1).normal(size=(5, 12, 10)).astype(np.float32)
    settings = {"members": 1, "max_steps": 3, "max_train_pixels": 200, "latent": 2, "width": 4}
    det = base.make("ae", settings).fit(image, client=None, device="cpu")
    scores = det.score_image(image)
    det.save(tmp_path / "m")
    assert saved.saved_method(tmp_path / "m") == "ae"
    loaded = saved.load_detector(tmp_path / "m", "ae")
    assert loaded.settings == det.settings
    np.testing.assert_allclose(loaded.score_image(image), scores, rtol=1e-5)
    with pytest.raises(InputError, match="which is ae"):
        saved.load_detector(tmp_path / "m", "vae")


# --------------------------------------------------------------------------------------
# the detectors against references, on real scenes


def test_local_rx_with_the_global_covariance_matches_a_direct_per_pixel_computation(had_dir, manifest, client,
                                                                                    tmp_path):
    for name in REFERENCE_SCENES:
        cube, image, _ = _scene(had_dir, manifest, name, tmp_path, chunk=64)
        det = base.make("local-rx", {"inner": 3, "outer": 11}).fit(cube)
        assert det.whitener.ridge == 0, name
        got = det.score(cube)["score"].values
        cov = np.cov(image.reshape(image.shape[0], -1))
        want = _local_mean_rx_reference(image, 3, 11, cov)
        np.testing.assert_allclose(got, want, rtol=1e-4, err_msg=name)
        np.testing.assert_allclose(det.score_image(cube.values), got, rtol=1e-6, err_msg=name)


def test_windowed_local_covariance_matches_spectral_python_on_a_crop(had_dir, manifest, tmp_path):
    _, image, _ = _scene(had_dir, manifest, "abu-airport-1", tmp_path)
    crop = image[::8, 40:62, 30:49]  # 26 bands, 22 x 19 pixels
    bands = crop.shape[0]
    exact = base.make("local-rx", {"inner": 3, "outer": 9, "covariance": "local", "components": bands}).fit(crop)
    want = spectral.rx(crop.transpose(1, 2, 0), window=(3, 9))
    np.testing.assert_allclose(exact.score_image(crop), want, rtol=1e-5)
    # projected onto 5 principal components: the same as Spectral Python on the projected crop
    projected = base.make("local-rx", {"inner": 3, "outer": 9, "covariance": "local", "components": 5}).fit(crop)
    basis = projected.window_model().projection
    centred = crop - projected.stats.mean[:, None, None]
    z = np.einsum("bp,byx->yxp", basis, centred)
    np.testing.assert_allclose(projected.score_image(crop), spectral.rx(z, window=(3, 9)), rtol=1e-5)
    # and with the global covariance, as spectral.rx(window, cov=...)
    local_mean = base.make("local-rx", {"inner": 3, "outer": 9}).fit(crop)
    want = spectral.rx(crop.transpose(1, 2, 0), window=(3, 9), cov=local_mean.stats.covariance)
    np.testing.assert_allclose(local_mean.score_image(crop), want, rtol=1e-5)


def test_utd_and_rxd_utd_match_the_formulas_of_chang_and_chiang(had_dir, manifest, client, tmp_path):
    for name in REFERENCE_SCENES:
        cube, image, _ = _scene(had_dir, manifest, name, tmp_path)
        pixels = image.reshape(image.shape[0], -1).T
        mu = pixels.mean(axis=0)
        inv = np.linalg.pinv(np.cov(pixels, rowvar=False))
        utd = (pixels - mu) @ inv @ (1.0 - mu)
        rxd = np.einsum("ij,jk,ik->i", pixels - mu, inv, pixels - mu)
        got_utd = base.make("utd").fit(cube).score(cube)["score"].values.ravel()
        got_both = base.make("rxd-utd").fit(cube).score(cube)["score"].values.ravel()
        scale = np.abs(rxd).max()  # UTD crosses zero: compare on the scale of the scores
        np.testing.assert_allclose(got_utd, utd, atol=1e-4 * scale, err_msg=name)
        np.testing.assert_allclose(got_both, rxd - utd, atol=1e-4 * scale, err_msg=name)


def test_cluster_rx_scores_each_pixel_against_its_nearest_kept_class(had_dir, manifest, client, tmp_path):
    for name in REFERENCE_SCENES:
        cube, image, _ = _scene(had_dir, manifest, name, tmp_path)
        det = base.make("cluster-rx").fit(cube)
        pixels = image.reshape(image.shape[0], -1).T
        distance = ((pixels[:, None, :] - det.centroids[None]) ** 2).sum(axis=2)
        labels = distance.argmin(axis=1)
        counts = np.bincount(labels, minlength=len(det.centroids))
        np.testing.assert_array_equal(counts, [s.count for s in det.stats], err_msg=name)
        smallest = max(2 * pixels.shape[1], det.settings.min_class_fraction * len(pixels))
        keep = [c for c in range(len(counts)) if counts[c] >= smallest]
        assert det.kept == keep and keep, name
        want = np.full(len(pixels), np.inf)
        for c in keep:
            d = pixels - pixels[labels == c].mean(axis=0)
            inv = np.linalg.pinv(np.cov(pixels[labels == c], rowvar=False))
            want = np.minimum(want, np.einsum("ij,jk,ik->i", d, inv, d))
        got = det.score(cube)["score"].values.ravel()
        np.testing.assert_allclose(got, want, rtol=1e-3, err_msg=name)


def test_scores_are_the_same_for_7x13_and_256x256_tiles(had_dir, manifest, client, tmp_path):
    cube, _, _ = _scene(had_dir, manifest, "hydice", tmp_path)
    small = cube.chunk({"y": 7, "x": 13})
    for method, settings in [("local-rx", {"inner": 3, "outer": 15}),
                             ("local-rx", {"inner": 3, "outer": 9, "covariance": "local", "components": 8}),
                             ("cluster-rx", None), ("utd", None), ("rxd-utd", None)]:
        big = base.make(method, settings).fit(cube)
        tiled = base.make(method, settings).fit(small)
        got_small = tiled.score(small)["score"]
        assert got_small.data.chunks == small.data.chunks[1:], method
        a, b = big.score(cube)["score"].values, got_small.values
        if base.detector_class(method).spatial:
            np.testing.assert_array_equal(a, b, err_msg=method)  # the same windows, the same sums
        else:  # the statistics merge in another order: equal to rounding
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6 * np.abs(a).max(), err_msg=method)


def test_local_rx_leaves_invalid_pixels_out_of_the_windows(tmp_path, client):
    image = np.random.default_rng(7).normal(size=(5, 26, 31)).astype(np.float32)
    image[:, 10, 12] = np.nan
    image[2, 0, 0] = np.nan
    det = base.make("local-rx", {"inner": 3, "outer": 7}).fit(image)
    got = det.score_image(image)
    assert np.isnan(got[10, 12]) and np.isnan(got[0, 0]) and np.isfinite(got).sum() == got.size - 2
    # the pixel next to the hole: its window's mean over the valid pixels only
    create_mask = inner_outer_window_mask_creator((26, 31), 3, 7)
    (ii0, ii1, ij0, ij1), (oi0, oi1, oj0, oj1) = create_mask(10, 15)
    mask = np.zeros((26, 31), bool)
    mask[oi0:oi1, oj0:oj1] = True
    mask[ii0:ii1, ij0:ij1] = False
    mask[10, 12] = False
    d = image[:, 10, 15].astype(np.float64) - image[:, mask].astype(np.float64).mean(axis=1)
    assert got[10, 15] == pytest.approx(d @ np.linalg.inv(det.stats.covariance) @ d, rel=1e-5)


def test_settings_are_resolved_once_with_the_command_line_winning_over_the_config_file(tmp_path):
    config = tmp_path / "ae.yaml"
    config.write_text("preset: study-ae\nlatent: 3\n")
    from_file = base.resolve_settings("ae", config_file=config)
    assert from_file.scaling == "global-minmax" and from_file.latent == 3  # study-ae, then the file's keys
    given = base.resolve_settings("ae", preset="default-ae", config_file=config, overrides=["latent=5"])
    assert given.scaling == "standardise" and given.latent == 5  # --preset beats the file's preset:
    (tmp_path / "local.yaml").write_text("settings:\n  inner: 3\n  outer: 11\n")
    local = base.resolve_settings("local-rx", config_file=tmp_path / "local.yaml", overrides=["outer=15"])
    assert (local.inner, local.outer, local.covariance) == (3, 15, "global")
    with pytest.raises(InputError, match="local-rx has no presets"):
        base.resolve_settings("local-rx", preset="default-ae")
    with pytest.raises(InputError, match="local-rx: inner must be an odd number"):
        base.resolve_settings("local-rx", overrides=["inner=4"])
    with pytest.raises(InputError, match="--set expects key=value"):
        base.resolve_settings("cluster-rx", overrides=["clusters"])
    assert base.resolve_settings("rx") == base.NoSettings()
