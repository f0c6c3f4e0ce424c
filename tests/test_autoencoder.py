"""AE / VAE detectors and score ensembling on tiny synthetic data (fast)."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch

from hsad_scale.detectors.autoencoder import (
    METRIC_KIND,
    PRESETS,
    AEConfig,
    AENet,
    BandScaling,
    CudaFallbackWarning,
    TrainedModel,
    VAEConfig,
    config_from_dict,
    fit,
    kl_divergence,
    reconstruction_loss,
    resolve_device,
    score_in_memory,
    training_loss,
)
from hsad_scale.detectors.ensemble import combine, robust_location_scale, robust_normalise
from hsad_scale.detectors.rx import rx_reference
from hsad_scale.stats import BackgroundStats

BANDS = 12
TINY_AE = AEConfig(layers=2, latent=3, width=8, epochs=2, batch_size=32, scaling="standardise", members=1,
                   max_steps=None, output_activation="linear", latent_activation="linear", metric="resid-mahal")
TINY_VAE = VAEConfig(layers=2, latent=2, width=8, epochs=2, batch_size=32, scaling="standardise", members=1,
                     max_steps=None, output_activation="linear", loss="mse", beta=1.0, metric="latent-mahal")


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    """Low-rank background plus noise, 8 anomalous pixels, float32 (n, BANDS)."""
    rng = np.random.default_rng(42)
    n = 400
    basis = rng.normal(size=(3, BANDS))
    x = rng.normal(size=(n, 3)) @ basis + 0.1 * rng.normal(size=(n, BANDS)) + 100.0
    x[:8] += 3.0 * rng.normal(size=(8, BANDS))
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def ae_model(pixels) -> TrainedModel:
    return fit(pixels, TINY_AE, device="cpu")


@pytest.fixture(scope="module")
def vae_model(pixels) -> TrainedModel:
    return fit(pixels, TINY_VAE, device="cpu")


# ---------------------------------------------------------------- network shapes


def _linear_shapes(seq) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for name, p in seq.named_parameters() if name.endswith("weight")]


def test_ae_encoder_decoder_shapes():
    cfg = PRESETS["study-ae-4l"]  # B-64-32-16-4-16-32-64-B
    net = AENet(cfg, 100)
    assert _linear_shapes(net.encoder) == [(1, 100, 64), (1, 64, 32), (1, 32, 16), (1, 16, 4)]
    assert _linear_shapes(net.decoder) == [(1, 4, 16), (1, 16, 32), (1, 32, 64), (1, 64, 100)]
    x = torch.zeros(1, 5, 100)
    x_hat, z, logvar = net(x)
    assert x_hat.shape == (1, 5, 100) and z.shape == (1, 5, 4) and logvar is None
    # study: ReLU on the latent, sigmoid output
    assert isinstance(net.encoder[-1], torch.nn.ReLU) and isinstance(net.decoder[-1], torch.nn.Sigmoid)


def test_vae_branches_and_members():
    cfg = VAEConfig(layers=2, latent=2, width=16, members=3)
    net = AENet(cfg, 20)
    assert _linear_shapes(net.encoder) == [(3, 20, 16)]
    assert tuple(net.mu.weight.shape) == (3, 16, 2) and tuple(net.logvar.weight.shape) == (3, 16, 2)
    assert _linear_shapes(net.decoder) == [(3, 2, 16), (3, 16, 20)]
    x_hat, mu, logvar = net(torch.zeros(3, 7, 20), torch.Generator().manual_seed(0))
    assert x_hat.shape == (3, 7, 20) and mu.shape == (3, 7, 2) and logvar.shape == (3, 7, 2)


def test_width_schedules():
    assert AEConfig(layers=4, width=64, latent=4).hidden_widths(200) == (64, 32, 16)
    assert AEConfig(layers=3, width=32, latent=4, width_schedule="constant").hidden_widths(200) == (32, 32)
    assert AEConfig(layers=3, width=64, latent=4, width_schedule="geometric").hidden_widths(200) == (64, 16)
    assert AEConfig(layers=3, hidden=[40, 10]).hidden_widths(200) == (40, 10)
    assert AEConfig(layers=1, latent=5).hidden_widths(200) == ()


def test_latent_activation_linear_has_no_relu_on_latent():
    net = AENet(AEConfig(latent_activation="linear", output_activation="linear"), 10)
    assert not isinstance(net.encoder[-1], torch.nn.ReLU)
    assert not isinstance(net.decoder[-1], (torch.nn.ReLU, torch.nn.Sigmoid))


# ---------------------------------------------------------------- losses


def test_kl_matches_closed_form():
    mu = torch.tensor([[0.0, 0.0], [1.0, -2.0]])
    logvar = torch.tensor([[0.0, 0.0], [math.log(4.0), math.log(0.25)]])
    # KL(N(mu, s^2) || N(0, 1)) = 0.5 * (mu^2 + s^2 - 1 - ln s^2), summed over units
    expected = [0.0, 0.5 * (1 + 4 - 1 - math.log(4.0)) + 0.5 * (4 + 0.25 - 1 - math.log(0.25))]
    assert torch.allclose(kl_divergence(mu, logvar), torch.tensor(expected), atol=1e-6)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(mu, torch.exp(0.5 * logvar)), torch.distributions.Normal(0.0, 1.0)).sum(-1)
    assert torch.allclose(kl_divergence(mu, logvar), ref, atol=1e-6)


def test_reconstruction_losses():
    x = torch.tensor([[1.0, 2.0, 3.0]])
    x_hat = torch.tensor([[1.0, 0.0, 4.0]])
    assert float(reconstruction_loss(x, x_hat, "mse", "mean")) == pytest.approx(5 / 3)
    assert float(reconstruction_loss(x, x_hat, "mse", "sum")) == pytest.approx(5.0)
    assert float(reconstruction_loss(x, x_hat, "l1", "mean")) == pytest.approx(1.0)
    assert float(reconstruction_loss(x, x_hat, "l1", "sum")) == pytest.approx(3.0)


def test_vae_training_loss_is_reconstruction_plus_beta_kl():
    cfg = VAEConfig(loss="l1", loss_reduction="sum", beta=5.0)
    x = torch.tensor([[[1.0, 2.0]]])
    x_hat = torch.tensor([[[0.5, 2.5]]])
    mu = torch.tensor([[[1.0, 0.0]]])
    logvar = torch.tensor([[[0.0, 0.0]]])
    assert float(training_loss(cfg, x, x_hat, mu, logvar)) == pytest.approx(1.0 + 5.0 * 0.5)


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize("kwargs, message", [
    (dict(layers=0), "layers"),
    (dict(latent=-1), "latent"),
    (dict(epochs=1.5), "epochs must be an integer"),
    (dict(batch_size=True), "batch_size must be an integer"),
    (dict(lr=0.0), "lr"),
    (dict(lr="fast"), "lr"),
    (dict(loss="huber"), "loss must be one of mse, l1"),
    (dict(scaling="zscore"), "scaling must be one of"),
    (dict(metric="rx"), "metric must be one of"),
    (dict(holdout=0.95), "holdout"),
    (dict(max_steps=0), "max_steps"),
    (dict(layers=3, hidden=[8]), "hidden must list layers-1 = 2"),
    (dict(latent_activation="tanh"), "latent_activation"),
    (dict(members=0), "members"),
])
def test_ae_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AEConfig(**kwargs)


def test_vae_config_validation():
    with pytest.raises(ValueError, match="beta"):
        VAEConfig(beta=-1.0)
    with pytest.raises(ValueError, match="metric must be one of"):
        VAEConfig(metric="nope")


def test_from_dict_rejects_unknown_keys_listing_valid_ones():
    with pytest.raises(ValueError, match=r"unknown ae setting\(s\) epoch; valid: .*epochs"):
        AEConfig.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="beta"):  # beta is a VAE setting only
        AEConfig.from_dict({"beta": 1.0})


def test_from_dict_presets_and_round_trip():
    cfg = AEConfig.from_dict({"preset": "study-ae", "epochs": 3, "lr": 1})
    assert cfg.epochs == 3 and cfg.lr == 1.0 and cfg.scaling == "global-minmax"
    assert AEConfig.from_dict(cfg.to_dict()) == cfg
    assert AEConfig.from_dict({"lr": "1e-3", "max_steps": "none"}).lr == 1e-3  # as YAML / --set give them
    assert AEConfig.from_dict({"max_steps": "none"}).max_steps is None
    assert config_from_dict(json.loads(json.dumps(PRESETS["study-vae"].to_dict()))) == PRESETS["study-vae"]
    assert config_from_dict({"preset": "default-vae"}) == PRESETS["default-vae"]
    with pytest.raises(ValueError, match="unknown ae preset"):
        AEConfig.from_dict({"preset": "study-vae"})
    with pytest.raises(ValueError, match="kind"):
        config_from_dict({"epochs": 2})


def test_defaults_are_the_default_presets():
    assert AEConfig() == PRESETS["default-ae"] and VAEConfig() == PRESETS["default-vae"]
    ae, vae = PRESETS["default-ae"], PRESETS["default-vae"]
    assert ae.metric == "resid-mahal" and vae.metric == "joint-mahal"
    assert ae.max_steps is not None and ae.max_train_pixels <= 200_000  # bounded cost on big scenes


def test_presets():
    for name in ("study-ae", "study-ae-4l", "study-vae", "default-ae", "default-vae"):
        assert name in PRESETS
    ae, ae4, vae = PRESETS["study-ae"], PRESETS["study-ae-4l"], PRESETS["study-vae"]
    assert (ae.layers, ae.latent, ae.epochs, ae.batch_size, ae.lr, ae.loss) == (2, 4, 1, 32, 1e-3, "mse")
    assert ae.hidden_widths(200) == (64,) and ae4.hidden_widths(200) == (64, 32, 16)
    assert ae.latent_activation == "relu" and ae.scaling == "global-minmax" and ae.output_act() == "sigmoid"
    assert (vae.width, vae.latent, vae.epochs, vae.batch_size, vae.loss, vae.beta) == (16, 2, 5, 128, "l1", 5.0)
    assert vae.loss_reduction == "sum" and vae.metric == "latent-mahal"
    assert isinstance(PRESETS["default-ae"], AEConfig) and isinstance(PRESETS["default-vae"], VAEConfig)


# ---------------------------------------------------------------- scaling


def test_band_scaling_modes(pixels):
    std = BandScaling.from_pixels(pixels, "standardise")
    via_stats = BandScaling.from_stats(BackgroundStats.from_pixels(pixels))
    np.testing.assert_allclose(std.offset, via_stats.offset, rtol=1e-10)
    np.testing.assert_allclose(std.scale, via_stats.scale, rtol=1e-8)
    z = std.apply(pixels)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(z.std(0, ddof=1), 1, atol=1e-4)
    np.testing.assert_allclose(std.invert(z), pixels, rtol=1e-5)
    band = BandScaling.from_pixels(pixels, "band-minmax").apply(pixels)
    np.testing.assert_allclose(band.min(0), 0, atol=1e-5)
    np.testing.assert_allclose(band.max(0), 1, atol=1e-5)
    glob = BandScaling.from_pixels(pixels, "global-minmax")
    assert np.ptp(glob.offset) == 0 and np.ptp(glob.scale) == 0
    g = glob.apply(pixels)
    assert g.min() == pytest.approx(0, abs=1e-6) and g.max() == pytest.approx(1, abs=1e-6)


def test_band_scaling_constant_band_is_left_unscaled():
    x = np.ones((10, 3), np.float32)
    x[:, 0] = np.arange(10)
    s = BandScaling.from_pixels(x, "standardise")
    assert s.scale[1] == 1.0 and np.isfinite(s.apply(x)).all()


# ---------------------------------------------------------------- training and scoring


def test_scores_shapes_and_kinds(pixels, ae_model, vae_model):
    for model in (ae_model, vae_model):
        assert set(model.metrics) <= set(METRIC_KIND)
        for metric in model.metrics:
            out = model.score(pixels, metric)
            assert out.dtype == np.float32
            if METRIC_KIND[metric] == "direct":
                assert out.shape == (len(pixels),)
            else:
                assert out.shape == (len(pixels), model.feature_count(metric))
            s = score_in_memory(model, pixels, metric)
            assert s.shape == (len(pixels),) and np.isfinite(s).all()
    with pytest.raises(ValueError, match="unknown metric"):
        ae_model.score(pixels, "rx")
    with pytest.raises(ValueError, match=r"pixels must be \(n, 12\)"):
        ae_model.score(pixels[:, :5], "mse")


def test_history(ae_model):
    h = ae_model.history
    assert len(h["loss"]) == h["epochs_run"] == 2
    assert h["steps"] == 2 * math.ceil(400 / 32) and h["device"] == "cpu" and h["seconds"] > 0


def test_early_stopping_and_step_cap(pixels):
    cfg = TINY_AE.replace(epochs=50, holdout=0.2, patience=1, max_steps=60)
    m = fit(pixels, cfg, device="cpu")
    h = m.history
    assert h["holdout_pixels"] == 80 and h["train_pixels"] == 320
    assert h["steps"] <= 60 and len(h["holdout_loss"]) == h["epochs_run"]
    m2 = fit(pixels, TINY_AE.replace(epochs=1, min_steps=30), device="cpu")
    assert m2.history["steps"] == 30
    m3 = fit(pixels, TINY_AE.replace(max_train_pixels=100), device="cpu")
    assert m3.history["train_pixels"] == 100


def _numpy_forward(model: TrainedModel, x: np.ndarray):
    """Independent float64 forward pass from the weights: (scaled x, latent, scaled x_hat)."""
    sd = {k: v.double().numpy() for k, v in model.net.state_dict().items()}
    cfg = model.config
    xs = (x.astype(np.float64) - model.scaling.offset) / model.scaling.scale
    h = xs
    n_enc = cfg.layers if cfg.kind == "ae" else cfg.layers - 1
    enc_idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("encoder.")})
    for i, idx in enumerate(enc_idx):
        h = h @ sd[f"encoder.{idx}.weight"][0] + sd[f"encoder.{idx}.bias"][0]
        last = i == n_enc - 1 and cfg.kind == "ae"
        if not last or cfg.latent_activation == "relu":
            h = np.maximum(h, 0)
    if cfg.kind == "vae":
        h = h @ sd["mu.weight"][0] + sd["mu.bias"][0]
    z = h
    dec_idx = sorted({int(k.split(".")[1]) for k in sd if k.startswith("decoder.")})
    for i, idx in enumerate(dec_idx):
        h = h @ sd[f"decoder.{idx}.weight"][0] + sd[f"decoder.{idx}.bias"][0]
        if i < len(dec_idx) - 1:
            h = np.maximum(h, 0)
        elif cfg.output_act() == "sigmoid":
            h = 1 / (1 + np.exp(-h))
    return xs, z, h


@pytest.mark.parametrize("which", ["ae", "vae", "study-ae"])
def test_metrics_against_numpy_reference(pixels, ae_model, vae_model, which):
    if which == "study-ae":
        model = fit(pixels, PRESETS["study-ae"].replace(epochs=2, latent_activation="linear"), device="cpu")
    else:
        model = ae_model if which == "ae" else vae_model
    xs, z, xh = _numpy_forward(model, pixels)
    r = xs - xh
    np.testing.assert_allclose(model.score(pixels, "mse"), (r**2).mean(1), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(model.score(pixels, "l1"), np.abs(r).mean(1), rtol=1e-3, atol=1e-6)
    # SAM in input units
    xo = pixels.astype(np.float64)
    ro = xh * model.scaling.scale + model.scaling.offset
    cos = (xo * ro).sum(1) / np.linalg.norm(xo, axis=1) / np.linalg.norm(ro, axis=1)
    np.testing.assert_allclose(model.score(pixels, "sam"), np.arccos(np.clip(cos, -1, 1)), rtol=1e-2, atol=2e-4)
    np.testing.assert_allclose(model.reconstruct(pixels), ro, rtol=1e-4)
    # Mahalanobis metrics against the pinv formula
    np.testing.assert_allclose(score_in_memory(model, pixels, "resid-mahal"), rx_reference(r), rtol=2e-3)
    np.testing.assert_allclose(score_in_memory(model, pixels, "latent-mahal"), rx_reference(z), rtol=2e-3)
    np.testing.assert_allclose(score_in_memory(model, pixels, "joint-mahal"), rx_reference(np.hstack([z, r])),
                               rtol=2e-3)


@pytest.mark.parametrize("config", [TINY_AE, TINY_AE.replace(scaling="band-minmax", output_activation="sigmoid"),
                                    TINY_VAE], ids=["ae-linear-output", "ae-sigmoid-output", "vae"])
def test_members_average_reconstructions(pixels, config):
    """Scoring's shared-input forward (one product for all members in, one for their mean out)
    gives the module's own forward, averaged over members."""
    model = fit(pixels, config.replace(members=3), device="cpu")
    assert model.score(pixels, "latent-mahal").shape == (len(pixels), 3 * config.latent)
    xs = model.scaling.apply(pixels)
    with torch.no_grad():
        x_hat, mu, _ = model.net(torch.from_numpy(xs).expand(3, -1, -1))
    np.testing.assert_allclose(model.score(pixels, "resid-mahal"), xs - x_hat.mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(model.score(pixels, "latent-mahal"), mu.permute(1, 0, 2).reshape(len(pixels), -1).numpy(),
                               atol=1e-5)


@pytest.mark.parametrize("config", [TINY_AE, TINY_VAE], ids=["ae", "vae"])
def test_same_seed_same_scores(pixels, config):
    a = fit(pixels, config.replace(seed=7, holdout=0.1, patience=1), device="cpu")
    b = fit(pixels, config.replace(seed=7, holdout=0.1, patience=1), device="cpu")
    c = fit(pixels, config.replace(seed=8, holdout=0.1, patience=1), device="cpu")
    for metric in a.metrics:
        assert np.array_equal(a.score(pixels, metric), b.score(pixels, metric))
    assert not np.array_equal(a.score(pixels, "mse"), c.score(pixels, "mse"))
    assert a.history["loss"] == b.history["loss"]


@pytest.mark.parametrize("which", ["ae", "vae"])
def test_save_load_round_trip(tmp_path, pixels, ae_model, vae_model, which):
    model = ae_model if which == "ae" else vae_model
    model.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert meta["versions"]["torch"] == torch.__version__ and meta["config"]["kind"] == which
    loaded = TrainedModel.load(tmp_path / "m")
    assert loaded.config == model.config and loaded.history == json.loads(json.dumps(model.history))
    np.testing.assert_array_equal(loaded.scaling.offset, model.scaling.offset)
    for metric in model.metrics:
        assert np.array_equal(loaded.score(pixels, metric), model.score(pixels, metric))


def test_nan_pixels(pixels):
    x = pixels.copy()
    x[3, 2] = np.nan
    model = fit(x, TINY_AE, device="cpu")  # NaN rows are left out of training
    assert model.history["train_pixels"] == len(x) - 1
    assert np.isnan(model.score(x, "mse")[3]) and np.isfinite(np.delete(model.score(x, "mse"), 3)).all()
    s = score_in_memory(model, x, "resid-mahal")
    assert np.isnan(s[3]) and np.isfinite(np.delete(s, 3)).all()


def test_explicit_scaling_is_used(pixels):
    scaling = BandScaling.from_pixels(pixels[:200], "standardise")
    model = fit(pixels, TINY_AE, scaling=scaling, device="cpu")
    assert model.scaling is scaling
    with pytest.raises(ValueError, match="bands"):
        fit(pixels[:, :4], TINY_AE, scaling=scaling, device="cpu")


def test_device_resolution():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.warns(CudaFallbackWarning, match="CUDA"):
            assert resolve_device("cuda").type == "cpu"


def test_detection_beats_chance(pixels, ae_model):
    labels = np.zeros(len(pixels), bool)
    labels[:8] = True
    s = score_in_memory(ae_model, pixels, "resid-mahal")
    assert s[labels].min() > np.median(s[~labels])


# ---------------------------------------------------------------- ensembles


def test_robust_normalise():
    s = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    z = robust_normalise(s)
    assert z[2] == 0.0  # median
    assert z[1] == pytest.approx(-1 / 1.4826) and z[4] == pytest.approx(97 / 1.4826)
    runs = np.vstack([s, 10 * s + 5])
    np.testing.assert_allclose(robust_normalise(runs), np.vstack([z, z]))
    med, scale = robust_location_scale(runs)
    np.testing.assert_allclose(med, [3.0, 35.0])
    np.testing.assert_allclose(robust_normalise(runs, med, scale), np.vstack([z, z]))


def test_robust_normalise_nan_and_ties():
    s = np.array([np.nan, 1.0, 2.0, 3.0])
    z = robust_normalise(s)
    assert np.isnan(z[0]) and z[2] == 0.0
    ties = np.array([0.0, 0.0, 0.0, 0.0, 4.0])  # MAD = 0: falls back to the mean abs deviation
    zt = robust_normalise(ties)
    assert np.isfinite(zt).all() and zt[4] > 0 and zt[0] == 0
    assert np.isnan(robust_normalise(np.full(3, np.nan))).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(robust_normalise(np.zeros(4)), np.zeros(4))


def test_combine():
    a = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    b = np.array([0.0, 10.0, 20.0, 30.0, 40.0])
    za, zb = robust_normalise(a), robust_normalise(b)
    np.testing.assert_allclose(combine(np.vstack([a, b])), (za + zb) / 2)
    np.testing.assert_allclose(combine(np.vstack([a, b]), how="max"), np.maximum(za, zb))
    with_nan = np.vstack([a, b])
    with_nan[0, 1] = np.nan
    with_nan[:, 0] = np.nan
    out = combine(with_nan)
    assert np.isnan(out[0]) and out[1] == pytest.approx(robust_normalise(with_nan[1])[1])
    with pytest.raises(ValueError, match="how"):
        combine(np.vstack([a, b]), how="median")


# ---------------------------------------------------------------- a real scene

def test_default_ae_on_a_real_scene(had_dir):
    from scipy.io import loadmat
    from sklearn.metrics import roc_auc_score

    mat = loadmat(had_dir / "hydice.mat")
    cube = mat["data"].astype(np.float32)
    px = cube.reshape(-1, cube.shape[-1])
    labels = mat["map"].reshape(-1) > 0
    model = fit(px, PRESETS["default-ae"].replace(seed=0), device="cpu")
    assert roc_auc_score(labels, score_in_memory(model, px)) > 0.98


@pytest.mark.parametrize("fused", [True, False])
def test_adam_steps_are_torch_optim_adam_bit_for_bit(fused):
    """Training's Adam (no torch.optim.Optimizer wrapper, which imports torch._dynamo) gives
    the very parameters of torch.optim.Adam, fused and not."""
    from hsad_scale.detectors import autoencoder as ae

    config = AEConfig(members=2, latent=3)
    nets = [AENet(config, 12) for _ in range(2)]
    for net in nets:
        net.reset(torch.Generator().manual_seed(5))
    ours = ae._Adam(nets[0].parameters(), lr=1e-2)
    if not fused:
        ours.fused = None
    reference = torch.optim.Adam(nets[1].parameters(), lr=1e-2, fused=fused or None)
    data = torch.rand((2, 64, 12), generator=torch.Generator().manual_seed(6))
    initial = [p.detach().clone() for p in nets[0].parameters()]
    for step in range(25):
        for net, opt in zip(nets, (ours, reference)):
            batch = data[:, (step * 8) % 64:(step * 8) % 64 + 8]
            x_hat, mu, logvar = net(batch)
            loss = training_loss(config, batch, x_hat, mu, logvar)
            opt.zero_grad()
            loss.backward()
            opt.step()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)
    assert all(not torch.equal(a, b) for a, b in zip(nets[0].parameters(), initial))  # it did train


@pytest.mark.parametrize("remove", ["check", "keyword"])
def test_training_falls_back_to_torch_optim_adam_when_the_private_api_is_missing(monkeypatch, remove):
    """A PyTorch without ``_device_dtype_check_for_fused`` or a keyword ``_Adam`` passes to the
    functional ``adam`` trains with ``torch.optim.Adam`` instead: the same model, bit for bit."""
    import importlib

    from hsad_scale.detectors import autoencoder as ae

    adam_module = importlib.import_module("torch.optim.adam")  # torch.optim deletes its submodules' names
    optimizer_module = importlib.import_module("torch.optim.optimizer")

    px = np.random.default_rng(3).normal(size=(400, 12)).astype(np.float32)
    config = AEConfig(members=1, latent=3, max_steps=15, seed=0)
    net = AENet(config, 12)
    assert isinstance(ae._adam(net, 1e-2, torch.device("cpu")), ae._Adam)
    expected = score_in_memory(fit(px, config, device="cpu"), px)
    if remove == "check":
        monkeypatch.delattr(optimizer_module, "_device_dtype_check_for_fused")
    else:
        import inspect

        full = adam_module.adam

        def older_adam(*args, **kwargs):  # the update itself is unchanged; torch.optim.Adam calls it too
            return full(*args, **kwargs)

        signature = inspect.signature(full)
        older_adam.__signature__ = signature.replace(parameters=[
            p for name, p in signature.parameters.items() if name != "decoupled_weight_decay"])
        monkeypatch.setattr(adam_module, "adam", older_adam)  # as PyTorch 2.6: no decoupled_weight_decay
    fallback = ae._adam(net, 1e-2, torch.device("cpu"))
    assert type(fallback) is torch.optim.Adam and fallback.param_groups[0]["fused"] is True
    np.testing.assert_array_equal(score_in_memory(fit(px, config, device="cpu"), px), expected)
