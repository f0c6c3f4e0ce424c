"""The detect job as a short chain of library functions; the CLI and the Prefect flows call
these same functions: prepare cube -> fit -> score -> write -> evaluate -> report."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from hsad_scale import background_mask as background_masks
from hsad_scale import cluster, cube as cubes, evaluate, fitting, locations, outputs, plots, progress, report
from hsad_scale.atomic import atomic_path, check_destination
from hsad_scale.detectors import LEARNED_METHODS, METHODS, base as detector_base, saved as saved_models
from hsad_scale.checks import check_detect_inputs, saved_method  # noqa: F401 (saved_method: re-exported)
from hsad_scale.errors import InputError, raise_if_interrupted
from hsad_scale.locations import absolute
from hsad_scale.names import DEVICES, ENSEMBLES, SCORE
from hsad_scale.stats import BackgroundStats
from hsad_scale.roc_tiles import map_roc_counts
from hsad_scale.tiles import score_map



@dataclass(frozen=True)
class DetectOptions:
    """What to run. ``method``: a registered detector (:data:`hsad_scale.detectors.METHODS`);
    ``settings``: its ``key=value`` settings (over the AE/VAE preset, or the config file);
    ``metrics``: the AE/VAE scores to map (first = ``score``; default the preset's metric);
    ``model``: a saved model (a model or run folder, or ``rx_stats.npz``) applied without
    refitting, which must be a model of ``method``. The detector's settings are resolved
    once, here (:attr:`detector_settings`; None with a saved model), so bad input fails
    before any work starts."""

    method: str = "rx"
    preset: str | None = None
    config_file: str | None = None
    settings: tuple = ()
    metrics: tuple | None = None
    repeats: int = 1
    ensemble: str = "mean"
    device: str = "auto"
    model: str | None = None
    pfa: float = 1e-3  # hsad_scale.detections.DEFAULT_PFA (its docstring gives the reason)
    threshold: str = "empirical"
    normalise: bool = False
    background_mask: str | None = None  # hsad_scale.background_mask: the statistics' region

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.repeats < 1:
            raise InputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.ensemble not in ENSEMBLES:
            raise InputError(f"unknown ensemble {self.ensemble!r}; choose from {', '.join(ENSEMBLES)}")
        if self.device not in DEVICES:
            raise InputError(f"unknown device {self.device!r}; choose from auto, cpu, cuda")
        if self.model is not None and not Path(self.model).exists():
            raise InputError(f"model {self.model} does not exist")
        if self.model is not None:
            saved_models.check_method(self.model, self.method)
        settings = None if self.model else detector_base.resolve_settings(self.method, self.preset, self.config_file,
                                                                           self.settings)
        object.__setattr__(self, "detector_settings", settings)
        check_threshold_options(self.method, self.pfa, self.threshold)
        if self.background_mask is not None:
            fitting.check_mask_method(self.method, self.model)
            background_masks.check_file(self.background_mask)  # readable, 2-D, not empty (its shape: run_detect)


def check_threshold_options(method: str, pfa: float, rule: str) -> None:
    """InputError for a PFA outside (0, 1), an unknown rule, or the chi-square rule on
    anything but RX scores."""
    from hsad_scale.detections import RULES, check_pfa

    check_pfa(pfa)
    if rule not in RULES:
        raise InputError(f"unknown threshold rule {rule!r}; choose from {', '.join(RULES)}")
    if rule == "chi2" and method != "rx":
        raise InputError(f"the chi-square threshold applies to RX scores (squared Mahalanobis distances), "
                         f"not to {method.upper()} scores: use --threshold empirical")


@dataclass
class Stages:
    """Wall time of each stage (seconds), printed as it goes, with its progress while it runs
    (the cluster's tasks and training steps, :mod:`hsad_scale.progress`) once ``client`` is set."""

    seconds: dict = field(default_factory=dict)
    quiet: bool = False
    client: object = None

    #: Stages that refuse bad input: no start line, so that a refusal stays one stderr line.
    UNANNOUNCED = ("ingest",)

    @contextlib.contextmanager
    def __call__(self, name: str):
        raise_if_interrupted()
        if not self.quiet and name not in self.UNANNOUNCED:
            print(f"[hsad] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with progress.on_cluster(name, self.client) if self.client is not None and not self.quiet \
                else contextlib.nullcontext():
            yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if not self.quiet:
            print(f"[hsad] {name} done in {self.seconds[name]:.1f} s", file=sys.stderr, flush=True)

    def run(self, name: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` timed as stage ``name``. The Prefect flows override this
        to run each stage as a task of that name (flows/detect.py)."""
        with self(name):
            return fn(*args, **kwargs)


def prepare_cube(src: str | Path, run_dir: Path, **ingest_options) -> Path | str:
    """The cube store to process: ``src`` itself when it is one (a local path or a URL such as
    ``s3://bucket/scene.zarr``), else ``src`` ingested into ``run_dir/cube.zarr`` (a scene file
    at a URL is copied into ``run_dir/source/`` first)."""
    if locations.is_url(src):
        if not locations.exists(src):
            raise InputError(f"{src} does not exist")
        if locations.is_cube_store(src):
            return str(src).rstrip("/")
        local = locations.fetch(str(src), Path(run_dir) / "source")
        try:
            return cubes.ingest(local, run_dir / "cube.zarr", **ingest_options)
        except InputError as exc:  # named as the user gave it
            raise InputError(str(exc).replace(str(local), str(src))) from None
        finally:
            local.unlink()
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src} does not exist")
    if cubes.is_cube_store(src):
        return src
    return cubes.ingest(src, run_dir / "cube.zarr", **ingest_options)


def fit_rx(cube: xr.DataArray, saved: str | Path | None = None):
    """RX background statistics (one Dask reduction, or loaded from ``saved``) and their
    whitening: :func:`hsad_scale.fitting.fit_detector` for ``rx``."""
    det = fitting.fit_detector(cube, "rx", model=saved)
    return det.stats, det.whitener


def load_rx_stats(path: str | Path) -> BackgroundStats:
    """RX statistics saved at ``path`` (``rx_stats.npz``, a model or run folder)."""
    return saved_models.load_detector(path, "rx").stats


def rx_scores(cube: xr.DataArray, model) -> xr.Dataset:
    """Lazy RX score map as a Dataset with variable ``score`` ``(y, x)``."""
    score = score_map(cube, model.mahalanobis, name="score-tile")
    score.attrs.update(long_name="RX squared Mahalanobis distance", units="1")
    return xr.Dataset({SCORE: score})


def write_score_store(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, client) -> xr.Dataset:
    """Write ``scores.zarr`` tile by tile on the cluster; return it reopened (lazily, read
    here through zarr when used: 0.1 s instead of 0.4-0.8 s through Dask for a 2048 x 2048 map)."""
    if cube_ds.rio.crs is not None:
        scores = scores.rio.write_crs(cube_ds.rio.crs).rio.write_transform(cube_ds.rio.transform())
    outputs.write_scores(scores, run_dir / "scores.zarr", client)
    return xr.open_zarr(run_dir / "scores.zarr", consolidated=False, decode_coords="all", chunks=None)


def write_geotiff(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, normalise: bool = False) -> dict:
    """``scores.tif``: the ``score`` map as a Cloud Optimized GeoTIFF, georeferenced when the
    cube has a CRS, else on the pixel grid; ``normalise``: min-max scaled to 0-1 (monotone).
    Returns what ``run.json`` records of it."""
    import dask

    score = scores[SCORE]
    bounds = None
    if normalise:
        data = score.data if hasattr(score.data, "dask") else score.chunk().data
        lo, hi = dask.compute(data.map_blocks(_finite_min, dtype=float).min(),
                              data.map_blocks(_finite_max, dtype=float).max())
        bounds = (float(lo), float(hi))
    outputs.write_score_cog(score, run_dir / "scores.tif", normalise=bounds)
    return {"file": "scores.tif", "format": "COG", "crs": None if score.rio.crs is None else score.rio.crs.to_string(),
            "normalised": None if bounds is None else {"method": "min-max", "min": bounds[0], "max": bounds[1]}}


def _finite_min(block):
    finite = block[np.isfinite(block)]
    return np.full((1,) * block.ndim, finite.min() if finite.size else np.inf)


def _finite_max(block):
    finite = block[np.isfinite(block)]
    return np.full((1,) * block.ndim, finite.max() if finite.size else -np.inf)


def write_detections(folder: Path, maps: xr.Dataset, cube_ds: xr.Dataset | None, method: str, pfa: float,
                     rule: str, truth=None) -> tuple:
    """``folder/detections/`` (:func:`hsad_scale.detections.run_detections`) of the ``score``
    map: chi-square threshold reported for RX (B = the cube's bands), peak spectra from the
    cube, object-level figures with ``truth``. Returns ``(GeoDataFrame, record)``."""
    from hsad_scale.detections import run_detections

    cube = cube_ds[cubes.CUBE] if cube_ds is not None and cubes.CUBE in cube_ds else None
    bands = cube.sizes["band"] if method == "rx" and cube is not None else None
    folder.mkdir()
    score = maps[SCORE]
    if score.rio.crs is None and cube_ds is not None and cube_ds.rio.crs is not None:
        score = score.rio.write_crs(cube_ds.rio.crs).rio.write_transform(cube_ds.rio.transform())
    return run_detections(score, folder, pfa=pfa, rule=rule, bands=bands, cube=cube, truth=truth)


def evaluate_scores(cube_ds: xr.Dataset, scores: xr.Dataset) -> dict | None:
    """Figures of ``score`` (and of each ``score_<metric>``; of each run with their mean,
    standard deviation and averaged ROC when repeated). None without ground truth. In-memory
    maps are counted here; dask-backed ones tile by tile (on the current client, if any)."""
    return evaluate_with_roc(cube_ds, scores)[0]


def evaluate_with_roc(cube_ds: xr.Dataset, scores: xr.Dataset) -> tuple[dict | None, tuple | None]:
    """:func:`evaluate_scores` and the ROC curve ``(fpr, tpr)`` of ``score`` (None, None
    without ground truth)."""
    if cubes.GROUND_TRUTH not in cube_ds:
        return None, None
    truth = cube_ds[cubes.GROUND_TRUTH]
    result, curve = evaluate.metrics_from_counts(map_roc_counts(scores[SCORE], truth))
    others = {n[len("score_"):]: evaluate.metrics_from_counts(map_roc_counts(scores[n], truth))[0]
              for n in scores.data_vars if n.startswith("score_") and not n.startswith("score_runs")}
    if others:
        result["per_metric"] = others
    if "score_runs" in scores:
        runs = [evaluate.metrics_from_counts(map_roc_counts(scores["score_runs"].isel(run=i), truth))
                for i in range(scores.sizes["run"])]
        per_run = [figures for figures, _ in runs]
        result["runs"] = per_run
        result["runs_summary"] = evaluate.summarise_runs(per_run)
        result["averaged_roc"] = evaluate.average_roc([curve_ for _, curve_ in runs])
    return result, curve


def best_effort(skipped: dict, name: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, or None when it fails: a side product (figure, report,
    metrics) never throws a finished run away; why it is missing goes into ``skipped[name]``
    (run.json, the report and one warning line)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:
        text = str(exc).strip().splitlines()
        skipped[name] = f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
        return None


def warn_skipped(skipped: dict) -> None:
    """One ``[hsad] warning:`` line naming what a finished run skipped, and why."""
    if skipped:
        what = "; ".join(f"{name} ({reason})" for name, reason in skipped.items())
        print(f"[hsad] warning: the run finished without {what}; recorded in run.json 'skipped'", file=sys.stderr)


def write_report_files(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, result: dict | None, title: str,
                       curve: tuple | None = None, found=None, skipped: dict | None = None) -> None:
    """``metrics.json``, ``roc.png`` (with ground truth; ``curve``: the ROC of ``score`` when
    already computed), ``map.png`` (from every k-th pixel: lazy maps are not loaded whole;
    map coordinates when georeferenced; the detections of ``found = (GeoDataFrame, record)``
    outlined) and, with ground truth and detections, ``objects.png`` (object-level curve).
    The figures are best-effort: one that cannot be drawn is named in ``skipped`` (see
    :func:`best_effort`; raised when ``skipped`` is None)."""
    truth = cube_ds[cubes.GROUND_TRUTH] if cubes.GROUND_TRUTH in cube_ds else None
    if result is not None:
        outputs.write_json(run_dir / "metrics.json", result)
    if skipped is None:
        write_detection_figures(run_dir, scores, truth, title, found)
    else:
        best_effort(skipped, "map.png", write_detection_figures, run_dir, scores, truth, title, found)
    if result is None:
        return
    if skipped is None:
        _write_roc(run_dir, scores, truth, result, title, curve)
    else:
        best_effort(skipped, "roc.png", _write_roc, run_dir, scores, truth, result, title, curve)


def _write_map(run_dir: Path, scores: xr.Dataset, truth, title: str) -> None:
    plots.save(plots.plot_maps({title: scores[SCORE]}, truth), run_dir / "map.png")


def _write_roc(run_dir: Path, scores: xr.Dataset, truth, result: dict, title: str, curve: tuple | None) -> None:
    fpr, tpr = curve if curve is not None else evaluate.roc_from_counts(map_roc_counts(scores[SCORE], truth))
    curves = {f"{title} (AUC {result['auc']:.4f})": {"fpr": fpr, "tpr": tpr}}
    if "averaged_roc" in result:
        mean_auc = result["runs_summary"]["mean"]["auc"]
        curves[f"runs: mean ± 1 sd (AUC {mean_auc:.4f})"] = result["averaged_roc"]
    plots.save(plots.plot_roc(curves, title=f"ROC: {title}"), run_dir / "roc.png")


def write_detection_figures(run_dir: Path, scores: xr.Dataset, truth, title: str, found=None) -> None:
    """``map.png`` (detections outlined when ``found``) and ``objects.png`` (when ``found``
    holds an object-level evaluation)."""
    from hsad_scale.detections import MapGrid

    frame, record = found if found is not None else (None, {})
    grid = MapGrid.of(scores[SCORE])
    plots.save(plots.plot_maps({title: scores[SCORE]}, truth, grid=grid,
                               outlines=None if frame is None else list(frame.geometry.dropna()),
                               outline_label=None if frame is None else
                               f"detections at PFA {record['pfa']:g} ({len(frame)})"), run_dir / "map.png")
    if "object_evaluation" in record:
        plots.save(plots.plot_objects(record["object_evaluation"], title=f"Objects: {title}"), run_dir / "objects.png")
    if frame is not None and "spectrum" in frame and frame["spectrum"].notna().any():
        plots.save(plots.plot_detection_spectra(frame), run_dir / "spectra.png")


def learned_config(options: DetectOptions):
    """The AE/VAE settings the options ask for, resolved when they were built (None for the
    other detectors or a saved model; theirs are :attr:`DetectOptions.detector_settings`)."""
    return options.detector_settings if options.method in LEARNED_METHODS else None


def fit_and_score(cube_ds: xr.Dataset, options: DetectOptions, run_dir: Path, client, stage: Stages,
                  background_mask=None):
    """Fit the detector (or load it) and return (lazy score Dataset, details for run.json):
    :func:`hsad_scale.fitting.fit_detector` and :func:`~hsad_scale.fitting.score_detector`,
    the fitted detector saved into ``run_dir/model``. ``background_mask``: ``(y, x)`` bool
    (read from ``options.background_mask`` when None and the options name one)."""
    cube = cube_ds[cubes.CUBE]
    if background_mask is None and options.background_mask is not None:
        background_mask = background_masks.as_mask(options.background_mask, (cube.sizes["y"], cube.sizes["x"]), cube)
    (run_dir / "model").mkdir()
    det = fitting.fit_detector(cube, options.method, options.detector_settings, model=options.model, client=client,
                               repeats=options.repeats, device=options.device, stage=stage, keep_on_cluster=True,
                               background_mask=background_mask)
    det.save(run_dir / "model")
    if options.method == "vae":
        stage.run("latent-plot", report.write_latent_plot, run_dir, det.models[0], cube_ds, det.sample)
    scores, details = fitting.score_detector(cube, det, metrics=options.metrics, ensemble=options.ensemble, stage=stage)
    if background_mask is not None:
        details["background_mask"] = background_masks.describe(options.background_mask, background_mask)
    return scores, details


def run_detect(src, out, options: DetectOptions | None = None, *, overwrite: bool = False,
               dask_address: str | None = None, client=None, quiet: bool = False,
               ingest_options: dict | None = None, stage: Stages | None = None,
               record_extra: dict | None = None, dashboard_address: str | None = None) -> Path:
    """Run one detection end to end into ``out`` (written whole, or not at all). ``stage``
    runs (and times) each stage (the detect flow passes one that makes them Prefect tasks);
    ``record_extra`` is added to ``run.json``; ``dashboard_address``: where a LocalCluster's
    dashboard listens (default 127.0.0.1:8787, see :func:`cluster.dask_client`)."""
    options = options or DetectOptions()
    src, out = absolute(src), absolute(out)  # the task graphs run in other working directories
    if options.model:
        options = replace(options, model=str(absolute(options.model)))
    if options.background_mask:
        options = replace(options, background_mask=str(absolute(options.background_mask)))
    ingest_options = {k: absolute(v) if k == "gt" else v for k, v in (ingest_options or {}).items()}
    out = locations.check_destination(out, overwrite)  # a URL: written locally, then published
    if not locations.exists(src):
        raise InputError(f"{src} does not exist")
    stage = stage if stage is not None else Stages(quiet=quiet)
    with contextlib.ExitStack() as stack:
        local_out = stack.enter_context(locations.staged(out, overwrite)) if locations.is_url(out) else out
        tmp = Path(stack.enter_context(atomic_path(local_out, overwrite)))
        tmp.mkdir()
        # first: bad input fails before a cluster starts
        cube_path = stage.run("ingest", prepare_cube, src, tmp, **(ingest_options or {}))
        cube_ds = cubes.open_cube(cube_path)
        if Path(cube_path) == Path(src):  # a cube store given: --drop-bands still applies
            cube_ds = cubes.store_bands(cube_ds, **(ingest_options or {}))
        # the scene's size, the network against memory, a saved model against the bands: before any cluster
        check_detect_inputs(options.method, options.metrics, learned_config(options), options.model,
                            tuple(cube_ds[cubes.CUBE].shape))
        mask = None if options.background_mask is None else background_masks.as_mask(
            options.background_mask, (cube_ds.sizes["y"], cube_ds.sizes["x"]), cube_ds[cubes.CUBE])
        if client is None:
            client = stack.enter_context(cluster.dask_client(dask_address, dashboard_address=dashboard_address))
        stage.client = client
        link = cluster.dashboard_link(client)
        if link and not quiet:
            print(f"[hsad] Dask dashboard: {link}", file=sys.stderr)
        lazy_scores, details = fit_and_score(cube_ds, options, tmp, client, stage, background_mask=mask)
        grid_ds, lazy_scores = cubes.on_output_grid(cube_ds, lazy_scores)  # EMIT: through the GLT
        scores = stage.run("score", write_score_store, tmp, grid_ds, lazy_scores, client)
        details["scores_tif"] = stage.run("geotiff", write_geotiff, tmp, grid_ds, scores, options.normalise)
        # maps read in blocks (large ones counted on the cluster): client memory does not grow with the scene
        maps = cubes.open_maps(tmp / "scores.zarr")
        truth_ds = cube_ds.assign({cubes.GROUND_TRUTH: cubes.open_maps(cube_path)[cubes.GROUND_TRUTH]}) \
            if cubes.GROUND_TRUTH in cube_ds else cube_ds
        # the score map is the product: metrics, figures and the report are best-effort around it
        skipped: dict = {}
        result, curve = best_effort(skipped, "metrics", stage.run, "evaluate", evaluate_with_roc, truth_ds, maps) \
            or (None, None)
        # on the cube's own grid the peak spectra are read from it; a GLT grid (EMIT) has none
        spectra_ds = cube_ds if grid_ds is cube_ds else None
        found = stage.run("detections", write_detections, tmp / "detections", maps, spectra_ds, options.method,
                          options.pfa, options.threshold, truth_ds.get(cubes.GROUND_TRUTH))
        details["detections"] = found[1]
        if result is not None and "object_evaluation" in found[1]:
            result["objects"] = found[1]["object_evaluation"]
        stage.run("report", write_report_files, tmp, truth_ds, scores, result, options.method.upper(), curve, found,
                  skipped)
        record = run_record(src, out, cube_path, cube_ds, options, details, result, stage.seconds, client)
        record = {**record, **(record_extra or {}), "skipped": skipped}
        outputs.write_json(tmp / "run.json", record)
        if best_effort(skipped, "report.html", report.write_report, tmp) is None and "report.html" in skipped:
            outputs.write_json(tmp / "run.json", {**record, "skipped": skipped})
    if not quiet:
        warn_skipped(skipped)
        print(f"[hsad] wrote {out}", file=sys.stderr)
        if result:
            print(f"[hsad] AUC {result['auc']:.4f}  TPR@FPR1e-2 {result['tpr_at_fpr_0.01']:.3f}", file=sys.stderr)
        print(detections_line(details["detections"]), file=sys.stderr)
    return out


def detections_line(record: dict) -> str:
    """One line on the detections of a run: objects, threshold, flagged pixels against PFA x N."""
    threshold = "none" if record["threshold"] is None else f"{record['threshold']:.6g}"
    line = (f"[hsad] {record['objects']} detection(s) at PFA {record['pfa']:g} ({record['rule']} threshold "
            f"{threshold}: {record['flagged_pixels']} pixels flagged, PFA x N = {record['expected_pixels']:.1f})")
    if record.get("chi2") and record["rule"] != "chi2":
        line += f"; chi-square threshold {record['chi2']['threshold']:.6g} would flag {record['chi2']['flagged_pixels']}"
    return line


def redo_detections(run_dir, pfa: float, rule: str = "empirical", overwrite: bool = False, quiet: bool = False) -> Path:
    """``hsad detections RUN_DIR``: threshold an existing run's score map again (no
    rescoring) into ``RUN_DIR/detections/`` (written whole, or not at all; an existing one is
    replaced only with ``overwrite``), then update ``run.json``, ``metrics.json``,
    ``map.png``, ``objects.png`` and ``report.html``. Reads the run's cube (for peak spectra,
    ground truth and the chi-square degrees of freedom) when it is still there."""
    import json

    from hsad_scale.atomic import atomic_path, check_destination

    run_dir = Path(run_dir)
    record_path = run_dir / "run.json"
    if not (run_dir / "scores.zarr").is_dir() or not record_path.is_file():
        raise InputError(f"{run_dir} is not a run folder of hsad detect (no scores.zarr or run.json)")
    try:
        run = json.loads(record_path.read_text())
    except ValueError as exc:
        raise InputError(f"{record_path} is not valid JSON: {exc}") from None
    method = str(run.get("method", "rx"))
    check_threshold_options(method, pfa, rule)
    check_destination(run_dir / "detections", overwrite)
    cube_path = Path(str(run.get("cube", "")))
    cube_ds = cubes.open_cube(cube_path) if run.get("cube") and cubes.is_cube_store(cube_path) else None
    if cube_ds is None:
        print(f"[hsad] warning: the run's cube {cube_path} is gone: no peak spectra, no object-level evaluation"
              + (", no chi-square threshold" if method == "rx" else ""), file=sys.stderr)
    maps = cubes.open_maps(run_dir / "scores.zarr")
    truth = cubes.open_maps(cube_path)[cubes.GROUND_TRUTH] if cube_ds is not None and cubes.GROUND_TRUTH in cube_ds else None
    with atomic_path(run_dir / "detections", overwrite) as tmp:
        found = write_detections(Path(tmp), maps, cube_ds, method, pfa, rule, truth)
    run["detections"] = found[1]
    outputs.replace_json(record_path, run)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file() and "object_evaluation" in found[1]:
        metrics = json.loads(metrics_path.read_text())
        metrics["objects"] = found[1]["object_evaluation"]
        outputs.replace_json(metrics_path, metrics)
    scores = xr.open_zarr(run_dir / "scores.zarr", consolidated=False, decode_coords="all", chunks=None)
    write_detection_figures(run_dir, scores, truth, method.upper(), found)
    report.write_report(run_dir)
    if not quiet:
        print(detections_line(found[1]), file=sys.stderr)
        print(f"[hsad] wrote {run_dir / 'detections'}", file=sys.stderr)
    return run_dir / "detections"


def run_record(src, out, cube_path, cube_ds, options: DetectOptions, details: dict, result, seconds, client) -> dict:
    """The content of ``run.json``."""
    from dataclasses import asdict

    return {
        "method": options.method,
        "options": asdict(options),
        "source": str(src),
        "cube": str(src) if str(cube_path) == str(src) else f"{out}/cube.zarr",
        "shape": dict(cube_ds.sizes),
        "chunks": list(cube_ds[cubes.CUBE].data.chunksize),
        **cubes.ingest_record(cube_ds),  # bands left out, readers' decisions
        **details,
        "metrics": None if result is None else {k: v for k, v in result.items() if k != "averaged_roc"},
        "stage_seconds": seconds,
        "dask": cluster.describe(client),
        "versions": outputs.versions(),
        "finished": outputs.now(),
    }
