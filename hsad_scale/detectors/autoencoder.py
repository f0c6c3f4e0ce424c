"""Autoencoder (AE) and variational autoencoder (VAE) detectors on plain arrays.

Pixels are ``(n, bands)`` float32 arrays. :func:`fit` trains a model on a sample of
background pixels; :meth:`TrainedModel.score` maps pixels either to a score per pixel
(``METRIC_KIND[metric] == "direct"``) or to features whose squared Mahalanobis distance to
their own background statistics is the score (``"mahalanobis"``: the tile layer reduces
:class:`~hsad_scale.stats.BackgroundStats` over the features of the whole scene, then
whitens them with :func:`~hsad_scale.stats.whitener`, exactly like RX).
:func:`score_in_memory` does both steps for an array that fits in memory.

Networks are fully connected. ``members > 1`` trains several independently initialised
networks at once (stacked weights, one batched matrix product per layer, so on a CPU they
cost little more than one): their reconstructions are averaged and their latents
concatenated. A saved model is ``model.safetensors`` (weights) + ``model.json``
(settings, scaling, training history, library versions); loading executes no code.
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from hsad_scale.stats import BackgroundStats, whitener

FORMAT_VERSION = 1
SCALINGS = ("standardise", "band-minmax", "global-minmax")
LOSSES = ("mse", "l1")
REDUCTIONS = ("mean", "sum")
SCHEDULES = ("halving", "constant", "geometric")
ACTIVATIONS = ("relu", "linear")
OUTPUT_ACTIVATIONS = ("auto", "sigmoid", "linear")
DEVICES = ("auto", "cpu", "cuda")

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
        _check(summary.count >= 2, "scaling needs at least two valid pixels")
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
        _check(x.shape[0] >= 2, "scaling needs at least two valid pixels")
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
        return (pixels.astype(np.float32, copy=False) - offset) * inv

    def invert(self, scaled: np.ndarray) -> np.ndarray:
        return scaled.astype(np.float32, copy=False) * self.scale.astype(np.float32) + self.offset.astype(np.float32)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "offset": self.offset.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "BandScaling":
        return cls(np.asarray(d["offset"], dtype=np.float64), np.asarray(d["scale"], dtype=np.float64), d["mode"])


# --------------------------------------------------------------------------------------
# networks: every layer holds ``members`` independent weight sets, applied with one bmm


class StackedLinear(nn.Module):
    """``members`` independent Linear layers: input ``(M, n, in)`` -> ``(M, n, out)``."""

    def __init__(self, members: int, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, n_in, n_out))
        self.bias = nn.Parameter(torch.empty(members, 1, n_out))

    def reset(self, generator: torch.Generator) -> None:
        # torch.nn.Linear's default: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias
        bound = 1.0 / math.sqrt(self.weight.shape[1])
        with torch.no_grad():
            self.weight.copy_(torch.rand(self.weight.shape, generator=generator) * (2 * bound) - bound)
            self.bias.copy_(torch.rand(self.bias.shape, generator=generator) * (2 * bound) - bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)

    def forward_shared(self, x: torch.Tensor) -> torch.Tensor:
        """The same input ``(n, in)`` into every member: one matrix product ``(n, in) @ (in, M*out)``
        instead of a batched one over M copies; returns ``(M, n, out)`` (a permuted view)."""
        m, n_in, n_out = self.weight.shape
        flat = torch.addmm(self.bias.reshape(m * n_out), x, self.weight.permute(1, 0, 2).reshape(n_in, m * n_out))
        return flat.view(x.shape[0], m, n_out).permute(1, 0, 2)

    def forward_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The members' mean output ``(n, out)`` of inputs ``(M, n, in)``: one product
        ``(n, M*in) @ (M*in, out)``, without the ``(M, n, out)`` intermediate."""
        m, n_in, n_out = self.weight.shape
        stacked = x.permute(1, 0, 2).reshape(x.shape[1], m * n_in)
        return torch.addmm(self.bias.mean(dim=0).reshape(n_out), stacked, self.weight.reshape(m * n_in, n_out),
                           alpha=1.0 / m)


def _mlp(members: int, widths: list[int], last_activation: str) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        mods.append(StackedLinear(members, a, b))
        last = i == len(widths) - 2
        act = last_activation if last else "relu"
        if act == "relu":
            mods.append(nn.ReLU())
        elif act == "sigmoid":
            mods.append(nn.Sigmoid())
    return nn.Sequential(*mods)


class AENet(nn.Module):
    """Encoder ``B -> hidden... -> latent`` and its mirror image as decoder."""

    def __init__(self, config: _BaseConfig, bands: int):
        super().__init__()
        hidden = list(config.hidden_widths(bands))
        m = config.members
        variational = isinstance(config, VAEConfig)
        self.variational = variational
        enc_widths = [bands, *hidden]
        if variational:
            self.encoder = _mlp(m, enc_widths, "relu") if hidden else nn.Sequential()
            top = enc_widths[-1]
            self.mu = StackedLinear(m, top, config.latent)
            self.logvar = StackedLinear(m, top, config.latent)
        else:
            self.encoder = _mlp(m, [*enc_widths, config.latent], config.latent_activation)
        self.decoder = _mlp(m, [config.latent, *hidden[::-1], bands], config.output_act())

    def reset(self, generator: torch.Generator) -> None:
        for mod in self.modules():
            if isinstance(mod, StackedLinear):
                mod.reset(generator)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.encoder(x)
        if self.variational:
            return self.mu(h), self.logvar(h)
        return h, None

    def encode_shared(self, x: torch.Tensor) -> torch.Tensor:
        """Latent (means) ``(M, n, latent)`` of one input ``(n, B)`` for every member
        (inference: the same values as :meth:`encode` on ``x`` expanded to ``(M, n, B)``)."""
        layers = list(self.encoder) + ([self.mu] if self.variational else [])
        h = layers[0].forward_shared(x)
        for layer in layers[1:]:
            h = _inference_layer(layer, h)
        return h

    def decode_mean(self, z: torch.Tensor) -> torch.Tensor:
        """Members' mean reconstruction ``(n, B)`` of latents ``(M, n, latent)``; the last
        layer and the mean are one product when the output is linear."""
        layers = list(self.decoder)
        if not isinstance(layers[-1], StackedLinear):  # a sigmoid output: average after it
            return self.decoder(z).mean(dim=0)
        h = z
        for layer in layers[:-1]:
            h = _inference_layer(layer, h)
        return layers[-1].forward_mean(h)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Returns ``(x_hat, latent, logvar)``; the VAE samples its latent when a generator
        is given (training) and decodes the mean otherwise."""
        z, logvar = self.encode(x)
        code = z
        if logvar is not None and generator is not None:
            eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)
            code = z + eps * torch.exp(0.5 * logvar)
        return self.decoder(code), z, logvar


def _inference_layer(layer: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """``layer(h)``, with ReLU in place (no gradients at inference: saves a tensor per layer)."""
    return torch.relu_(h) if isinstance(layer, nn.ReLU) else layer(h)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last axis."""
    return 0.5 * torch.sum(mu * mu + torch.exp(logvar) - 1.0 - logvar, dim=-1)


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor, loss: str, reduction: str) -> torch.Tensor:
    """Per-sample reconstruction error (reduced over the last axis)."""
    d = x_hat - x
    err = d * d if loss == "mse" else d.abs()
    return err.sum(dim=-1) if reduction == "sum" else err.mean(dim=-1)


def training_loss(config: _BaseConfig, x, x_hat, mu, logvar) -> torch.Tensor:
    """Batch loss: mean over members and samples of reconstruction (+ beta x KL for the VAE)."""
    per_sample = reconstruction_loss(x, x_hat, config.loss, config.loss_reduction)
    if logvar is not None and getattr(config, "beta", 0.0) > 0:
        per_sample = per_sample + config.beta * kl_divergence(mu, logvar)
    return per_sample.mean()


# --------------------------------------------------------------------------------------
# training


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA warns and uses the CPU."""
    if isinstance(device, torch.device):
        device = device.type
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if device == "cuda":
        warnings.warn("CUDA was requested but is not available; running on the CPU", CudaFallbackWarning,
                      stacklevel=3)
    return torch.device("cpu")


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _sample_rows(pixels: np.ndarray, config: _BaseConfig, rng: np.random.Generator) -> np.ndarray:
    valid = np.isfinite(pixels).all(axis=1)
    idx = np.flatnonzero(valid)
    _check(idx.size >= 2, "training needs at least two pixels without NaN")
    if idx.size > config.max_train_pixels:
        idx = np.sort(rng.choice(idx, size=config.max_train_pixels, replace=False))
    return idx


def fit(pixels_train: np.ndarray, config: AEConfig | VAEConfig, scaling: BandScaling | None = None,
        device: str = "auto") -> "TrainedModel":
    """Train an AE or VAE (by the type of ``config``) on background pixels ``(n, B)``.

    At most ``config.max_train_pixels`` rows (drawn with the seed) are used; a fraction
    ``config.holdout`` of them is held back to monitor, and with ``patience`` stop,
    training (the weights of the best held-out epoch are kept). ``scaling`` defaults to
    ``config.scaling`` computed on ``pixels_train``. Same seed on the CPU -> same weights."""
    if not isinstance(config, (AEConfig, VAEConfig)):
        raise TypeError(f"config must be AEConfig or VAEConfig, got {type(config).__name__}")
    pixels_train = np.asarray(pixels_train)
    if pixels_train.ndim != 2 or pixels_train.shape[1] < 1:
        raise ValueError(f"pixels_train must be (n, bands), got shape {pixels_train.shape}")
    if scaling is None:
        scaling = BandScaling.from_pixels(pixels_train, config.scaling)
    elif scaling.bands != pixels_train.shape[1]:
        raise ValueError(f"scaling has {scaling.bands} bands, pixels_train has {pixels_train.shape[1]}")
    dev = resolve_device(device)
    try:
        return _fit(pixels_train, config, scaling, dev)
    except RuntimeError as exc:
        if dev.type != "cuda" or not _is_oom(exc):
            raise
        torch.cuda.empty_cache()
        warnings.warn(f"CUDA ran out of memory while training ({exc}); retrying on the CPU",
                      CudaFallbackWarning, stacklevel=2)
        return _fit(pixels_train, config, scaling, torch.device("cpu"))


def _fit(pixels_train, config, scaling, dev) -> "TrainedModel":
    t0 = time.perf_counter()
    rng = np.random.default_rng(config.seed)
    rows = _sample_rows(pixels_train, config, rng)
    x_all = scaling.apply(pixels_train[rows])
    n_hold = int(round(config.holdout * x_all.shape[0])) if config.holdout > 0 else 0
    if n_hold:
        perm = rng.permutation(x_all.shape[0])
        x_hold, x_fit = x_all[perm[:n_hold]], x_all[perm[n_hold:]]
    else:
        x_hold, x_fit = None, x_all
    n, bands = x_fit.shape
    _check(n >= 1, "no training pixels left after the hold-out split")

    gen = torch.Generator().manual_seed(config.seed)
    net = AENet(config, bands)
    net.reset(gen)
    net.to(dev)
    noise_gen = torch.Generator(device=dev).manual_seed(config.seed + 1) if net.variational else None
    opt = _adam(net, config.lr, dev)
    xt = torch.from_numpy(np.ascontiguousarray(x_fit)).to(dev)
    xh = torch.from_numpy(np.ascontiguousarray(x_hold)).to(dev) if x_hold is not None else None

    m, bs = config.members, min(config.batch_size, n)
    per_epoch = math.ceil(n / bs)
    total = max(config.epochs * per_epoch, config.min_steps)
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    epochs = math.ceil(total / per_epoch)

    history: dict[str, Any] = {"loss": [], "holdout_loss": [], "steps": 0}
    best, best_state, best_epoch, bad = math.inf, None, 0, 0
    steps = 0
    net.train()
    for epoch in range(epochs):
        # one permutation per member: (M, n), each member sees the data in its own order
        order = torch.stack([torch.randperm(n, generator=gen) for _ in range(m)]).to(dev)
        running, count = torch.zeros((), device=dev), 0
        for start in range(0, n, bs):
            if steps >= total:
                break
            xb = xt[order[:, start:start + bs]]  # (M, b, B)
            x_hat, mu, logvar = net(xb, noise_gen)
            loss = training_loss(config, xb, x_hat, mu, logvar)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += loss.detach()
            count += 1
            steps += 1
        history["loss"].append(float(running) / max(count, 1))
        if xh is not None:
            h = _holdout_loss(net, config, xh)
            history["holdout_loss"].append(h)
            if h < best - 1e-4 * abs(best):
                best, best_epoch, bad = h, epoch + 1, 0
                if config.patience:
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                bad += 1
                if config.patience and bad >= config.patience:
                    break
        if steps >= total:
            break
    stopped = len(history["loss"])
    if best_state is not None and best_epoch < stopped:
        net.load_state_dict(best_state)
    history.update(steps=steps, epochs_run=stopped, best_epoch=best_epoch or stopped,
                   train_pixels=int(n), holdout_pixels=int(n_hold), device=dev.type,
                   seconds=time.perf_counter() - t0)
    net.eval()
    return TrainedModel(config, scaling, net.cpu() if dev.type != "cuda" else net, history)


def _adam(net: nn.Module, lr: float, dev: torch.device) -> torch.optim.Adam:
    """Adam; the fused kernel where available (a third of the step time on a CPU)."""
    try:
        return torch.optim.Adam(net.parameters(), lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch / unsupported device
        return torch.optim.Adam(net.parameters(), lr=lr)


def _holdout_loss(net: AENet, config, xh: torch.Tensor) -> float:
    """Held-out loss with the latent mean (no sampling), averaged over members."""
    with torch.inference_mode():
        total = 0.0
        for start in range(0, xh.shape[0], INFERENCE_BATCH):
            xb = xh[start:start + INFERENCE_BATCH].unsqueeze(0).expand(config.members, -1, -1)
            x_hat, mu, logvar = net(xb)
            total += float(training_loss(config, xb, x_hat, mu, logvar)) * xb.shape[1]
        return total / xh.shape[0]


# --------------------------------------------------------------------------------------
# the trained model


def library_versions() -> dict[str, str]:
    import safetensors

    from hsad_scale import __version__

    return {"hsad_scale": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


@dataclass
class TrainedModel:
    """A trained AE/VAE with its input scaling and training history."""

    config: AEConfig | VAEConfig
    scaling: BandScaling
    net: AENet
    history: dict = field(default_factory=dict)
    versions: dict = field(default_factory=library_versions)

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.config.metrics

    @property
    def bands(self) -> int:
        return self.scaling.bands

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def feature_count(self, metric: str) -> int:
        """Width ``k`` of the features a Mahalanobis metric returns."""
        lat = self.config.latent * self.config.members
        return {"resid-mahal": self.bands, "latent-mahal": lat, "joint-mahal": lat + self.bands}[metric]

    def _check_metric(self, metric: str | None) -> str:
        metric = metric or self.config.metric
        if metric not in self.metrics:
            raise ValueError(f"unknown metric {metric!r} for the {self.config.kind}; "
                             f"valid: {', '.join(self.metrics)}")
        return metric

    def reconstruct(self, pixels: np.ndarray) -> np.ndarray:
        """Reconstruction ``(n, B)`` in input units (members' reconstructions averaged)."""
        x = self._forward(pixels, want="recon")
        return self.scaling.invert(x)

    def score(self, pixels: np.ndarray, metric: str | None = None) -> np.ndarray:
        """Scores ``(n,)`` float32 of a direct metric, or features ``(n, k)`` float32 of a
        Mahalanobis metric (see :data:`METRIC_KIND`). Rows with NaN give NaN."""
        metric = self._check_metric(metric)
        pixels = np.asarray(pixels)
        if pixels.ndim != 2 or pixels.shape[1] != self.bands:
            raise ValueError(f"pixels must be (n, {self.bands}), got shape {pixels.shape}")
        try:
            return self._forward(pixels, want=metric)
        except RuntimeError as exc:
            if self.device.type != "cuda" or not _is_oom(exc):
                raise
            torch.cuda.empty_cache()
            warnings.warn(f"CUDA ran out of memory while scoring ({exc}); moving the model to the CPU",
                          CudaFallbackWarning, stacklevel=2)
            self.net.to("cpu")
            return self._forward(pixels, want=metric)

    def _forward(self, pixels: np.ndarray, want: str) -> np.ndarray:
        n = pixels.shape[0]
        k = {"recon": self.bands, "resid-mahal": self.bands}.get(want)
        if k is None:
            k = self.feature_count(want) if METRIC_KIND[want] == "mahalanobis" else 0
        out = np.empty((n, k) if k else (n,), dtype=np.float32)
        dev = self.device
        scale32 = torch.from_numpy(self.scaling.scale.astype(np.float32)).to(dev)
        offset32 = torch.from_numpy(self.scaling.offset.astype(np.float32)).to(dev)
        with torch.inference_mode():
            for start in range(0, n, INFERENCE_BATCH):
                chunk = pixels[start:start + INFERENCE_BATCH]
                x = torch.from_numpy(np.ascontiguousarray(self.scaling.apply(chunk))).to(dev)
                z = self.net.encode_shared(x)
                x_hat = self.net.decode_mean(z) if want not in ("latent-mahal",) else None
                if want == "recon":
                    res = x_hat
                elif want == "resid-mahal":
                    res = x - x_hat
                elif want == "latent-mahal":
                    res = z.permute(1, 0, 2).reshape(x.shape[0], -1)
                elif want == "joint-mahal":
                    res = torch.cat([z.permute(1, 0, 2).reshape(x.shape[0], -1), x - x_hat], dim=1)
                elif want == "mse":
                    res = ((x - x_hat) ** 2).mean(dim=1)
                elif want == "l1":
                    res = (x - x_hat).abs().mean(dim=1)
                elif want == "sam":
                    # spectral angle in input units (the scaling is undone on both sides)
                    xo = x * scale32 + offset32
                    ro = x_hat * scale32 + offset32
                    cos = (xo * ro).sum(dim=1) / (xo.norm(dim=1) * ro.norm(dim=1)).clamp_min(1e-30)
                    res = torch.arccos(cos.clamp(-1.0, 1.0))
                else:  # pragma: no cover
                    raise ValueError(want)
                out[start:start + chunk.shape[0]] = res.float().cpu().numpy()
        return out

    # ---- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` + ``model.json`` into ``directory``."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "hsad-scale-ae"})
        meta = {"format_version": FORMAT_VERSION, "bands": self.bands, "config": self.config.to_dict(),
                "scaling": self.scaling.to_dict(), "history": self.history, "versions": self.versions}
        (directory / "model.json").write_text(json.dumps(meta, indent=2))
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "TrainedModel":
        from safetensors.torch import load_file

        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported model format {meta.get('format_version')!r} in {directory}")
        config = config_from_dict(meta["config"])
        scaling = BandScaling.from_dict(meta["scaling"])
        net = AENet(config, int(meta["bands"]))
        net.load_state_dict(load_file(str(directory / "model.safetensors")))
        net.eval()
        net.to(resolve_device(device))
        return cls(config, scaling, net, meta.get("history", {}), meta.get("versions", {}))

    def describe(self) -> dict:
        """Run metadata for run.json."""
        return {"config": self.config.to_dict(), "scaling_mode": self.scaling.mode,
                "history": self.history, "versions": self.versions}


# --------------------------------------------------------------------------------------
# in-memory scoring


def score_in_memory(model: TrainedModel, pixels: np.ndarray, metric: str | None = None) -> np.ndarray:
    """Scores ``(n,)`` float64 of ``pixels``: direct metrics as they are, Mahalanobis metrics
    as the squared Mahalanobis distance of the features to their own statistics over
    ``pixels`` (regularised like RX's)."""
    metric = model._check_metric(metric)
    out = model.score(pixels, metric)
    if METRIC_KIND[metric] == "direct":
        return out.astype(np.float64)
    return whitener(BackgroundStats.from_pixels(out)).mahalanobis(out)
