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

import json
import math
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hsad_scale.detectors.ae_config import *  # noqa: F401,F403  (the settings, re-exported)
from hsad_scale.detectors.ae_config import _BaseConfig, _check  # noqa: F401
from hsad_scale import progress
from hsad_scale.stats import BackgroundStats, whitener

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
    reported = time.monotonic()
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
            opt.zero_grad()
            loss.backward()
            opt.step()
            running += loss.detach()
            count += 1
            steps += 1
            if time.monotonic() - reported >= progress.TRAINING_REPORT_SECONDS:  # shown by the client
                progress.report_training(config.seed, steps, total, float(running) / count)
                reported = time.monotonic()
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
    # the last step is always reported: a training shorter than one report interval shows too
    progress.report_training(config.seed, steps, total, history["loss"][-1] if history["loss"] else None)
    if best_state is not None and best_epoch < stopped:
        net.load_state_dict(best_state)
    history.update(steps=steps, epochs_run=stopped, best_epoch=best_epoch or stopped,
                   train_pixels=int(n), holdout_pixels=int(n_hold), device=dev.type,
                   seconds=time.perf_counter() - t0)
    net.eval()
    return TrainedModel(config, scaling, net.cpu() if dev.type != "cuda" else net, history)


class _Adam:
    """``torch.optim.Adam(params, lr, fused=<where supported>)``'s update through PyTorch's own
    functional kernel (``torch.optim.adam.adam``: the same state, the same arithmetic, bit for
    bit; tests/test_autoencoder.py), without the ``torch.optim.Optimizer`` wrapper, which
    imports ``torch._dynamo`` when first built: 1.75 s of a worker's time on 2 vCPUs, for a
    compiler training never uses."""

    # keyword arguments step() passes to torch.optim.adam.adam; ``decoupled_weight_decay`` is the
    # newest (PyTorch 2.7), hence pyproject's ``torch>=2.7``
    ADAM_KWARGS = ("foreach", "capturable", "differentiable", "fused", "grad_scale", "found_inf", "has_complex",
                   "decoupled_weight_decay", "amsgrad", "beta1", "beta2", "lr", "weight_decay", "eps", "maximize")

    def __init__(self, params, lr: float):
        """Raises ImportError when this PyTorch lacks a private API the update relies on
        (``_device_dtype_check_for_fused``, ``_get_scalar_dtype``, a keyword of ``adam``)."""
        import inspect

        from torch.optim.adam import adam
        from torch.optim.optimizer import _device_dtype_check_for_fused, _get_scalar_dtype  # noqa: F401

        missing = set(self.ADAM_KWARGS) - set(inspect.signature(adam).parameters)
        if missing:
            raise ImportError(f"torch.optim.adam.adam lacks {sorted(missing)}")
        self.params, self.lr, self.state = list(params), lr, {}
        try:
            for param in self.params:
                _device_dtype_check_for_fused(param)
            self.fused = True
        except RuntimeError:  # a device without the fused kernel: Adam's default path
            self.fused = None

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    def step(self) -> None:
        from torch.optim.adam import adam
        from torch.optim.optimizer import _get_scalar_dtype

        params = [p for p in self.params if p.grad is not None]
        for p in params:
            if p not in self.state:  # as Adam._init_group: the step count on the device only when fused
                step = (torch.zeros((), dtype=_get_scalar_dtype(is_fused=True), device=p.device) if self.fused
                        else torch.tensor(0.0, dtype=_get_scalar_dtype(), device="cpu"))
                zeros = torch.zeros_like(p, memory_format=torch.preserve_format)
                self.state[p] = (step, zeros, zeros.clone())
        steps, exp_avgs, exp_avg_sqs = zip(*(self.state[p] for p in params))
        with torch.no_grad():  # as Optimizer.step (not differentiable)
            adam(params, [p.grad for p in params], list(exp_avgs), list(exp_avg_sqs), [], list(steps),
                 foreach=None, capturable=False, differentiable=False, fused=self.fused, grad_scale=None,
                 found_inf=None, has_complex=False, decoupled_weight_decay=False, amsgrad=False, beta1=0.9,
                 beta2=0.999, lr=self.lr, weight_decay=0.0, eps=1e-8, maximize=False)


def _adam(net: nn.Module, lr: float, dev: torch.device):
    """Adam (:class:`_Adam`); the fused kernel where available (a third of the step time on a CPU).
    A PyTorch whose private optimiser API differs (a release after the ones tested) gets
    ``torch.optim.Adam`` itself: the same update, only slower to build the first time."""
    try:
        return _Adam(net.parameters(), lr)
    except ImportError:
        try:
            return torch.optim.Adam(net.parameters(), lr=lr, fused=True)
        except RuntimeError:  # a device or dtype without the fused kernel
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
