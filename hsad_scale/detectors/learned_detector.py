"""The AE and VAE behind the detector contract: :mod:`hsad_scale.learned` (scaling statistics,
training as cluster tasks, tile-wise scoring of every run and metric) unchanged, wrapped.
PyTorch is imported on first fit, score or load, not by this module."""

from __future__ import annotations

import numpy as np

from hsad_scale.detectors.ae_config import AEConfig, VAEConfig
from hsad_scale.detectors.base import Detector, register
from hsad_scale.names import SCORE


class LearnedDetector(Detector):
    """``repeats`` trained networks (seeds ``seed..seed+repeats-1``) and their training sample;
    scores are :func:`hsad_scale.learned.learned_scores` (``score``, ``score_runs``...).
    Saved as one ``run-<seed>/`` folder (safetensors + JSON) per network."""

    needs_torch = True

    fit_stage = "scaling-stats"

    def fit_cube(self, cube, stage=None, client=None, repeats: int = 1, device: str = "auto",
                 keep_on_cluster: bool = False, **kwargs) -> None:
        """Stages ``scaling-stats`` (per-band scaling and the training sample, one pass) and
        ``train-<method>`` (``repeats`` trainings as cluster tasks on ``client``)."""
        from hsad_scale import learned

        config = self.settings
        scaling, pixels = stage.run(self.fit_stage, learned.scaling_and_sample, cube, config,
                                    keep_on_cluster=keep_on_cluster)
        self.models, self.sample, self.workers = stage.run(f"train-{self.method}", learned.train_runs, client, cube,
                                                           config, repeats, scaling, device, pixels=pixels)
        self.training_pixels = int(len(pixels))

    def fit_pixels(self, pixels: np.ndarray, stage=None, **kwargs) -> None:
        self.fit_cube(self._pixels_cube(pixels), stage=stage, **kwargs)

    def draw_sample(self, cube) -> None:
        """A loaded model's sample of ``cube`` (the pixels its ensemble normalisers and the
        latent plot use): as many as it trained on, with its seed."""
        from hsad_scale import learned

        self.sample = learned.sample_pixels(cube, self.settings.max_train_pixels, seed=self.settings.seed)
        self.training_pixels = int(len(self.sample))

    @staticmethod
    def _pixels_cube(pixels):
        from hsad_scale.detectors.base import as_cube

        return as_cube(np.asarray(pixels).T[:, None, :])

    def score(self, cube, metrics=None, ensemble: str = "mean", stage=None, **kwargs):
        """Lazy Dataset of :func:`hsad_scale.learned.learned_scores` (stage
        ``<method>-feature-stats``: the features' statistics are computed here); its details
        (feature backgrounds, normalisers) in :attr:`score_details`."""
        from hsad_scale import learned
        from hsad_scale.detectors.base import PlainStage, as_cube

        self._check_fitted()
        stage = stage if stage is not None else PlainStage()
        cube = as_cube(cube)
        if self.sample is None:  # loaded: the normalisers come from a sample of this cube
            stage.run("sample", self.draw_sample, cube)
        metrics = tuple([metrics] if isinstance(metrics, str) else metrics or (self.settings.metric,))
        scores, self.score_details = stage.run(f"{self.method}-feature-stats", learned.learned_scores, cube,
                                               self.models, metrics, self.sample, ensemble)
        return scores

    def score_image(self, image: np.ndarray) -> np.ndarray:
        import xarray as xr

        return self.score(xr.DataArray(np.asarray(image), dims=("band", "y", "x")))[SCORE].values.astype(np.float64)

    def score_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.score_image(np.asarray(pixels).T[:, None, :])[0]

    def save_arrays(self, folder) -> None:
        for model in self.models:
            model.save(folder / f"run-{model.config.seed}")

    def load_arrays(self, folder, device: str = "cpu", **kwargs) -> None:
        from hsad_scale import learned

        self.models = learned.load_models(folder, device=device)
        self.settings = self.models[0].config
        self.sample, self.workers, self.training_pixels = None, [], 0

    def describe(self) -> dict:
        return {"config": self.settings.to_dict(), "training_pixels": self.training_pixels,
                "train_workers": self.workers, "training": [m.history for m in self.models]}


@register
class AutoencoderDetector(LearnedDetector):
    """The autoencoder (settings :class:`~hsad_scale.detectors.ae_config.AEConfig`)."""

    method = "ae"
    settings_type = AEConfig


@register
class VAEDetector(LearnedDetector):
    """The variational autoencoder (settings :class:`~hsad_scale.detectors.ae_config.VAEConfig`)."""

    method = "vae"
    settings_type = VAEConfig
