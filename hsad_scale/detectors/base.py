"""One detector contract and the registry of methods.

A detector is fitted on a cube (an xarray DataArray ``(band, y, x)``, dask-backed: the
statistics are Dask reductions) or on plain pixels ``(n_pixels, n_bands)``, then scores a
cube tile by tile (a lazy Dataset with ``score`` ``(y, x)`` float32, the cube's coords kept)
or plain arrays: higher score = more anomalous (except ENVI's UTD, see
:mod:`hsad_scale.detectors.utd`). It saves itself into a model folder
(``detector.json`` + arrays, no pickles) and loads back from it. The API follows PyOD's
(``fit`` then scores), with the cube as the unit of work::

    from hsad_scale.detectors import base
    det = base.make("local-rx", {"inner": 3, "outer": 15})
    det.fit(cube)                       # one Dask pass: the global covariance
    scores = det.score(cube)            # lazy Dataset, tile-wise with halos
    det.save(run_dir / "model"); base.load(run_dir / "model")   # see saved.py

A new detector is one module: a settings dataclass (validated, ``from_dict``/``to_dict``)
and a :class:`Detector` subclass decorated with :func:`register`. Saved-model lookup (which
method a model folder holds) lives in :mod:`hsad_scale.detectors.saved`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from hsad_scale.errors import InputError
from hsad_scale.names import CUBE, SCORE

if TYPE_CHECKING:
    import xarray as xr

#: Format of ``detector.json``.
FORMAT_VERSION = 1
#: Modules that register the built-in detectors, imported on first use of the registry
#: (none of them imports PyTorch at import time).
BUILTIN_MODULES = ("hsad_scale.detectors.rx", "hsad_scale.detectors.utd", "hsad_scale.detectors.local_rx",
                   "hsad_scale.detectors.cluster_rx", "hsad_scale.detectors.learned_detector")
#: Name of the file that says which detector a model folder holds.
DETECTOR_JSON = "detector.json"

_REGISTRY: dict[str, type["Detector"]] = {}


@dataclass(frozen=True)
class Settings:
    """Base of a detector's settings: a frozen dataclass whose fields are the settings,
    validated in ``__post_init__`` (raising ValueError), read from a mapping (YAML, ``--set``
    pairs) by :meth:`from_dict` and written back by :meth:`to_dict` (JSON-able)."""

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Settings":
        d = dict(d or {})
        d.pop("kind", None)
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown setting(s) {', '.join(unknown)}; valid: {', '.join(cls.field_names()) or 'none'}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class NoSettings(Settings):
    """Settings of a detector that has none (global RX, UTD, RXD-UTD)."""


class PlainStage:
    """Runs a stage as a plain call (the default where no pipeline times or names stages)."""

    def run(self, name: str, fn, *args, **kwargs):
        return fn(*args, **kwargs)


class Detector:
    """The contract. Subclasses set :attr:`method` and :attr:`settings_type` and implement
    :meth:`fit_cube`, :meth:`score_image`, :meth:`score` (the Dask layer; the default maps
    :meth:`score_pixels` over tiles), :meth:`save_arrays` / :meth:`load_arrays` and
    :meth:`describe`. ``spatial`` detectors use each pixel's neighbours (their tiles are
    scored with halos), so they have no :meth:`score_pixels`."""

    method: ClassVar[str] = ""
    settings_type: ClassVar[type[Settings]] = NoSettings
    spatial: ClassVar[bool] = False
    #: the cluster's workers should import PyTorch before scoring (AE/VAE)
    needs_torch: ClassVar[bool] = False
    long_name: ClassVar[str] = ""

    def __init__(self, settings: Settings | dict | None = None):
        if settings is None or isinstance(settings, dict):
            try:
                settings = self.settings_type.from_dict(settings)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{self.method}: {exc}") from None
        if not isinstance(settings, self.settings_type):
            raise InputError(f"{self.method} takes {self.settings_type.__name__}, not {type(settings).__name__}")
        self.settings = settings
        self.fitted = False

    # ---- fitting
    def fit(self, data, stage=None, **kwargs) -> "Detector":
        """Fit on a cube DataArray ``(band, y, x)`` (Dask reductions; an in-memory one is cut
        into 256 x 256 tiles), an image ndarray ``(band, y, x)`` or pixels ``(n, band)``.
        ``stage``: runs (and names) the fitting's stages (``stage.run(name, fn, *args)``,
        e.g. :class:`hsad_scale.pipeline.Stages`; the flows make each one a Prefect task).
        Returns ``self``."""
        stage = stage if stage is not None else PlainStage()
        if isinstance(data, np.ndarray) and data.ndim == 2:
            self.fit_pixels(np.asarray(data), stage=stage, **kwargs)
        else:
            self.fit_cube(as_cube(data), stage=stage, **kwargs)
        self.fitted = True
        return self

    #: the name of the stage that fits (a Prefect task of that name in the flows)
    fit_stage: ClassVar[str] = ""

    def fit_cube(self, cube: "xr.DataArray", stage=None, **kwargs) -> None:
        raise NotImplementedError

    def fit_pixels(self, pixels: np.ndarray, stage=None, **kwargs) -> None:
        """Fit on pixels ``(n, band)`` (rows with NaN skipped); default: as an image of one row."""
        self.fit_cube(as_cube(np.asarray(pixels).T[:, None, :]), stage=stage, **kwargs)

    # ---- scoring
    def score(self, cube, **kwargs) -> "xr.Dataset":
        """Lazy scores of a cube as a Dataset with ``score`` ``(y, x)`` float32 (the cube's
        spatial coords kept); NaN at invalid pixels."""
        import xarray as xr

        from hsad_scale.tiles import score_map

        self._check_fitted()
        cube = as_cube(cube)
        score = score_map(cube, self.pixel_scorer(), name=f"{self.method}-score")
        score.attrs.update(long_name=self.long_name or self.method, units="1")
        return xr.Dataset({SCORE: score})

    def pixel_scorer(self):
        """A picklable callable pixels ``(n, band)`` -> scores ``(n,)`` (non-spatial detectors)."""
        raise NotImplementedError(f"{self.method} scores pixels with their neighbours: use score_image")

    def score_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Scores ``(n,)`` float64 of pixels ``(n, band)`` (non-spatial detectors only)."""
        self._check_fitted()
        return np.asarray(self.pixel_scorer()(np.asarray(pixels)), dtype=np.float64)

    def score_image(self, image: np.ndarray) -> np.ndarray:
        """Scores ``(y, x)`` float64 of an image ``(band, y, x)`` in memory (plain arrays)."""
        image = np.asarray(image)
        b, ny, nx = image.shape
        pixels = image.reshape(b, -1).T
        out = np.full(ny * nx, np.nan)
        valid = np.isfinite(pixels.sum(axis=1))
        if valid.any():
            out[valid] = self.score_pixels(pixels[valid])
        return out.reshape(ny, nx)

    # ---- persistence
    def save(self, folder: str | Path) -> Path:
        """Write ``detector.json`` (method, settings, format) and the fitted arrays into ``folder``."""
        self._check_fitted()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.save_arrays(folder)
        meta = {"format_version": FORMAT_VERSION, "method": self.method, "settings": self.settings.to_dict(),
                "describe": self.describe()}
        (folder / DETECTOR_JSON).write_text(json.dumps(meta, indent=2, default=_jsonable))
        return folder

    def save_arrays(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: str | Path, settings: dict | None = None, **kwargs) -> "Detector":
        """The detector saved in ``folder`` (``settings``: those of its ``detector.json``)."""
        det = cls(settings)
        det.load_arrays(Path(folder), **kwargs)
        det.fitted = True
        return det

    def load_arrays(self, folder: Path, **kwargs) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """What ``run.json`` records of the fitted detector (JSON-able)."""
        return {"method": self.method, "settings": self.settings.to_dict()}

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise ValueError(f"the {self.method} detector is not fitted: call fit first")


def as_cube(data) -> "xr.DataArray":
    """A DataArray ``(band, y, x)``, dask-backed with whole spectra per tile (an in-memory
    array or DataArray is cut into 256 x 256 pixel tiles)."""
    import xarray as xr

    if isinstance(data, xr.Dataset):
        data = data[CUBE]
    if isinstance(data, np.ndarray):
        if data.ndim != 3:
            raise InputError(f"an image must be (band, y, x), got shape {data.shape}")
        data = xr.DataArray(data, dims=("band", "y", "x"))
    if not isinstance(data, xr.DataArray) or set(data.dims) != {"band", "y", "x"}:
        raise InputError("expected a cube DataArray (band, y, x)")
    data = data.transpose("band", "y", "x")
    if data.chunks is None:
        return data.chunk({"band": -1, "y": 256, "x": 256})
    return data.chunk({"band": -1}) if len(data.chunks[0]) > 1 else data


def register(cls: type[Detector]) -> type[Detector]:
    """Class decorator: make ``cls`` the detector of ``cls.method``."""
    _REGISTRY[cls.method] = cls
    return cls


def _load_builtins() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def methods() -> tuple[str, ...]:
    """Every registered method name, in registration order."""
    _load_builtins()
    return tuple(_REGISTRY)


def detector_class(method: str) -> type[Detector]:
    """The detector class of ``method``; InputError naming the valid ones otherwise."""
    _load_builtins()
    if method not in _REGISTRY:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(_REGISTRY)}")
    return _REGISTRY[method]


def make(method: str, settings: Settings | dict | None = None) -> Detector:
    """A new (unfitted) detector of ``method`` with ``settings`` (a mapping or its settings object)."""
    return detector_class(method)(settings)


def config_file_values(config_file: str | Path | None) -> tuple[str | None, dict]:
    """(the ``preset:`` of a YAML settings file or None, its other keys: the file's
    ``settings:`` mapping when it has one, else its top level). InputError for a missing
    file, invalid YAML or anything but a mapping."""
    import yaml

    if not config_file:
        return None, {}
    path = Path(config_file)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise InputError(f"config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"config file {path} must hold a mapping of settings")
    preset = loaded.pop("preset", None)
    values = loaded.get("settings", loaded)
    if not isinstance(values, dict):
        raise InputError(f"config file {path}: settings must be a mapping")
    return preset, dict(values)


def override_values(overrides) -> dict:
    """``--set key=value`` pairs as a mapping, each value typed by YAML (``5`` int, ``1e-3``
    string, ``[8, 4]`` list, ``none`` string)."""
    import yaml

    values = {}
    for item in overrides or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set expects key=value, got {item!r}")
        values[key.strip()] = yaml.safe_load(text)
    return values


def resolve_settings(method: str, preset: str | None = None, config_file: str | Path | None = None,
                     overrides=()) -> Settings:
    """The settings object of ``method``, resolved once at the entry point: a preset (AE/VAE:
    ``--preset``, else the file's ``preset:``, else ``default-<method>``; the command line
    wins over the file), then the YAML file's keys, then ``--set`` overrides. InputError for
    anything invalid, before any work starts."""
    cls = detector_class(method)
    if cls.needs_torch:
        from hsad_scale.detectors.ae_config import resolve_config

        return resolve_config(method, preset, config_file, overrides)
    file_preset, values = config_file_values(config_file)
    if preset or file_preset:
        raise InputError(f"{method} has no presets (got {preset or file_preset!r}); set its settings with --set "
                         f"or a config file: {', '.join(cls.settings_type.field_names()) or 'none'}")
    values.update(override_values(overrides))
    try:
        return cls.settings_type.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{method}: {exc}") from None


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
