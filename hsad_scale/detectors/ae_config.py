"""Settings and input scaling of the AE/VAE detectors, without PyTorch.

Validated settings objects (:class:`AEConfig`, :class:`VAEConfig`), their presets, the
metric kinds and the per-band input scaling (:class:`BandScaling`) live here so that a
command can check its settings, and start its cluster, before importing PyTorch (1.2-1.5 s).
:mod:`hsad_scale.detectors.autoencoder` re-exports every name.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from hsad_scale.errors import InputError
from hsad_scale.names import DEVICES  # noqa: F401  (re-exported)
from hsad_scale.stats import BackgroundStats  # noqa: F401  (annotations)

FORMAT_VERSION = 1
SCALINGS = ("standardise", "band-minmax", "global-minmax")
LOSSES = ("mse", "l1")
REDUCTIONS = ("mean", "sum")
SCHEDULES = ("halving", "constant", "geometric")
ACTIVATIONS = ("relu", "linear")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "linear")

#: How each metric turns into a score: "direct" metrics return ``(n,)`` scores;
#: "mahalanobis" metrics return ``(n, k)`` features to whiten against their background.
METRIC_KIND: dict[str, str] = {
    "mse": "direct",  # mean squared residual over bands (model's scaled units)
    "l1": "direct",  # mean absolute residual over bands (model's scaled units)
    "sam": "direct",  # spectral angle (radians) between x and its reconstruction, input units
    "resid-mahal": "mahalanobis",  # residual x - x_hat
    "latent-mahal": "mahalanobis",  # latent code (AE) / latent mean (VAE)
    "joint-mahal": "mahalanobis",  # [latent, residual]
}
AE_METRICS = ("resid-mahal", "mse", "sam", "l1", "latent-mahal", "joint-mahal")
VAE_METRICS = ("latent-mahal", "resid-mahal", "joint-mahal", "mse", "sam", "l1")

#: Rows per forward pass at inference time.
INFERENCE_BATCH = 65536


class CudaFallbackWarning(RuntimeWarning):
    """CUDA was asked for (or chosen by ``device="auto"``) but the model ran on the CPU."""


# --------------------------------------------------------------------------------------
# settings


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ValueError(message)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


@dataclass(frozen=True)
class _BaseConfig:
    """Settings shared by the AE and the VAE. Every field is validated on construction.
    The field defaults of :class:`AEConfig` / :class:`VAEConfig` are the ``default-ae`` /
    ``default-vae`` presets; the study's settings are the ``study-*`` presets."""

    kind: ClassVar[str] = ""
    metrics: ClassVar[tuple[str, ...]] = ()

    layers: int = 3  # Linear layers in the encoder, the last one maps to the latent
    latent: int = 4
    width: int = 64  # first hidden width; later ones follow width_schedule
    width_schedule: str = "halving"  # halving: 64-32-16...; constant; geometric: width..latent
    hidden: tuple[int, ...] | None = None  # explicit hidden widths (len = layers-1), overrides width
    output_activation: str = "auto"  # auto: sigmoid for min-max scalings, linear for standardise
    scaling: str = "standardise"
    loss: str = "mse"
    loss_reduction: str = "mean"  # over bands, per pixel; the batch is always averaged
    epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    members: int = 4  # networks trained together; reconstructions averaged, latents concatenated
    max_train_pixels: int = 200_000  # training sample is drawn at random above this
    max_steps: int | None = 300  # cap on optimiser steps (None: epochs x batches)
    min_steps: int = 0  # small samples: extra passes until this many steps (capped by max_steps)
    holdout: float = 0.0  # fraction of the training sample held back to monitor / early-stop
    patience: int = 0  # epochs without held-out improvement before stopping (0: never stop)
    metric: str = ""  # default metric for scoring ("" = the detector's first metric)

    def __post_init__(self):
        for name in ("layers", "latent", "width", "epochs", "batch_size", "seed", "members",
                     "max_train_pixels", "min_steps", "patience"):
            _check(_is_int(getattr(self, name)), f"{name} must be an integer, got {getattr(self, name)!r}")
        _check(self.layers >= 1, f"layers must be >= 1, got {self.layers}")
        _check(self.latent >= 1, f"latent must be >= 1, got {self.latent}")
        _check(self.width >= 1, f"width must be >= 1, got {self.width}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(0 <= self.seed < 2**63, f"seed must be in [0, 2**63), got {self.seed}")
        _check(1 <= self.members <= 64, f"members must be in [1, 64], got {self.members}")
        _check(self.max_train_pixels >= 2, f"max_train_pixels must be >= 2, got {self.max_train_pixels}")
        _check(self.min_steps >= 0, f"min_steps must be >= 0, got {self.min_steps}")
        _check(self.patience >= 0, f"patience must be >= 0, got {self.patience}")
        if self.max_steps is not None:
            _check(_is_int(self.max_steps) and self.max_steps >= 1,
                   f"max_steps must be a positive integer or None, got {self.max_steps!r}")
        _check(_is_real(self.lr) and 0 < self.lr <= 1 and math.isfinite(self.lr),
               f"lr must be a number in (0, 1], got {self.lr!r}")
        _check(_is_real(self.holdout) and 0 <= self.holdout < 0.9,
               f"holdout must be a number in [0, 0.9), got {self.holdout!r}")
        for name, allowed in (("width_schedule", SCHEDULES), ("output_activation", OUTPUT_ACTIVATIONS),
                              ("scaling", SCALINGS), ("loss", LOSSES), ("loss_reduction", REDUCTIONS)):
            _check(getattr(self, name) in allowed,
                   f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        if self.hidden is not None:
            hidden = self.hidden
            _check(isinstance(hidden, (tuple, list)) and all(_is_int(h) and h >= 1 for h in hidden),
                   f"hidden must be a list of positive integers, got {hidden!r}")
            _check(len(hidden) == self.layers - 1,
                   f"hidden must list layers-1 = {self.layers - 1} widths, got {len(hidden)}")
            object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        if self.metric == "":
            object.__setattr__(self, "metric", self.metrics[0])
        _check(self.metric in self.metrics,
               f"metric must be one of {', '.join(self.metrics)} for the {self.kind}; got {self.metric!r}")

    # ---- conversions
    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "_BaseConfig":
        """Build from a mapping (YAML config, ``--set key=value`` pairs already typed);
        unknown keys raise ValueError listing the valid ones. ``kind``/``preset`` keys are
        accepted: ``preset`` starts from that preset, ``kind`` must match."""
        d = dict(d)
        base: dict[str, Any] = {}
        kind = d.pop("kind", cls.kind)
        if kind != cls.kind:
            raise ValueError(f"settings are for {kind!r}, not {cls.kind!r}")
        preset = d.pop("preset", None)
        if preset is not None:
            if preset not in PRESETS or PRESETS[preset].kind != cls.kind:
                valid = sorted(k for k, v in PRESETS.items() if v.kind == cls.kind)
                raise ValueError(f"unknown {cls.kind} preset {preset!r}; valid: {', '.join(valid)}")
            base = PRESETS[preset].to_dict()
            base.pop("kind")
        unknown = sorted(set(d) - set(cls.field_names()))
        if unknown:
            raise ValueError(f"unknown {cls.kind} setting(s) {', '.join(unknown)}; "
                             f"valid: {', '.join(sorted(cls.field_names()))}")
        base.update(d)
        if isinstance(base.get("hidden"), list):
            base["hidden"] = tuple(base["hidden"])
        for name in ("max_steps", "hidden"):  # "none" from a command line means None
            if isinstance(base.get(name), str) and base[name].strip().lower() in ("none", "null", ""):
                base[name] = None
        for name in ("lr", "holdout", "beta"):  # YAML reads 1e-3 (no dot) as a string
            value = base.get(name)
            if isinstance(value, str):
                try:
                    base[name] = float(value)
                except ValueError:
                    pass  # __post_init__ reports it
            elif _is_int(value):
                base[name] = float(value)
        return cls(**base)

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        if d["hidden"] is not None:
            d["hidden"] = list(d["hidden"])
        return d

    def replace(self, **changes) -> "_BaseConfig":
        return self.from_dict({**self.to_dict(), **changes})

    # ---- derived
    def hidden_widths(self, bands: int) -> tuple[int, ...]:
        """Encoder hidden widths ``(layers - 1,)``, first after the input."""
        if self.hidden is not None:
            return self.hidden
        n = self.layers - 1
        if self.width_schedule == "constant":
            return (self.width,) * n
        if self.width_schedule == "halving":
            return tuple(max(self.width >> i, self.latent) for i in range(n))
        # geometric: from width down towards latent, evenly on a log scale
        ratio = (self.latent / self.width) ** (1.0 / max(n, 1))
        return tuple(max(int(round(self.width * ratio**i)), self.latent) for i in range(n))

    def output_act(self) -> str:
        if self.output_activation != "auto":
            return self.output_activation
        return "linear" if self.scaling == "standardise" else "sigmoid"


@dataclass(frozen=True)
class AEConfig(_BaseConfig):
    """Autoencoder settings; the field defaults are the ``default-ae`` preset."""

    kind: ClassVar[str] = "ae"
    metrics: ClassVar[tuple[str, ...]] = AE_METRICS
    latent_activation: str = "linear"  # the study puts ReLU on the latent (dead units)

    def __post_init__(self):
        super().__post_init__()
        _check(self.latent_activation in ACTIVATIONS,
               f"latent_activation must be one of {', '.join(ACTIVATIONS)}; got {self.latent_activation!r}")


@dataclass(frozen=True)
class VAEConfig(_BaseConfig):
    """VAE settings; the field defaults are the ``default-vae`` preset. ``layers`` counts
    the encoder's Linear layers including the mean / log-variance branches."""

    kind: ClassVar[str] = "vae"
    metrics: ClassVar[tuple[str, ...]] = VAE_METRICS
    loss_reduction: str = "sum"  # the reconstruction term sums over bands, as in the study
    metric: str = "joint-mahal"
    beta: float = 1.0  # weight of KL(N(mu, sigma^2) || N(0, I)), summed over latent units

    def __post_init__(self):
        super().__post_init__()
        _check(_is_real(self.beta) and 0 <= self.beta < 1e6, f"beta must be a number >= 0, got {self.beta!r}")


def config_from_dict(d: dict[str, Any]) -> AEConfig | VAEConfig:
    """Settings from a mapping with a ``kind`` ("ae"/"vae") or a ``preset`` key."""
    d = dict(d)
    kind = d.get("kind")
    if kind is None and "preset" in d:
        if d["preset"] not in PRESETS:
            raise ValueError(f"unknown preset {d['preset']!r}; valid: {', '.join(sorted(PRESETS))}")
        kind = PRESETS[d["preset"]].kind
        d["kind"] = kind
    classes = {"ae": AEConfig, "vae": VAEConfig}
    if kind not in classes:
        raise ValueError(f"kind must be 'ae' or 'vae', got {kind!r}")
    return classes[kind].from_dict(d)


#: The study's training set-up: one global min-max scaling, sigmoid output, one network,
#: every pixel once per epoch, no step cap.
_STUDY = dict(scaling="global-minmax", output_activation="sigmoid", members=1, max_steps=None,
              max_train_pixels=10**9)

PRESETS: dict[str, AEConfig | VAEConfig] = {
    # B-64-4-64-B, ReLU on the latent, MSE, 1 epoch, batch 32
    "study-ae": AEConfig(layers=2, latent=4, width=64, latent_activation="relu", loss="mse", epochs=1,
                         batch_size=32, lr=1e-3, metric="mse", **_STUDY),
    # B-64-32-16-4-16-32-64-B
    "study-ae-4l": AEConfig(layers=4, latent=4, width=64, latent_activation="relu", loss="mse", epochs=1,
                            batch_size=32, lr=1e-3, metric="mse", **_STUDY),
    # B-16-(mu, logvar: 2)-16-B, L1 summed over bands + 5 KL, 5 epochs, batch 128
    "study-vae": VAEConfig(layers=2, latent=2, width=16, loss="l1", loss_reduction="sum", beta=5.0, epochs=5,
                           batch_size=128, lr=1e-3, metric="latent-mahal", **_STUDY),
    # chosen on the shared scenes: docs/detectors.md
    "default-ae": AEConfig(),
    "default-vae": VAEConfig(),
}
DEFAULT_AE = PRESETS["default-ae"]
DEFAULT_VAE = PRESETS["default-vae"]


# --------------------------------------------------------------------------------------
# input scaling


@dataclass(frozen=True)
class BandScaling:
    """Per-band affine map ``(x - offset) / scale``; ``offset``/``scale`` ``(B,)`` float64.

    ``standardise`` uses the background mean and standard deviation (the diagonal of the
    same :class:`BackgroundStats` reduction RX uses); ``band-minmax`` each band's min and
    max; ``global-minmax`` one min and max over all bands (the study's scaling)."""

    offset: np.ndarray
    scale: np.ndarray
    mode: str = "standardise"

    def __post_init__(self):
        offset = np.asarray(self.offset, dtype=np.float64).reshape(-1)
        scale = np.asarray(self.scale, dtype=np.float64).reshape(-1)
        _check(offset.shape == scale.shape, "offset and scale must have the same shape")
        _check(self.mode in SCALINGS, f"scaling mode must be one of {', '.join(SCALINGS)}; got {self.mode!r}")
        # constant bands would divide by zero: leave them unscaled
        bad = ~np.isfinite(scale) | (scale <= 0)
        if bad.any():
            scale = np.where(bad, 1.0, scale)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "scale", scale)

    @property
    def bands(self) -> int:
        return self.offset.shape[0]

    @classmethod
    def from_stats(cls, stats: BackgroundStats) -> "BandScaling":
        """Standardisation from background statistics (mean, sqrt of the variance)."""
        return cls(stats.mean, np.sqrt(np.maximum(np.diag(stats.covariance), 0.0)), "standardise")

    @classmethod
    def from_summary(cls, summary, mode: str) -> "BandScaling":
        """Scaling ``mode`` from a per-band :class:`hsad_scale.stats.BandSummary`."""
        _check(mode in SCALINGS, f"scaling mode must be one of {', '.join(SCALINGS)}; got {mode!r}")
        if not summary.count >= 2:
            raise InputError("the cube has fewer than two valid pixels (every other one is NaN or nodata in "
                             "some band): band scaling needs at least two")
        if mode == "standardise":
            return cls(summary.mean, np.sqrt(np.maximum(summary.variance, 0.0)), "standardise")
        return cls.from_minmax(summary.minimum, summary.maximum, mode)

    @classmethod
    def from_minmax(cls, minimum, maximum, mode: str = "band-minmax") -> "BandScaling":
        """Min-max scaling from per-band ``minimum``/``maximum`` ``(B,)``. With
        ``mode="global-minmax"`` the overall min and max of those are used for every band."""
        minimum = np.asarray(minimum, dtype=np.float64)
        maximum = np.asarray(maximum, dtype=np.float64)
        if mode == "global-minmax":
            lo, hi = np.nanmin(minimum), np.nanmax(maximum)
            minimum, maximum = np.full(minimum.shape, lo), np.full(maximum.shape, hi)
        elif mode != "band-minmax":
            raise ValueError(f"min-max mode must be band-minmax or global-minmax, got {mode!r}")
        return cls(minimum, maximum - minimum, mode)

    @classmethod
    def from_pixels(cls, pixels: np.ndarray, mode: str = "standardise") -> "BandScaling":
        """Scaling of ``pixels`` ``(n, B)`` (rows with NaN skipped)."""
        _check(mode in SCALINGS, f"scaling mode must be one of {', '.join(SCALINGS)}; got {mode!r}")
        x = pixels[np.isfinite(pixels).all(axis=1)]
        if not x.shape[0] >= 2:
            raise InputError("the cube has fewer than two valid pixels (every other one is NaN or nodata in "
                             "some band): band scaling needs at least two")
        if mode == "standardise":
            mean = x.mean(axis=0, dtype=np.float64)
            var = np.zeros_like(mean)
            for start in range(0, x.shape[0], 65536):  # float64 accumulation, bounded memory
                d = x[start:start + 65536].astype(np.float64) - mean
                var += np.einsum("ij,ij->j", d, d)
            return cls(mean, np.sqrt(var / max(x.shape[0] - 1, 1)), "standardise")
        return cls.from_minmax(x.min(axis=0), x.max(axis=0), mode)

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """Scaled pixels, float32 ``(n, B)``."""
        _check(pixels.shape[-1] == self.bands,
               f"pixels have {pixels.shape[-1]} bands, the scaling has {self.bands}")
        offset = self.offset.astype(np.float32)
        inv = (1.0 / self.scale).astype(np.float32)
        out = np.subtract(pixels, offset, dtype=np.float32, order="C")  # row-major for the network, one copy
        out *= inv
        return out

    def invert(self, scaled: np.ndarray) -> np.ndarray:
        return scaled.astype(np.float32, copy=False) * self.scale.astype(np.float32) + self.offset.astype(np.float32)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "BandScaling":
        return cls(np.asarray(d["offset"], dtype=np.float64), np.asarray(d["scale"], dtype=np.float64), d["mode"])


DEFAULT_PRESET = {"ae": "default-ae", "vae": "default-vae"}


def resolve_config(method: str, preset: str | None = None, config_file: str | None = None,
                   overrides: list[str] | tuple = ()) -> AEConfig | VAEConfig:
    """Settings of a learned detector: a preset (``preset``, else the YAML file's ``preset:``,
    else ``default-<method>``: the command line wins over the file), then the file's keys,
    then ``key=value`` overrides."""
    from hsad_scale.detectors.base import config_file_values, override_values

    file_preset, values = config_file_values(config_file)
    values.update(override_values(overrides))
    preset = preset or file_preset or DEFAULT_PRESET[method]
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    base = PRESETS[preset]
    if base.kind != method:
        raise InputError(f"preset {preset!r} is a {base.kind.upper()}, not a {method.upper()}")
    try:
        return type(base).from_dict({**base.to_dict(), **values})
    except (TypeError, ValueError) as exc:
        raise InputError(str(exc)) from None
