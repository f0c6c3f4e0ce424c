"""Saved-model lookup in one place: which detector a model folder holds, and loading it.

A saved model is, in order of precedence:

* a folder with ``detector.json`` (``method``, ``settings``; every detector of the contract
  writes one, :meth:`hsad_scale.detectors.base.Detector.save`);
* a folder with ``rx_stats.npz`` (global RX's statistics, as older runs wrote them), or that
  file itself;
* a folder with ``model.json`` (one AE/VAE network) or ``run-*/model.json`` (several).

``path`` may be the model folder itself or a run folder holding it as ``model/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from hsad_scale.detectors.base import DETECTOR_JSON, FORMAT_VERSION, Detector, detector_class
from hsad_scale.errors import InputError

RX_STATS = "rx_stats.npz"


def model_folder(path: str | Path) -> tuple[Path, str, dict | None]:
    """(the folder (or ``rx_stats.npz`` file) holding the model, its method, the settings
    recorded in ``detector.json`` or None). InputError when ``path`` holds no saved model."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"model {path} does not exist")
    if path.is_file():
        if path.suffix == ".npz":
            return path, "rx", None
        raise InputError(f"{path} is not a saved hsad model (expected a folder, or {RX_STATS})")
    for folder in (path, path / "model"):
        meta_path = folder / DETECTOR_JSON
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                method, settings = meta["method"], meta.get("settings")
            except (ValueError, KeyError, TypeError):
                raise InputError(f"{meta_path} is not a saved hsad detector") from None
            if meta.get("format_version") != FORMAT_VERSION:
                raise InputError(f"{meta_path} has format {meta.get('format_version')!r}; this hsad reads "
                                 f"{FORMAT_VERSION}")
            return folder, method, settings
        if (folder / RX_STATS).is_file():
            return folder, "rx", None
        for model_json in [folder / "model.json", *sorted(folder.glob("run-*/model.json"))][:2]:
            if model_json.is_file():
                try:
                    return folder, json.loads(model_json.read_text())["config"]["kind"], None
                except (ValueError, KeyError, TypeError):
                    raise InputError(f"{model_json} is not a saved hsad model") from None
    raise InputError(f"no saved model in {path} (expected {DETECTOR_JSON}, {RX_STATS}, model.json or "
                     "run-*/model.json)")


def saved_method(path: str | Path) -> str:
    """The method of the model saved at ``path`` (see the module's docstring)."""
    return model_folder(path)[1]


def check_method(path: str | Path, method: str | None) -> str:
    """The saved model's method; InputError when ``method`` is given and differs (a model
    is never run as another detector: ``--method vae --model <AE models>`` is an error)."""
    saved = saved_method(path)
    if method is not None and method != saved:
        raise InputError(f"--method {method} does not match the saved model {path}, which is {saved} "
                         f"(leave out --method, or use --method {saved})")
    return saved


def load_detector(path: str | Path, method: str | None = None, **kwargs) -> Detector:
    """The fitted detector saved at ``path`` (``method``: checked against it; ``kwargs``,
    e.g. ``device`` for AE/VAE, go to its ``load``)."""
    folder, saved, settings = model_folder(path)
    check_method(path, method)
    cls = detector_class(saved)
    if folder.is_file():  # an rx_stats.npz file
        from hsad_scale.stats import BackgroundStats

        det = cls()
        det.set_stats(_load_stats(folder, BackgroundStats))
        return det
    try:
        return cls.load(folder, settings, **kwargs)
    except (OSError, KeyError, TypeError, ValueError, RuntimeError, EOFError) as exc:
        if isinstance(exc, InputError):
            raise
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"the saved model {folder} cannot be loaded ({saved}): {text}") from None


def _load_stats(path: Path, stats_type):
    try:
        return stats_type.load(path)
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path} holds no RX statistics: {exc}") from None
