"""The Dask layer of the learned detectors (AE, VAE): scaling statistics, training on pixels
sampled from the cube (as cluster tasks, on a GPU worker where there is one), and tile-wise
scoring of every run and metric in one pass over the cube.

Scores of a run are the model's direct metric, or the squared Mahalanobis distance of its
features (residual, latent means) to their background statistics over the whole scene.
The ensemble of repeated runs is the mean (or per-pixel maximum) of each run's map after a
robust normalisation (:func:`hsad_scale.detectors.ensemble.robust_location_scale`:
``(s - median) / (1.4826 MAD)``), with median and MAD taken on the training sample's scores (so it needs no extra pass over the cube).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask
import numpy as np
import xarray as xr

from hsad_scale.cluster import import_in_background, other_workers, warm_up_scoring
from hsad_scale.detectors import ensemble as ensemble_ops
from hsad_scale.detectors.ae_config import DEFAULT_PRESET, METRIC_KIND, BandScaling, resolve_config  # noqa: F401
from hsad_scale.errors import InputError
from hsad_scale.stats import Whitener, whitener
from hsad_scale.tiles import background_stats_graph, band_summary_and_sample_graph, sample_pixels, score_map

#: The models' module: it imports PyTorch (about 1 s), so this module loads it only where a
#: model is trained, loaded or received, and the client imports it while the cluster works.
AUTOENCODER = "hsad_scale.detectors.autoencoder"

ENSEMBLES = ("mean", "max")
#: Pixels of the training sample (evenly strided: it is a random sample already) whose scores
#: give each run's median and MAD for the ensemble: the standard error of a median from 50k
#: pixels is a fraction of a percent of the spread, and scoring them takes 0.4 s, not 1.8 s.
NORMALISER_PIXELS = 50_000


def _ae():
    import importlib

    return importlib.import_module(AUTOENCODER)


def _client():
    """The distributed client that ``dask.compute`` uses here, or None (no client, or another
    scheduler set, e.g. the synchronous one in a sweep trial running on a worker)."""
    from distributed import Client

    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def fit_scaling(cube: xr.DataArray, config) -> BandScaling:
    """Per-band scaling (``config.scaling``) from a Dask reduction over the cube's valid
    pixels: background mean and standard deviation, or band minima and maxima."""
    return scaling_and_sample(cube, config, n_samples=0)[0]


def _summary(total):
    return total[0]


def _concat_sample(total, n_bands: int) -> np.ndarray:
    parts = total[1]
    return np.concatenate(parts, axis=0) if parts else np.empty((0, n_bands), dtype=np.float32)


def scaling_and_sample(cube: xr.DataArray, config, n_samples: int | None = None,
                       warm_worker: str | None = None, gather: bool = True):
    """:func:`fit_scaling` and the training sample (:func:`sample_pixels`, ``n_samples``
    pixels, default ``config.max_train_pixels``) from one pass over the cube, each tile read
    and summarised in one task (on the other workers than ``warm_worker`` while it warms up;
    those import PyTorch for scoring when done). ``gather=False`` on a distributed client
    leaves the sample on the cluster: a Future of the ``(n, B)`` array for :func:`train_runs`."""
    n_samples = config.max_train_pixels if n_samples is None else n_samples
    graph = band_summary_and_sample_graph(cube, n_samples, seed=config.seed)
    client = _client()
    if client is None:
        total = dask.compute(graph)[0]
        return BandScaling.from_summary(_summary(total), config.scaling), _concat_sample(total, cube.shape[0])
    total = client.compute(graph, workers=other_workers(warm_worker) or None)
    summary = client.submit(_summary, total)
    if n_samples:
        warm_up_scoring(client, after=summary)
    pixels = client.submit(_concat_sample, total, cube.shape[0], key=f"train-sample-{total.key}")
    scaling = BandScaling.from_summary(summary.result(), config.scaling)
    return scaling, (pixels.result() if gather else pixels)


def _train(pixels: np.ndarray, config, scaling: BandScaling, device: str):
    """One training run (a cluster task): returns the model (on the CPU) and the worker's name."""
    from distributed import get_worker

    if pixels.shape[0] < 2:
        raise InputError("the cube has fewer than two valid pixels to train on")
    model = _ae().fit(pixels, config, scaling, device=device)
    model.net.to("cpu")
    try:
        worker = get_worker().name
    except ValueError:
        worker = None
    return model, worker


def gpu_resources(client) -> dict | None:
    """``{"GPU": 1}`` when some worker of the cluster declares a GPU resource, else None."""
    if client is None:
        return None
    workers = client.scheduler_info().get("workers", {}).values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def train_runs(client, cube: xr.DataArray, config, repeats: int, scaling: BandScaling, device: str = "auto",
               pixels=None, warm_worker: str | None = None):
    """Train ``repeats`` models with seeds ``config.seed + i`` on one shared pixel sample
    (``pixels``: an array, or a Future of one from :func:`scaling_and_sample`; else drawn now:
    all valid pixels of a small scene, else ``max_train_pixels`` drawn uniformly). Each run is
    a cluster task ``train-<kind>-<i>``, placed on a GPU worker when the cluster has one (a
    single run goes to ``warm_worker``, from :func:`hsad_scale.cluster.warm_up_training`,
    when it is still there). Returns (models, training sample, worker name per run)."""
    if pixels is None:
        pixels = sample_pixels(cube, config.max_train_pixels, seed=config.seed)
    configs = [config.replace(seed=config.seed + i) for i in range(repeats)]
    if client is None:
        results = [_train(pixels, c, scaling, device) for c in configs]
        return [m for m, _ in results], pixels, [w for _, w in results]
    on_cluster = not isinstance(pixels, np.ndarray)
    shared = pixels if on_cluster else client.scatter(pixels, hash=False)
    token = dask.base.tokenize(shared.key, config, scaling, device)
    place = {"workers": [warm_worker], "allow_other_workers": True} if warm_worker and repeats == 1 else {}
    futures = [client.submit(_train, shared, c, scaling, device, key=f"train-{config.kind}-{i}-{token}",
                             resources=gpu_resources(client), pure=False, **place) for i, c in enumerate(configs)]
    import_in_background(AUTOENCODER)  # while the workers train: the results need it here
    if on_cluster:
        pixels = pixels.result()
    results = client.gather(futures)
    return [m for m, _ in results], pixels, [w for _, w in results]


@dataclass
class RunScorer:
    """Picklable tile function: pixels ``(n, B)`` -> one score column per (run, metric),
    Mahalanobis metrics whitened with their background statistics."""

    models: list
    metrics: tuple
    whiteners: dict  # (run, metric) -> Whitener

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        columns = []
        for r, model in enumerate(self.models):
            for metric in self.metrics:
                out = model.score(pixels, metric)
                w: Whitener | None = self.whiteners.get((r, metric))
                columns.append(w.mahalanobis(out) if w is not None else out)
        return np.stack(columns, axis=1).astype(np.float32)


@dataclass
class _Features:
    model: object
    metric: str

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        return self.model.score(pixels, self.metric)


#: Share of the cluster's worker memory that the features of the Mahalanobis metrics may take
#: to be kept on the workers between their statistics pass and the scoring pass, so that the
#: networks run over the cube once instead of twice (the default AE on a 1024 x 1024 x 200
#: cube: 0.84 GB). Larger scenes run both passes from the cube.
FEATURE_CACHE_FRACTION = 0.25


def _cluster_memory() -> int:
    """Total worker memory limit (bytes) of the current distributed client; 0 without one."""
    client = _client()
    workers = client.scheduler_info()["workers"].values() if client is not None else ()
    return int(sum(w.get("memory_limit") or 0 for w in workers))


def feature_maps(cube: xr.DataArray, models: list, metrics: tuple) -> dict:
    """``{(run, metric): lazy features (output, y, x) float32}`` of each Mahalanobis metric,
    NaN at invalid pixels."""
    maps = {}
    for r, model in enumerate(models):
        for m in metrics:
            if METRIC_KIND[m] == "mahalanobis":
                k = model.feature_count(m)
                fm = score_map(cube, _Features(model, m), n_out=k, name=f"{m}-features")
                maps[(r, m)] = fm if k > 1 else fm.expand_dims(output=1)
    return maps


def fits_feature_cache(features: dict) -> bool:
    """Whether ``features`` take at most :data:`FEATURE_CACHE_FRACTION` of the current
    distributed client's worker memory (False without a client)."""
    nbytes = sum(fm.nbytes for fm in features.values())
    return 0 < nbytes <= FEATURE_CACHE_FRACTION * _cluster_memory()


def feature_whiteners(features: dict) -> dict:
    """Whitening of each (run, Mahalanobis metric)'s features (:func:`feature_maps`), from
    their background statistics over the whole cube: all of them in one pass."""
    graphs = [background_stats_graph(fm, name=f"{m}-stats") for (_, m), fm in features.items()]
    return dict(zip(features, (whitener(stats) for stats in dask.compute(*graphs))))


def _score_columns(cube: xr.DataArray, models: list, metrics: tuple, features: dict, whiteners: dict):
    """Lazy ``(output, y, x)`` scores, one column per (run, metric) in run-major order: direct
    metrics from the cube, Mahalanobis metrics by whitening their features."""
    columns = []
    for r, model in enumerate(models):
        for m in metrics:
            if (r, m) in whiteners:
                columns.append(score_map(features[(r, m)], whiteners[(r, m)].mahalanobis, name=f"{m}-score"))
            else:
                columns.append(score_map(cube, _Features(model, m), name=f"{m}-score"))
    return xr.concat(columns, dim="output", coords="minimal", compat="override")


def learned_scores(cube: xr.DataArray, models: list, metrics: tuple, sample: np.ndarray,
                   ensemble: str = "mean", cache: bool | None = None) -> tuple[xr.Dataset, dict]:
    """Lazy score maps: for the first metric ``score_runs`` ``(run, y, x)`` and the ensemble
    ``score`` ``(y, x)``; for each further metric ``score_runs_<metric>`` and ``score_<metric>``.
    Returns the Dataset and the background/normalisation details for run.json. The features
    of Mahalanobis metrics are kept on the workers for the scoring pass when they fit
    (``cache``, see :func:`feature_maps`)."""
    if ensemble not in ENSEMBLES:
        raise InputError(f"unknown ensemble {ensemble!r}; choose from {', '.join(ENSEMBLES)}")
    features = feature_maps(cube, models, tuple(metrics))
    keep = fits_feature_cache(features) if cache is None else cache and bool(features)
    if keep:  # computed once, kept on the workers for both passes
        features = dict(zip(features, dask.persist(*features.values())))
    scorer = RunScorer(models, tuple(metrics), feature_whiteners(features))
    on_sample = scorer(sample[:: max(1, len(sample) // NORMALISER_PIXELS)])
    centres, spreads = ensemble_ops.robust_location_scale(on_sample.T)  # per (run, metric) column
    normalisers = [(float(c), float(s)) for c, s in zip(centres, spreads)]
    maps = _score_columns(cube, models, tuple(metrics), features, scorer.whiteners)
    runs = [m.config.seed for m in models]
    ds = xr.Dataset()
    for k, metric in enumerate(metrics):
        columns = [r * len(metrics) + k for r in range(len(models))]
        per_run = maps.isel(output=columns).rename(output="run").assign_coords(run=runs)
        centre = xr.DataArray([normalisers[j][0] for j in columns], dims="run", coords={"run": runs})
        spread = xr.DataArray([normalisers[j][1] for j in columns], dims="run", coords={"run": runs})
        normalised = (per_run - centre) / spread
        combined = normalised.mean("run") if ensemble == "mean" else normalised.max("run")
        suffix = "" if k == 0 else f"_{metric}"
        ds[f"score_runs{suffix}"] = per_run.astype(np.float32).assign_attrs(long_name=f"{metric} score of each run")
        ds[f"score{suffix}"] = combined.astype(np.float32).assign_attrs(
            long_name=f"{ensemble} of robustly normalised {metric} scores over {len(models)} run(s)")
    details = {
        "metrics": list(metrics),
        "ensemble": ensemble,
        "normalisers": {f"run{r}-{m}": normalisers[r * len(metrics) + k]
                        for r in range(len(models)) for k, m in enumerate(metrics)},
        "feature_background": {f"run{r}-{m}": w.describe() for (r, m), w in scorer.whiteners.items()},
        "features_kept_in_memory": keep,
    }
    return ds, details


def load_models(path: str | Path, device: str = "cpu") -> list:
    """Models saved by a run: a model folder (``model.json``), or a folder of them
    (``RUN_DIR/model`` with ``run-*/``), or a run folder."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "model.json").is_file():
            return [_ae().TrainedModel.load(candidate, device=device)]
        runs = sorted(candidate.glob("run-*/model.json"), key=lambda p: int(p.parent.name.split("-")[1]))
        if runs:
            return [_ae().TrainedModel.load(p.parent, device=device) for p in runs]
    raise InputError(f"no saved model found in {path} (expected model.json or run-*/model.json)")
