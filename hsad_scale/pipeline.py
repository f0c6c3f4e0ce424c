"""The detect job as a short chain of library functions; the CLI and the Prefect flows call
these same functions: prepare cube -> fit -> score -> write -> evaluate -> report."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import xarray as xr

from hsad_scale import cluster, cube as cubes, evaluate, fitting, outputs, plots, report
from hsad_scale.atomic import atomic_path, check_destination
from hsad_scale.detectors import LEARNED_METHODS, METHODS, base as detector_base, saved as saved_models
from hsad_scale.errors import InputError
from hsad_scale.stats import BackgroundStats
from hsad_scale.tiles import map_roc_counts, score_map

ENSEMBLES = ("mean", "max")  # as hsad_scale.learned.ENSEMBLES (not imported here: it loads torch)


def _start_importing_learned(options: DetectOptions) -> None:
    """Import hsad_scale.learned (PyTorch: ~1 s) in a background thread, for AE/VAE runs:
    called while the LocalCluster starts, when this process only waits for its workers.
    The detector then finds it imported (or waits on Python's import lock)."""
    if options.method in LEARNED_METHODS:
        import importlib
        import threading

        threading.Thread(target=importlib.import_module, args=("hsad_scale.learned",), daemon=True,
                         name="import-hsad_scale.learned").start()


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

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        if self.repeats < 1:
            raise InputError(f"--repeats must be at least 1, got {self.repeats}")
        if self.ensemble not in ENSEMBLES:
            raise InputError(f"unknown ensemble {self.ensemble!r}; choose from {', '.join(ENSEMBLES)}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"unknown device {self.device!r}; choose from auto, cpu, cuda")
        if self.model is not None and not Path(self.model).exists():
            raise InputError(f"model {self.model} does not exist")
        if self.model is not None:
            saved_models.check_method(self.model, self.method)
        settings = None if self.model else detector_base.resolve_settings(self.method, self.preset, self.config_file,
                                                                           self.settings)
        object.__setattr__(self, "detector_settings", settings)


@dataclass
class Stages:
    """Wall time of each stage (seconds), printed as it goes."""

    seconds: dict = field(default_factory=dict)
    quiet: bool = False

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.quiet:
            print(f"[hsad] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if not self.quiet:
            print(f"[hsad] {name} done in {self.seconds[name]:.1f} s", file=sys.stderr, flush=True)

    def run(self, name: str, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` timed as stage ``name``. The Prefect flows override this
        to run each stage as a task of that name (flows/detect.py)."""
        with self(name):
            return fn(*args, **kwargs)


def prepare_cube(src: str | Path, run_dir: Path, **ingest_options) -> Path:
    """The cube store to process: ``src`` itself when it is one, else ``src`` ingested into
    ``run_dir/cube.zarr``."""
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


def saved_method(path: str | Path) -> str:
    """The detector a saved model is for (:func:`hsad_scale.detectors.saved.saved_method`)."""
    return saved_models.saved_method(path)


def rx_scores(cube: xr.DataArray, model) -> xr.Dataset:
    """Lazy RX score map as a Dataset with variable ``score`` ``(y, x)``."""
    score = score_map(cube, model.mahalanobis, name="score-tile")
    score.attrs.update(long_name="RX squared Mahalanobis distance", units="1")
    return xr.Dataset({"score": score})


def write_score_store(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, client) -> xr.Dataset:
    """Write ``scores.zarr`` tile by tile on the cluster; return it reopened (lazily, read
    here through zarr when used: 0.1 s instead of 0.4-0.8 s through Dask for a 2048 x 2048 map)."""
    if cube_ds.rio.crs is not None:
        scores = scores.rio.write_crs(cube_ds.rio.crs).rio.write_transform(cube_ds.rio.transform())
    outputs.write_scores(scores, run_dir / "scores.zarr", client)
    return xr.open_zarr(run_dir / "scores.zarr", consolidated=False, decode_coords="all", chunks=None)


def write_geotiff(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset) -> bool:
    """``scores.tif`` of the ``score`` map when the cube has a CRS."""
    if cube_ds.rio.crs is None:
        return False
    outputs.write_geotiff(scores["score"], run_dir / "scores.tif")
    return True


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
    result, curve = evaluate.metrics_from_counts(map_roc_counts(scores["score"], truth))
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


def write_report_files(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, result: dict | None, title: str,
                       curve: tuple | None = None) -> None:
    """``metrics.json``, ``roc.png`` (with ground truth; ``curve``: the ROC of ``score`` when
    already computed) and ``map.png`` (from every k-th pixel: lazy maps are not loaded whole)."""
    truth = cube_ds[cubes.GROUND_TRUTH] if cubes.GROUND_TRUTH in cube_ds else None
    plots.save(plots.plot_maps({title: scores["score"]}, truth), run_dir / "map.png")
    if result is None:
        return
    outputs.write_json(run_dir / "metrics.json", result)
    fpr, tpr = curve if curve is not None else evaluate.roc_from_counts(map_roc_counts(scores["score"], truth))
    curves = {f"{title} (AUC {result['auc']:.4f})": {"fpr": fpr, "tpr": tpr}}
    if "averaged_roc" in result:
        mean_auc = result["runs_summary"]["mean"]["auc"]
        curves[f"runs: mean ± 1 sd (AUC {mean_auc:.4f})"] = result["averaged_roc"]
    plots.save(plots.plot_roc(curves, title=f"ROC: {title}"), run_dir / "roc.png")


def learned_config(options: DetectOptions):
    """The detector settings the options ask for, resolved when they were built (None for a
    saved model); kept for callers that validate options."""
    return options.detector_settings


def fit_and_score(cube_ds: xr.Dataset, options: DetectOptions, run_dir: Path, client, stage: Stages):
    """Fit the detector (or load it) and return (lazy score Dataset, details for run.json):
    :func:`hsad_scale.fitting.fit_detector` and :func:`~hsad_scale.fitting.score_detector`,
    the fitted detector saved into ``run_dir/model``."""
    cube = cube_ds[cubes.CUBE]
    (run_dir / "model").mkdir()
    det = fitting.fit_detector(cube, options.method, options.detector_settings, model=options.model, client=client,
                               repeats=options.repeats, device=options.device, stage=stage, keep_on_cluster=True)
    det.save(run_dir / "model")
    if options.method == "vae":
        stage.run("latent-plot", report.write_latent_plot, run_dir, det.models[0], cube_ds, det.sample)
    return fitting.score_detector(cube, det, metrics=options.metrics, ensemble=options.ensemble, stage=stage)


def run_detect(src, out, options: DetectOptions | None = None, *, overwrite: bool = False,
               dask_address: str | None = None, client=None, quiet: bool = False,
               ingest_options: dict | None = None, stage: Stages | None = None,
               record_extra: dict | None = None) -> Path:
    """Run one detection end to end into ``out`` (written whole, or not at all). ``stage``
    runs (and times) each stage (the detect flow passes one that makes them Prefect tasks);
    ``record_extra`` is added to ``run.json``."""
    options = options or DetectOptions()
    out = check_destination(out, overwrite)
    if not Path(src).exists():
        raise InputError(f"{src} does not exist")
    stage = stage if stage is not None else Stages(quiet=quiet)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(atomic_path(out, overwrite)))
        tmp.mkdir()
        # first: bad input fails before a cluster starts
        cube_path = stage.run("ingest", prepare_cube, src, tmp, **(ingest_options or {}))
        cube_ds = cubes.open_cube(cube_path)
        if client is None:
            _start_importing_learned(options)
            client = stack.enter_context(cluster.dask_client(dask_address))
        link = cluster.dashboard_link(client)
        if link and not quiet:
            print(f"[hsad] Dask dashboard: {link}", file=sys.stderr)
        lazy_scores, details = fit_and_score(cube_ds, options, tmp, client, stage)
        grid_ds, lazy_scores = cubes.on_output_grid(cube_ds, lazy_scores)  # EMIT: through the GLT
        scores = stage.run("score", write_score_store, tmp, grid_ds, lazy_scores, client)
        stage.run("geotiff", write_geotiff, tmp, grid_ds, scores)
        # maps read in blocks (large ones counted on the cluster): client memory does not grow with the scene
        maps = cubes.open_maps(tmp / "scores.zarr")
        truth_ds = cube_ds.assign({cubes.GROUND_TRUTH: cubes.open_maps(cube_path)[cubes.GROUND_TRUTH]}) \
            if cubes.GROUND_TRUTH in cube_ds else cube_ds
        result, curve = stage.run("evaluate", evaluate_with_roc, truth_ds, maps)
        stage.run("report", write_report_files, tmp, truth_ds, scores, result, options.method.upper(), curve)
        record = run_record(src, out, cube_path, cube_ds, options, details, result, stage.seconds, client)
        outputs.write_json(tmp / "run.json", {**record, **(record_extra or {})})
        report.write_report(tmp)
    if not quiet:
        print(f"[hsad] wrote {out}", file=sys.stderr)
        if result:
            print(f"[hsad] AUC {result['auc']:.4f}  TPR@FPR1e-2 {result['tpr_at_fpr_0.01']:.3f}", file=sys.stderr)
    return out


def run_record(src, out, cube_path, cube_ds, options: DetectOptions, details: dict, result, seconds, client) -> dict:
    """The content of ``run.json``."""
    from dataclasses import asdict

    return {
        "method": options.method,
        "options": asdict(options),
        "source": str(src),
        "cube": str(Path(src).resolve() if Path(cube_path) == Path(src) else Path(out).resolve() / "cube.zarr"),
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
