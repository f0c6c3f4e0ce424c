"""The one fitting path: ``hsad detect`` (:func:`hsad_scale.pipeline.fit_and_score`), the
accessor's ``fit``/``detect`` and the sweep's trials all fit and score through these two
functions, on the detector contract (:mod:`hsad_scale.detectors.base`)."""

from __future__ import annotations

from hsad_scale.detectors import base, saved


def fit_detector(cube, method: str, settings=None, *, model=None, client=None, repeats: int = 1,
                 device: str = "auto", stage=None, keep_on_cluster: bool = False,
                 background_mask=None) -> base.Detector:
    """A fitted detector of ``method`` on ``cube`` (DataArray ``(band, y, x)``): fitted with
    ``settings`` (a settings object or mapping; None: the defaults), or loaded from the saved
    ``model`` (a model or run folder, or ``rx_stats.npz``; its method must be ``method``:
    InputError otherwise). ``stage`` names and times the stages (``rx-stats``,
    ``scaling-stats``, ``train-ae``... or, for a saved model, ``<fit stage>`` loading it);
    ``client``/``repeats``/``device``/``keep_on_cluster`` reach the AE/VAE training.
    ``background_mask``: a path, array or DataArray ``(y, x)`` of the cube's shape (nonzero =
    background, :mod:`hsad_scale.background_mask`): the statistics are fitted on those pixels
    only, every pixel is still scored; InputError with a saved model, for the AE/VAE, or for
    a mask of another shape."""
    stage = stage if stage is not None else base.PlainStage()
    cls = base.detector_class(method)
    if background_mask is not None:
        from hsad_scale import background_mask as masks

        check_mask_method(method, model)
        cube = masks.restrict(cube, masks.as_mask(background_mask, (cube.sizes["y"], cube.sizes["x"]), cube))
    if model is not None:
        name = cls.fit_stage if not cls.needs_torch else "load-model"
        det = stage.run(name, saved.load_detector, model, method)
        check_bands(det, cube)
        if cls.needs_torch:  # the sample of this cube its normalisers (and the latent plot) use
            stage.run("sample", det.draw_sample, cube)
        return det
    det = cls(settings)
    kwargs = dict(client=client, repeats=repeats, device=device, keep_on_cluster=keep_on_cluster) \
        if cls.needs_torch else {}
    return det.fit(cube, stage=stage, **kwargs)


def check_mask_method(method: str, model=None) -> None:
    """InputError when a background mask cannot apply: a learned detector (AE/VAE) or a saved
    model (its statistics are already fitted)."""
    from hsad_scale.errors import InputError

    if base.detector_class(method).needs_torch:
        raise InputError(f"--background-mask applies to statistical detectors only, not {method}")
    if model is not None:
        raise InputError("--background-mask restricts fitting; it does not apply to a saved --model")


def check_bands(det: base.Detector, cube) -> None:
    """InputError when a statistical detector was fitted on another number of bands."""
    from hsad_scale.errors import InputError

    stats = getattr(det, "stats", None)
    bands = cube.sizes["band"]
    first = stats[0] if isinstance(stats, tuple) else stats
    if first is not None and first.n_features != bands:
        raise InputError(f"the saved {det.method} model has {first.n_features} bands, the cube has {bands}")


def score_detector(cube, det: base.Detector, *, metrics=None, ensemble: str = "mean", stage=None):
    """(lazy score Dataset, details for ``run.json``): ``score`` ``(y, x)`` (AE/VAE: also
    ``score_runs`` and ``score_<metric>``), and the fitted detector's description."""
    if det.needs_torch:
        scores = det.score(cube, metrics=metrics, ensemble=ensemble, stage=stage)
        return scores, {**det.score_details, **det.describe()}
    if metrics:
        from hsad_scale.errors import InputError

        raise InputError(f"--metric applies to the AE/VAE; {det.method} has one score")
    return det.score(cube), det.describe()
