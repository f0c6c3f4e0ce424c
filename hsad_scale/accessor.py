"""``ds.hsad``: the library's functions as methods of a cube (xarray Dataset or DataArray).

Registered by ``import hsad_scale``. Every method forwards to a plain function of the library
(:mod:`hsad_scale.pipeline`, :mod:`hsad_scale.learned`, :mod:`hsad_scale.plots`), so the numbers
are the CLI's. Maps come back lazy (dask-backed) with the cube's ``x``/``y``/``spatial_ref``
coords and CRS; only fitting computes (RX: one reduction over the cube for the background
statistics; AE/VAE: their training), on the current Dask client when there is one.

    import hsad_scale
    ds = hsad_scale.cube.open_cube("scene.zarr")
    rx = ds.hsad.rx()                                  # lazy (y, x) map
    ae = ds.hsad.detect("ae", preset="study-ae", epochs=2)   # lazy Dataset of maps
    ds.hsad.evaluate(rx)                               # AUC, TPR@FPR... (computes)
    ds.hsad.plot_map({"RX": rx, "AE": ae["score"]})

The DataArray accessor works on the cube DataArray ``(band, y, x)`` (pass ``truth=`` where
ground truth is needed) and on a score map ``(y, x)`` (``score.hsad.plot_map()``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from hsad_scale.errors import InputError

from hsad_scale.detectors import METHODS  # noqa: E402  (names only: imports no detector)
from hsad_scale.names import CUBE, GROUND_TRUTH, LEARNED_METHODS, SCORE  # noqa: E402
# as in hsad_scale.cube (not imported here: keeps `import hsad_scale` light)
DEFAULT_CHUNK = 256


@dataclass
class Fitted:
    """A fitted detector, as :meth:`HsadAccessor.fit` returns it: the detector of the contract
    (:mod:`hsad_scale.detectors.base`) and, for reading, RX's background statistics and
    whitening, or the trained AE/VAE models of each run with their training sample."""

    method: str
    models: list
    sample: np.ndarray | None = None
    stats: object = None
    details: dict = field(default_factory=dict)
    detector: object = None

    @property
    def model(self):
        """The first (or only) model: RX's whitener, the first AE/VAE run, else the detector."""
        return self.models[0]

    @classmethod
    def from_detector(cls, det) -> "Fitted":
        if det.needs_torch:
            return cls(det.method, det.models, det.sample, details=det.describe(), detector=det)
        models = [det.whitener] if det.method == "rx" else [det]
        return cls(det.method, models, stats=getattr(det, "stats", None), details=det.describe(), detector=det)


def _default_client():
    try:
        from distributed import default_client

        return default_client()
    except (ImportError, ValueError):
        return None


class HsadAccessor:
    """Methods shared by the Dataset and DataArray accessors."""

    def __init__(self, obj):
        self._obj = obj

    # ---- what the object holds
    @property
    def cube(self) -> xr.DataArray:
        """The cube ``(band, y, x)``, dask-backed with the whole band axis in one chunk (an
        in-memory cube is cut into tiles of 256 x 256 pixels)."""
        obj = self._obj
        if isinstance(obj, xr.Dataset):
            obj = obj[CUBE] if CUBE in obj.data_vars else None
        if obj is None or set(obj.dims) != {"band", "y", "x"}:
            raise InputError(f"this object holds no cube (band, y, x) (a Dataset's {CUBE!r} variable, or a "
                             "DataArray): open one with hsad_scale.cube.open_cube")
        obj = obj.transpose("band", "y", "x")
        if obj.chunks is None:  # an in-memory cube: tiles as a cube store has them
            obj = obj.chunk({"band": -1, "y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK})
        elif len(obj.chunks[0]) > 1:
            obj = obj.chunk({"band": -1})
        return obj

    @property
    def truth(self) -> xr.DataArray | None:
        """The ground truth ``(y, x)`` (a Dataset's ``ground_truth``, or a DataArray's coord of
        that name), None when there is none."""
        obj = self._obj
        if GROUND_TRUTH in getattr(obj, "data_vars", {}) or GROUND_TRUTH in obj.coords:
            return obj[GROUND_TRUTH]
        return None

    def _dataset(self, truth=None) -> xr.Dataset:
        """The cube as a cube Dataset (the form the pipeline's functions take)."""
        obj = self._obj
        ds = obj if isinstance(obj, xr.Dataset) else self.cube.to_dataset(name=CUBE)
        truth = truth if truth is not None else self.truth
        if truth is not None and GROUND_TRUTH not in ds.data_vars:
            ds = ds.drop_vars(GROUND_TRUTH, errors="ignore").assign(
                {GROUND_TRUTH: (("y", "x"), np.asarray(getattr(truth, "values", truth)))})
        return ds

    def _georeference(self, scores):
        """``scores`` with the cube's CRS and transform (as the run folder's maps have them)."""
        import rioxarray  # noqa: F401  (the .rio accessor)

        obj = self._obj
        if obj.rio.crs is not None:
            scores = scores.rio.write_crs(obj.rio.crs).rio.write_transform(obj.rio.transform())
        return scores

    # ---- detectors
    def fit(self, method: str = "ae", *, preset: str | None = None, config_file: str | None = None,
            repeats: int = 1, device: str = "auto", client=None, model=None, background_mask=None,
            **settings) -> Fitted:
        """Fit a detector the way ``hsad detect`` does (computes), through
        :func:`hsad_scale.fitting.fit_detector`: ``method`` any of
        :data:`hsad_scale.detectors.METHODS`; settings: ``preset`` (AE/VAE), ``config_file`` and
        ``key=value`` settings (``epochs=5, latent=8``; ``inner=3, outer=15`` for local-rx).
        AE/VAE: ``repeats`` trainings with seeds ``seed..seed+repeats-1`` on ``client`` (default:
        the current Dask client, else this process). ``model``: a saved model (RUN_DIR/model, a
        model folder, ``rx_stats.npz``; it must hold ``method``) loaded instead of fitting, or
        RX's :class:`~hsad_scale.stats.BackgroundStats`. ``background_mask``: a path (GeoTIFF,
        .npy), array or DataArray ``(y, x)`` on the cube's grid, nonzero = background: the
        statistics of the statistical detectors come from those pixels only (``hsad detect
        --background-mask``, :mod:`hsad_scale.background_mask`); every pixel is still scored."""
        from hsad_scale import fitting
        from hsad_scale.detectors import base
        from hsad_scale.stats import BackgroundStats

        if method not in METHODS:
            raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        cube = self.cube
        if model is not None and (settings or preset or config_file):
            raise InputError(f"settings ({', '.join(settings) or 'preset/config_file'}) apply to fitting, "
                             "not to a saved model")
        if background_mask is not None:
            fitting.check_mask_method(method, model)
        if isinstance(model, BackgroundStats):
            if method != "rx":
                raise InputError(f"background statistics are an RX model, not {method.upper()}")
            det = base.make("rx")
            det.set_stats(model)
            return Fitted.from_detector(det)
        if model is not None:
            return Fitted.from_detector(fitting.fit_detector(cube, method, model=model))
        overrides = [f"{k}={json.dumps(list(v) if isinstance(v, tuple) else v)}" for k, v in settings.items()]
        resolved = base.resolve_settings(method, preset, config_file, overrides)
        client = client if client is not None else _default_client()
        det = fitting.fit_detector(cube, method, resolved, client=client, repeats=repeats, device=device,
                                   background_mask=background_mask)
        return Fitted.from_detector(det)

    def rx(self, model=None) -> xr.DataArray:
        """Lazy RX map ``(y, x)`` float32 (squared Mahalanobis distance to the background), with
        the cube's coords and CRS. Computes the background statistics (one pass over the cube)
        unless ``model`` (a :class:`Fitted` RX, BackgroundStats, rx_stats.npz or run folder)
        gives them."""
        return self.detect("rx", model=model)[SCORE]

    def detect(self, method: str = "rx", *, metrics=None, ensemble: str = "mean", model=None,
               **settings) -> xr.Dataset:
        """Lazy score maps as the run folder's ``scores.zarr`` holds them: ``score`` ``(y, x)``;
        for AE/VAE also ``score_runs`` ``(run, y, x)`` and ``score_<metric>`` for each further
        metric (:func:`hsad_scale.learned.learned_scores`). Fits first (see :meth:`fit`, which
        takes the same settings) unless ``model`` is a :class:`Fitted` (or a saved model)."""
        from hsad_scale import fitting

        if isinstance(model, Fitted) and settings:
            raise InputError(f"settings ({', '.join(settings)}) apply to fitting, not to a fitted model")
        fitted = model if isinstance(model, Fitted) else self.fit(method, model=model, **settings)
        if fitted.method != method:
            raise InputError(f"the fitted model is {fitted.method.upper()}, not {method.upper()}")
        if fitted.detector is None:
            raise InputError("this Fitted holds no detector: make it with fit()")
        metrics = [metrics] if isinstance(metrics, str) else metrics
        scores, _ = fitting.score_detector(self.cube, fitted.detector, metrics=metrics, ensemble=ensemble)
        return self._georeference(scores)

    # ---- evaluation
    def evaluate(self, scores, truth=None) -> dict:
        """AUC, TPR at FPR 1e-3/1e-2/1e-1, partial AUC (and per run / per metric for an AE/VAE
        Dataset) of ``scores`` against the ground truth: :func:`hsad_scale.pipeline.evaluate_scores`,
        the figures ``metrics.json`` holds. Computes the maps."""
        from hsad_scale import pipeline

        ds = self._dataset(truth)
        if GROUND_TRUTH not in ds:
            raise InputError("no ground truth: pass truth=")
        if isinstance(scores, xr.DataArray):
            scores = scores.to_dataset(name=SCORE)
        # one pass over the cube for all maps (evaluate_scores reads each variable on its own)
        return pipeline.evaluate_scores(ds, scores.compute())

    def detections(self, scores, pfa: float = 1e-3, rule: str = "empirical", truth=None, tile=None):
        """Detections of a score map at ``pfa`` as a GeoDataFrame (outlines, peak points,
        peak spectra from the cube when this object holds one; ranked by peak score; the
        thresholds and counts in ``frame.attrs["detections"]``):
        :func:`hsad_scale.detections.run_detections` (``rule="chi2"``: RX scores, B = the
        cube's bands). With ground truth (``truth`` or the Dataset's), the record holds the
        object-level figures. Computes the map (two threshold passes, one labelling pass)."""
        from hsad_scale.detections import run_detections

        score = self._georeference(_first_map(scores))
        try:
            cube = self.cube
        except InputError:
            cube = None
        if truth is None:
            truth = self.truth
        if rule == "chi2" and cube is None:
            raise InputError("the chi-square rule needs the cube's number of bands: call it on the cube")
        frame, record = run_detections(score, pfa=pfa, rule=rule, bands=cube.sizes["band"] if rule == "chi2" else None,
                                       cube=cube, truth=truth, tile=tile)
        frame.attrs["detections"] = record
        return frame

    def roc_curves(self, maps, truth=None) -> dict:
        """ROC curves (with AUC labels) of ``maps`` (label -> map, or label -> runs) for
        :func:`hsad_scale.plots.plot_roc`."""
        from hsad_scale import plots

        ds = self._dataset(truth)
        if GROUND_TRUTH not in ds:
            raise InputError("no ground truth: pass truth=")
        return plots.roc_curves(_as_maps(maps), ds[GROUND_TRUTH])

    # ---- figures
    def rgb(self, targets=None, bands=None) -> xr.DataArray:
        """Lazy ``(y, x, rgb)`` DataArray of the bands nearest to 640/550/460 nm (``targets``), or
        ``bands`` (three indices), with their ``wavelength`` and ``band`` on ``rgb`` and the
        cube's spatial coords and CRS (raw values: ``.plot.imshow(robust=True)`` shows it)."""
        from hsad_scale import plots

        return plots.select_rgb(self.cube, targets or plots.RGB_NM, bands)

    def plot_rgb(self, targets=None, bands=None, truth=None, **kwargs):
        """:func:`hsad_scale.plots.plot_rgb` of the cube, with ground-truth outlines when it has one."""
        from hsad_scale import plots

        truth = truth if truth is not None else self.truth
        return plots.plot_rgb(self.cube, targets or plots.RGB_NM, bands, truth=truth, **kwargs)

    def plot_map(self, scores=None, truth=None, **kwargs):
        """:func:`hsad_scale.plots.plot_maps` of ``scores`` (a map, a score Dataset, or a dict
        label -> map: side by side on a shared scale), ground truth outlined. On a score map's
        accessor, ``scores`` defaults to the map itself."""
        from hsad_scale import plots

        if scores is None:
            scores = self._obj
        truth = truth if truth is not None else self.truth
        return plots.plot_maps(_as_maps(scores), truth, **kwargs)

    def plot_roc(self, maps, truth=None, title: str = "ROC", **kwargs):
        """:func:`hsad_scale.plots.plot_roc` of ``maps`` (see :meth:`roc_curves`)."""
        from hsad_scale import plots

        return plots.plot_roc(self.roc_curves(maps, truth), title=title, **kwargs)

    def plot_spectra(self, scores, top: int = 5, truth=None, **kwargs):
        """:func:`hsad_scale.plots.plot_spectra`: the ``top`` scoring pixels' spectra against the
        background mean and spread."""
        from hsad_scale import plots

        truth = truth if truth is not None else self.truth
        return plots.plot_spectra(self.cube, _first_map(scores), top=top, truth=truth, **kwargs)

    def plot_latent(self, fitted: Fitted, run: int = 0, **kwargs):
        """:func:`hsad_scale.report.latent_figure` of an AE/VAE run's latent space, anomalies highlighted."""
        from hsad_scale import report

        if fitted.method not in LEARNED_METHODS:
            raise InputError(f"{fitted.method.upper()} has no latent space")
        return report.latent_figure(fitted.models[run], self._dataset(), fitted.sample, **kwargs)


def _first_map(scores):
    if isinstance(scores, xr.Dataset):
        return scores[SCORE]
    return scores


def _as_maps(scores) -> dict:
    """label -> map: a dict as it is; a Dataset's 2-D score maps by name; one map by its name."""
    if isinstance(scores, dict):
        return scores
    if isinstance(scores, xr.Dataset):
        return {name: scores[name] for name in scores.data_vars if scores[name].dims == ("y", "x")}
    return {str(getattr(scores, "name", None) or SCORE): scores}


@xr.register_dataset_accessor("hsad")
class HsadDatasetAccessor(HsadAccessor):
    """``ds.hsad`` on a cube Dataset (``cube`` ``(band, y, x)``, optional ``ground_truth``)."""


@xr.register_dataarray_accessor("hsad")
class HsadDataArrayAccessor(HsadAccessor):
    """``da.hsad`` on a cube DataArray ``(band, y, x)``, or on a score map ``(y, x)`` (plots)."""


__all__ = ["Fitted", "HsadAccessor", "HsadDatasetAccessor", "HsadDataArrayAccessor"]
