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

from hsad_scale.detectors import autoencoder as ae, ensemble as ensemble_ops
from hsad_scale.detectors.ae_config import DEFAULT_PRESET, resolve_config  # noqa: F401  (re-exported)
from hsad_scale.cluster import warm_up_scoring
from hsad_scale.errors import InputError
from hsad_scale.names import ENSEMBLES
from hsad_scale.stats import Whitener, whitener
from hsad_scale.sampling import band_summary_and_sample_graph, sample_pixels
from hsad_scale.tiles import background_stats_graph, feature_score_map, feature_stats_graph, feature_tiles, score_map

#: Pixels of the training sample (evenly strided: it is a random sample already) whose scores
#: give each run's median and MAD for the ensemble: the standard error of a median from 50k
#: pixels is a fraction of a percent of the spread, and scoring them takes 0.4 s, not 1.8 s.
NORMALISER_PIXELS = 50_000
#: Share of the cluster's worker memory that the features of the Mahalanobis metrics may take
#: to be kept on the workers from their statistics pass to the scoring pass, which then
#: whitens them instead of reading the cube and running the networks again (the default AE
#: on a 1024 x 1024 x 200 cube: 0.9 GB). Larger scenes run both passes from the cube.
FEATURE_CACHE_FRACTION = 0.25


def fit_scaling(cube: xr.DataArray, config) -> ae.BandScaling:
    """Per-band scaling (``config.scaling``) from a Dask reduction over the cube's valid
    pixels: background mean and standard deviation, or band minima and maxima."""
    return scaling_and_sample(cube, config, n_samples=0)[0]


def scaling_and_sample(cube: xr.DataArray, config, n_samples: int | None = None,
                       keep_on_cluster: bool = False) -> tuple[ae.BandScaling, np.ndarray | ClusterSample]:
    """:func:`fit_scaling` and the training sample (:func:`sample_pixels`, ``n_samples``
    pixels, default ``config.max_train_pixels``) from one pass over the cube, each tile read
    and summarised in one task. ``keep_on_cluster`` (with a distributed client in use): the
    sample stays on the worker that joins it, returned as a Future of the ``(n, B)`` array for
    :func:`train_runs` (no round trip of 160 MB through this process)."""
    n_samples = config.max_train_pixels if n_samples is None else n_samples
    summary, sample = band_summary_and_sample_graph(cube, n_samples, seed=config.seed)
    client = _distributed_client() if keep_on_cluster else None
    if client is None:
        summary, sample = dask.compute(summary, sample)
    else:
        summary, future = client.compute([summary, sample])
        sample = ClusterSample(future, client.submit(len, future).result())
        summary = summary.result()
    return ae.BandScaling.from_summary(summary, config.scaling), sample


@dataclass
class ClusterSample:
    """A training sample left on the cluster: ``future`` of the ``(n, B)`` array, ``len`` n."""

    future: object
    n_pixels: int

    def __len__(self) -> int:
        return self.n_pixels


def normaliser_rows(sample: np.ndarray) -> np.ndarray:
    """The rows of the training sample whose scores set the ensemble normalisers: every
    ``len // NORMALISER_PIXELS``-th (all of a small sample)."""
    return sample[:: max(1, len(sample) // NORMALISER_PIXELS)]


def _train(pixels: np.ndarray, config, scaling: ae.BandScaling, device: str):
    """One training run (a cluster task): returns the model (on the CPU) and the worker's name."""
    from distributed import get_worker

    model = ae.fit(pixels, config, scaling, device=device)
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


def train_runs(client, cube: xr.DataArray, config, repeats: int, scaling: ae.BandScaling, device: str = "auto",
               pixels: np.ndarray | ClusterSample | None = None):
    """Train ``repeats`` models with seeds ``config.seed + i`` on one shared pixel sample
    (``pixels``, else drawn now: all valid pixels of a small scene, else ``max_train_pixels``
    drawn uniformly). Each run is a cluster task ``train-<kind>-<i>``, placed on a GPU worker
    when the cluster has one (else where the sample is). Returns (models, training sample,
    worker name per run); of a :class:`ClusterSample` only its :func:`normaliser_rows` are
    fetched and returned."""
    if pixels is None:
        pixels = sample_pixels(cube, config.max_train_pixels, seed=config.seed)
    if len(pixels) < 2:
        raise InputError("the cube has fewer than two valid pixels to train on")
    configs = [config.replace(seed=config.seed + i) for i in range(repeats)]
    if client is None:
        pixels = pixels.future.result() if isinstance(pixels, ClusterSample) else pixels
        results = [_train(pixels, c, scaling, device) for c in configs]
        return [m for m, _ in results], pixels, [w for _, w in results]
    warm = warm_up_scoring(client)  # idle workers import torch while one trains
    on_cluster = isinstance(pixels, ClusterSample)
    shared = pixels.future if on_cluster else client.scatter(pixels, broadcast=False)
    token = dask.base.tokenize(shared.key if on_cluster else pixels, config, scaling, device)
    futures = [client.submit(_train, shared, c, scaling, device, key=f"train-{config.kind}-{i}-{token}",
                             resources=gpu_resources(client), pure=False) for i, c in enumerate(configs)]
    sample = client.submit(normaliser_rows, shared).result() if on_cluster else pixels
    results = client.gather(futures)
    del warm
    return [m for m, _ in results], sample, [w for _, w in results]


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


@dataclass
class FeatureScorer:
    """Picklable tile function of :func:`hsad_scale.tiles.feature_score_map`: features
    ``((n, k_1), ...)`` of each (run, metric) -> their Mahalanobis scores ``(n, n_out)``."""

    whiteners: list

    def __call__(self, features: tuple) -> np.ndarray:
        return np.stack([w.mahalanobis(f) for w, f in zip(self.whiteners, features)], axis=1).astype(np.float32)


def _distributed_client():
    """The distributed client that ``dask.compute`` uses here, or None (no client, or another
    scheduler set, e.g. the synchronous one of a sweep trial running on a worker)."""
    from distributed import Client

    owner = getattr(dask.base.get_scheduler(), "__self__", None)
    return owner if isinstance(owner, Client) else None


def features_fit_in_memory(cube: xr.DataArray, models: list, pairs: list) -> bool:
    """Whether the features of every (run, metric) in ``pairs`` (all Mahalanobis metrics)
    take at most :data:`FEATURE_CACHE_FRACTION` of the worker memory of the distributed
    client in use (False without one, or with a direct metric among ``pairs``)."""
    if not pairs or any(ae.METRIC_KIND[m] != "mahalanobis" for _, m in pairs):
        return False
    client = _distributed_client()
    if client is None:
        return False
    memory = sum(w.get("memory_limit") or 0 for w in client.scheduler_info()["workers"].values())
    nbytes = 4 * cube.shape[1] * cube.shape[2] * sum(models[r].feature_count(m) for r, m in pairs)
    return nbytes <= FEATURE_CACHE_FRACTION * memory


def feature_whiteners(cube: xr.DataArray, models: list, metrics: tuple) -> dict:
    """Whitening of each (run, Mahalanobis metric)'s features, from their background
    statistics over the whole cube: all of them in one pass."""
    wanted = [(r, m) for r in range(len(models)) for m in metrics if ae.METRIC_KIND[m] == "mahalanobis"]
    graphs = [background_stats_graph(cube, _Features(models[r], m), name=f"{m}-stats") for r, m in wanted]
    return {key: whitener(stats) for key, stats in zip(wanted, dask.compute(*graphs))}


def learned_scores(cube: xr.DataArray, models: list, metrics: tuple, sample: np.ndarray,
                   ensemble: str = "mean", keep_features: bool | None = None) -> tuple[xr.Dataset, dict]:
    """Lazy score maps: for the first metric ``score_runs`` ``(run, y, x)`` and the ensemble
    ``score`` ``(y, x)``; for each further metric ``score_runs_<metric>`` and ``score_<metric>``.
    Returns the Dataset and the background/normalisation details for run.json.
    ``keep_features`` (default: :func:`features_fit_in_memory`): the networks run over the
    cube once, their features kept on the workers for the statistics and the scoring, instead
    of once for each (the same scores)."""
    if ensemble not in ENSEMBLES:
        raise InputError(f"unknown ensemble {ensemble!r}; choose from {', '.join(ENSEMBLES)}")
    metrics = tuple(metrics)
    pairs = [(r, m) for r in range(len(models)) for m in metrics]  # the score columns, run-major
    keep = features_fit_in_memory(cube, models, pairs) if keep_features is None else keep_features
    if keep and any(ae.METRIC_KIND[m] != "mahalanobis" for m in metrics):
        raise InputError("features can be kept only when every metric is a Mahalanobis one")
    if keep:
        tiles = feature_tiles(cube, tuple(_Features(models[r], m) for r, m in pairs)).persist()
        whiteners = dict(zip(pairs, map(whitener, feature_stats_graph(tiles).compute())))
    else:
        whiteners = feature_whiteners(cube, models, metrics)
    scorer = RunScorer(models, metrics, whiteners)
    on_sample = scorer(normaliser_rows(sample))
    centres, spreads = ensemble_ops.robust_location_scale(on_sample.T)  # per (run, metric) column
    normalisers = [(float(c), float(s)) for c, s in zip(centres, spreads)]
    if keep:
        maps = feature_score_map(cube, tiles, FeatureScorer([whiteners[p] for p in pairs]), n_out=len(pairs))
    else:
        maps = score_map(cube, scorer, n_out=len(pairs), name="score-tile")
    if "output" not in maps.dims:  # one run, one metric: score_map drops the axis
        maps = maps.expand_dims(output=1)
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
        "features_kept_in_memory": bool(keep),
    }
    return ds, details


def load_models(path: str | Path, device: str = "cpu") -> list:
    """Models saved by a run: a model folder (``model.json``), or a folder of them
    (``RUN_DIR/model`` with ``run-*/``), or a run folder."""
    path = Path(path)
    for candidate in (path, path / "model"):
        if (candidate / "model.json").is_file():
            return [ae.TrainedModel.load(candidate, device=device)]
        runs = sorted(candidate.glob("run-*/model.json"), key=lambda p: int(p.parent.name.split("-")[1]))
        if runs:
            return [ae.TrainedModel.load(p.parent, device=device) for p in runs]
    raise InputError(f"no saved model found in {path} (expected model.json or run-*/model.json)")
