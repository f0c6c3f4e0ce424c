"""Figures (ROC, maps, latent space, RGB, spectra) and the offline ``report.html`` of run and
sweep folders."""

import base64
import inspect
import json
import re

import dask.array as da
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from matplotlib.contour import ContourSet
from matplotlib.image import AxesImage

from hsad_scale import cube as cubes, learned, pipeline, plots, report
from hsad_scale.synth import SceneSpec, synth

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(64, 72, 16, seed=7), chunk=32)


def _maps(seed=0, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    truth = np.zeros(shape, np.uint8)
    truth[10:13, 20:22] = 1
    truth[30, 5] = 1
    score = rng.normal(size=shape) + 4 * truth
    return score, truth


# --------------------------------------------------------------------------------------
# figures


def test_roc_has_linear_and_log_axes_several_methods_and_a_band_for_runs():
    score, truth = _maps()
    runs = [score + np.random.default_rng(s).normal(scale=0.5, size=score.shape) for s in range(3)]
    curves = plots.roc_curves({"one": score, "runs": runs, "stacked": np.stack(runs)}, truth)
    labels = list(curves)
    assert labels[0].startswith("one (AUC ") and "± " in labels[1] and "3 runs" in labels[1] and "3 runs" in labels[2]
    assert "tpr_std" in curves[labels[1]] and "tpr" in curves[labels[0]]
    fig = plots.plot_roc(curves, title="test")
    linear, log = fig.axes
    assert linear.get_xscale() == "linear" and log.get_xscale() == "log"
    for ax in (linear, log):
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # one band per averaged curve
    legend = [t.get_text() for t in linear.get_legend().get_texts()]
    assert legend[:3] == labels
    assert log.get_xlim()[0] <= 1e-3


def test_maps_side_by_side_on_one_scale_with_truth_outlines():
    score, truth = _maps()
    maps = {"a": score, "b": 1000 * score, "c": np.exp(score)}
    fig = plots.plot_maps(maps, truth, normalise="minmax", ncols=2)
    panels = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in panels] == ["a", "b", "c"]
    assert {im.get_clim() for ax in panels for im in ax.images if isinstance(im, AxesImage)} == {(0.0, 1.0)}
    assert all(any(isinstance(c, ContourSet) for c in ax.collections) for ax in panels)
    assert len(fig.axes) == 2 * 2 + 1  # a 2 x 2 grid (one left empty) and one shared colour bar
    # without normalising, one scale from the percentiles of all maps; separate scales on request
    fig = plots.plot_maps({"a": score, "b": score + 1}, truth)
    assert len({ax.images[0].get_clim() for ax in fig.axes if ax.images}) == 1
    fig = plots.plot_maps({"a": score, "b": 10 * score}, truth, shared_scale=False)
    assert len({ax.images[0].get_clim() for ax in fig.axes if ax.images}) == 2
    ranked = plots.normalise_map(np.array([[3.0, np.nan], [1.0, 2.0]]), "rank")
    np.testing.assert_array_equal(ranked, [[1.0, np.nan], [0.0, 0.5]])


def test_large_lazy_maps_are_thinned_before_they_are_read_and_targets_stay_outlined():
    big = da.zeros((3100, 2000), chunks=1000, dtype=np.float32) + da.random.random((3100, 2000), chunks=1000)
    truth = np.zeros((3100, 2000), np.uint8)
    truth[1501, 999] = 1  # a one-pixel target between the kept rows and columns
    fig = plots.plot_maps({"big": big}, truth)
    image = fig.axes[0].images[0].get_array()
    assert max(image.shape) <= plots.MAX_PIXELS_SHOWN
    assert any(isinstance(c, ContourSet) for c in fig.axes[0].collections)
    assert plots._thin_mask(truth > 0, 3).sum() == 1


def test_latent_space_in_two_units_or_two_principal_axes_with_anomalies_on_top():
    rng = np.random.default_rng(1)
    labels = np.zeros(500, bool)
    labels[:7] = True
    fig = plots.plot_latent(rng.normal(size=(500, 2)), labels)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "latent unit 1" and ax.get_ylabel() == "latent unit 2"
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in points] == [493, 7]
    fig = plots.plot_latent(rng.normal(size=(500, 6)) * [5, 3, 1, 1, 1, 1], labels, max_points=100)
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("principal axis 1") and ax.get_ylabel().startswith("principal axis 2")
    assert [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)] == [100, 7]
    projected, explained = plots.principal_axes(rng.normal(size=(300, 4)) * [4, 2, 1, 0.5])
    assert projected.shape == (300, 2) and explained[0] > explained[1]


def test_rgb_from_wavelengths_else_band_indices(scene_path):
    wavelength = np.linspace(400, 1000, 61)  # 10 nm steps
    assert plots.rgb_bands(61, wavelength) == (24, 15, 6)
    assert plots.rgb_bands(61, None, bands=(5, 4, -1)) == (5, 4, 60)
    guess = plots.rgb_bands(189)  # bands spread over 400-2500 nm
    assert guess[0] > guess[1] > guess[2] and guess == (21, 13, 5)
    with pytest.raises(ValueError):
        plots.rgb_bands(10, bands=(1, 2))
    ds = cubes.open_cube(scene_path)
    image = plots.rgb_composite(ds)
    assert image.shape == (64, 72, 3) and image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1
    assert plots.rgb_composite(ds, max_side=20).shape == (16, 18, 3)  # every 4th pixel
    fig = plots.plot_rgb(ds, truth=True)
    assert "nm" in fig.axes[0].get_title()
    no_wavelength = ds["cube"].drop_vars("wavelength")
    fig = plots.plot_rgb(no_wavelength, bands=(9, 5, 1))
    assert fig.axes[0].get_title() == "R/G/B = bands 9 / 5 / 1"


def test_spectra_of_the_top_pixels_against_the_background(scene_path):
    ds = cubes.open_cube(scene_path)
    stats, model = pipeline.fit_rx(ds["cube"])
    score = pipeline.rx_scores(ds["cube"], model)["score"]
    rows, cols = plots.top_pixels(score, 4)
    values = score.values
    assert values[rows[0], cols[0]] == np.nanmax(values) and np.all(np.diff(values[rows, cols]) <= 0)
    rows, cols = plots.top_pixels(score, 3, min_distance=4)
    assert all(max(abs(rows[i] - rows[j]), abs(cols[i] - cols[j])) > 4 for i in range(3) for j in range(i))
    for background in (None, stats):
        fig = plots.plot_spectra(ds, score, top=4, background=background)
        ax = fig.axes[0]
        assert len(ax.lines) == 1 + 4 and ax.get_xlabel() == "wavelength (nm)"
        np.testing.assert_allclose(ax.lines[0].get_ydata(), stats.mean, rtol=1e-4)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("anomaly" in t for t in labels)


# --------------------------------------------------------------------------------------
# report.html


def _images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _offline(html: str) -> bool:
    return not re.search(r'(src|href)="(https?:)?//', html) and "<script" not in html and "<link" not in html


def test_report_of_an_rx_run_holds_the_metrics_and_the_images(scene_path, tmp_path, client):
    run = pipeline.run_detect(scene_path, tmp_path / "rx", client=client, quiet=True)
    path = report.write_report(run)
    assert path == run / "report.html"
    html = path.read_text()
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("auc", "tpr_at_fpr_0.01", "pauc_0.01"):
        assert f"{metrics[key]:.4f}" in html
    assert "<th>AUC</th>" in html and "TPR @ FPR 1e-2" in html
    images = _images(html)
    assert len(images) == len(list(run.glob("*.png"))) == 4  # map, ROC, object-level curve, peak spectra
    assert all(i.startswith(PNG_MAGIC) for i in images)
    assert (run / "map.png").read_bytes() in images and (run / "roc.png").read_bytes() in images
    assert _offline(html)
    assert "rx-stats" in html and "Stage timings" in html and "EPSG" not in html.split("<h2>Metrics")[0]


def test_report_of_a_vae_run_shows_the_runs_and_the_latent_space(scene_path, tmp_path, client):
    options = pipeline.DetectOptions(method="vae", preset="study-vae", repeats=2,
                                     settings=("max_train_pixels=800", "epochs=2"))
    run = pipeline.run_detect(scene_path, tmp_path / "vae", options, client=client, quiet=True)
    models = learned.load_models(run)
    ds = cubes.open_cube(scene_path)
    fig = report.latent_figure(models[0], ds)
    assert fig.axes[0].get_xlabel() == "latent unit 1"  # the study VAE has two latent units
    assert [len(c.get_offsets()) for c in fig.axes[0].collections] == [64 * 72 - int(ds["ground_truth"].sum()),
                                                                        int(ds["ground_truth"].sum())]
    plt.close(fig)
    report.write_latent_plot(run, models[0], ds)
    html = report.write_report(run).read_text()
    assert (run / "latent.png").read_bytes() in _images(html)
    assert "Latent space" in html and "single runs: mean ± sd (2)" in html and "ensemble of 2 runs" in html
    assert "study-vae" in html and "beta" in html
    assert _offline(html)


def test_latent_pixels_of_a_large_scene_are_a_sample_plus_every_anomaly(scene_path):
    ds = cubes.open_cube(scene_path)
    n_anomalies = int(ds["ground_truth"].sum())
    pixels, labels = report.latent_pixels(ds, max_points=500)
    assert pixels.shape == (500 + n_anomalies, 16) and labels.sum() == n_anomalies
    truth = ds["ground_truth"].values > 0
    anomalies = ds["cube"].values.reshape(16, -1).T[truth.ravel()]
    np.testing.assert_array_equal(np.sort(pixels[labels], axis=0), np.sort(anomalies, axis=0))
    sample = np.ones((50, 16), np.float32)
    pixels, labels = report.latent_pixels(ds, sample=sample, max_points=500)
    assert pixels.shape == (50 + n_anomalies, 16) and (pixels[~labels] == 1).all()


def test_report_without_ground_truth_or_run_json_still_renders(tmp_path):
    plots.save(plots.plot_maps({"score": _maps()[0]}), tmp_path / "map.png")
    html = report.write_report(tmp_path).read_text()
    assert "No ground truth" in html and len(_images(html)) == 1


def test_hsad_detect_writes_the_report(scene_path, tmp_path, client):
    run = pipeline.run_detect(scene_path, tmp_path / "run", client=client, quiet=True)
    html = (run / "report.html").read_text()
    assert f"{json.loads((run / 'metrics.json').read_text())['auc']:.4f}" in html and len(_images(html)) >= 2


def test_sweep_report_table_best_row_and_images(tmp_path):
    (tmp_path / "results.csv").write_text(
        "name,preset,epochs,auc,tpr_at_fpr_0.01\n"
        "a,study-ae,1,0.91234,0.4\n"
        "b,study-ae,5,0.95678,0.5\n"
        "c,study-vae,5,0.80000,0.1\n")
    (tmp_path / "best.json").write_text(json.dumps({"name": "b", "settings": {"preset": "study-ae", "epochs": 5},
                                                    "auc": 0.95678}))
    score, truth = _maps()
    plots.save(plots.plot_roc(plots.roc_curves({"a": score}, truth)), tmp_path / "roc_epochs.png")
    path = report.write_sweep_report(tmp_path)
    html = path.read_text()
    assert path == tmp_path / "report.html"
    best_rows = re.findall(r'<tr class="best">(.*?)</tr>', html)
    assert len(best_rows) == 1 and ">b<" in best_rows[0] and "0.9568" in best_rows[0]
    assert html.count(">study-vae<") == 1 and "Best setting" in html and ">epochs<" in html
    assert (tmp_path / "roc_epochs.png").read_bytes() in _images(html)
    assert _offline(html)


def test_sweep_report_of_a_real_sweep_folder(scene_path, tmp_path):
    from hsad_scale import sweep
    spec = sweep.parse_grid({"method": "ae", "preset": "study-ae", "fixed": {"max_train_pixels": 300},
                             "grid": {"epochs": [1, 2]}, "repeats": 2})
    out = tmp_path / "sweep"
    best = sweep.run_sweep(scene_path, spec, out)
    html = (out / "report.html").read_text()  # written by the sweep itself
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.read_bytes() in _images(html) for p in pngs)
    best_rows = re.findall(r'<tr class="best">(.*?)</tr>', html)
    assert len(best_rows) == 1 + spec.repeats  # its summary row and each of its trials
    assert all(f">{best['setting_id']}<" in row for row in best_rows)
    assert f"{best['mean']:.4f}" in html and "summary.csv" in html and "results.csv" in html
    assert _offline(html)
