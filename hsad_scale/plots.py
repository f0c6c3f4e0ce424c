"""Figures used by the CLI, the flows, the reports and the notebooks alike. Each ``plot_*``
returns a matplotlib Figure (``save`` writes and closes it).

- :func:`plot_roc`: ROC curves on linear and log false-positive axes, several methods on one
  figure, averaged runs with a one-standard-deviation band (:func:`roc_curves` builds them).
- :func:`plot_maps`: score maps side by side with colour bars, ground-truth outlines, a shared
  scale (optionally after normalising each map).
- :func:`plot_latent`: a latent space (2-D, or its first two principal axes), anomalies highlighted.
- :func:`rgb_composite` / :func:`plot_rgb`: an RGB composite from the wavelength coordinate
  (nearest to 640/550/460 nm) or from band indices.
- :func:`plot_spectra`: spectra of the top-scoring pixels against the background mean and spread.

Maps and cubes may be NumPy arrays or (dask-backed) xarray objects; large ones are thinned
before they are computed, for display only.
"""

from __future__ import annotations

import sys

import matplotlib

if "ipykernel" not in sys.modules:  # file output by default; a notebook keeps its inline backend
    matplotlib.use("Agg")
import matplotlib.lines  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hsad_scale.names import CUBE, GROUND_TRUTH  # noqa: E402

MAX_PIXELS_SHOWN = 1500
#: Target wavelengths (nm) of the red, green and blue channels of an RGB composite.
RGB_NM = (640.0, 550.0, 460.0)
#: Wavelength range assumed to spread evenly over the bands when a cube has no wavelengths
#: (typical of AVIRIS/HYDICE scenes): only used to guess RGB band indices.
ASSUMED_RANGE_NM = (400.0, 2500.0)
TRUTH_COLOUR = "cyan"
DETECTION_COLOUR = "#7fff00"
ANOMALY_COLOUR = "#d62728"
MAP_CMAP = "magma"


# --------------------------------------------------------------------------------------
# helpers


def thin(image, max_side: int = MAX_PIXELS_SHOWN):
    """Every k-th pixel so that neither side exceeds ``max_side`` (for display only).
    Works on NumPy, dask and xarray objects (the last two stay lazy)."""
    step = _step(image.shape, max_side)
    return image[..., ::step, ::step]


def _step(shape, max_side: int) -> int:
    return max(1, int(np.ceil(max(shape[-2:]) / max_side)))


def _thin_mask(truth, step: int, strip_pixels: int = 2**24) -> np.ndarray:
    """Block maximum (over ``step`` x ``step`` blocks) of a 2-D ground truth > 0, so that
    one-pixel targets survive thinning; lazy inputs are read in strips of about
    ``strip_pixels`` pixels (never loaded whole)."""
    if step == 1:
        return _truth_of(truth)
    ny, nx = truth.shape[-2:]
    rows = step * max(1, strip_pixels // (step * nx))
    return np.concatenate([_block_any(_truth_of(truth[r : r + rows]), step) for r in range(0, ny, rows)], axis=0)


def _block_any(mask: np.ndarray, step: int) -> np.ndarray:
    ny, nx = mask.shape
    padded = np.zeros((-(-ny // step) * step, -(-nx // step) * step), dtype=bool)
    padded[:ny, :nx] = mask
    return padded.reshape(padded.shape[0] // step, step, padded.shape[1] // step, step).any(axis=(1, 3))


def _as_array(values, dtype=np.float32) -> np.ndarray:
    """Values of a NumPy/dask/xarray object as a NumPy array (computed)."""
    if hasattr(values, "compute") and not isinstance(values, np.ndarray):
        values = values.compute()
    return np.asarray(getattr(values, "values", values), dtype=dtype)


def _truth_of(truth) -> np.ndarray | None:
    return None if truth is None else _as_array(truth, None) > 0


def panel_aspect(ny: int, nx: int, limit: float = 8.0) -> float:
    """Height / width of a map's panel: the map's own, within [1 / ``limit``, ``limit``] (a
    1 x 8000 scan line would otherwise make a figure 30,000 inches tall or 0.0005 high)."""
    return min(max(ny / nx, 1 / limit), limit)


def outline_truth(ax, mask: np.ndarray, linewidth: float, extent=None) -> None:
    """Ground-truth outlines over an image: contours of ``mask`` ``(y, x)``, or, for a map one
    pixel high or wide (a scan line) where no contour exists, a hollow square on each pixel.
    ``extent``: the image's ``(left, right, bottom, top)`` in axis units (default: pixels)."""
    if min(mask.shape) >= 2:
        if extent is None:
            ax.contour(mask, levels=[0.5], colors=TRUTH_COLOUR, linewidths=linewidth)
        else:
            ax.contour(mask, levels=[0.5], colors=TRUTH_COLOUR, linewidths=linewidth, extent=extent, origin="upper")
        return
    ys, xs = np.nonzero(mask)
    if extent is not None:  # pixel centres in the image's axis units
        left, right, bottom, top = extent
        xs = left + (xs + 0.5) * (right - left) / mask.shape[1]
        ys = top + (ys + 0.5) * (bottom - top) / mask.shape[0]
    ax.scatter(xs, ys, marker="s", s=16, facecolors="none", edgecolors=TRUTH_COLOUR, linewidths=linewidth)


def save(fig: plt.Figure, path) -> None:
    """Write ``fig`` to ``path`` (PNG at 110 dpi unless the suffix says otherwise) and close it."""
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------
# ROC


def roc_curves(maps: dict, truth) -> dict:
    """ROC curves for :func:`plot_roc` with the AUC in each label. ``maps``: label -> one
    score map ``(y, x)``, or the maps of repeated runs (a list, or an array/DataArray
    ``(run, y, x)``), which give the averaged curve with its standard deviation."""
    from hsad_scale import evaluate

    truth = _as_array(truth, np.float64)
    curves = {}
    for label, value in maps.items():
        runs = value if isinstance(value, (list, tuple)) else [value]
        runs = [_as_array(r, np.float64) for r in runs]
        if len(runs) == 1 and runs[0].ndim == 3:
            runs = list(runs[0])
        if len(runs) == 1:
            fpr, tpr = evaluate.roc(runs[0], truth)
            auc = evaluate.metrics(runs[0], truth)["auc"]
            curves[f"{label} (AUC {auc:.4f})"] = {"fpr": fpr, "tpr": tpr}
        else:
            aucs = [evaluate.metrics(r, truth)["auc"] for r in runs]
            curve = evaluate.average_roc([evaluate.roc(r, truth) for r in runs])
            curves[f"{label} (AUC {np.mean(aucs):.4f} ± {np.std(aucs):.4f}, {len(runs)} runs)"] = curve
    return curves


def thin_curve(fpr: np.ndarray, tpr: np.ndarray, points: int = 4000) -> tuple[np.ndarray, np.ndarray]:
    """At most about ``2 * points`` vertices of a ROC curve (for drawing only): the vertices
    nearest to a grid that is log-spaced at small FPR and linear above, with the vertex
    before each so that steps keep their shape."""
    if fpr.size <= 2 * points:
        return fpr, tpr
    grid = np.concatenate([np.logspace(-7, 0, points // 2), np.linspace(0, 1, points // 2)])
    idx = np.clip(np.searchsorted(fpr, grid), 0, fpr.size - 1)
    idx = np.unique(np.concatenate([[0, fpr.size - 1], idx, np.maximum(idx - 1, 0)]))
    return fpr[idx], tpr[idx]


def plot_roc(curves: dict, title: str = "ROC", min_fpr: float | None = None) -> plt.Figure:
    """ROC curves on linear and log false-positive axes. ``curves``: label -> dict with
    ``fpr``, ``tpr`` (one run) or ``fpr``, ``tpr_mean``, ``tpr_std`` (averaged runs, drawn with
    a one-standard-deviation band). The log axis starts at ``min_fpr`` (default: the decade
    below the smallest positive false-positive rate of the curves, at least 1e-6)."""
    if min_fpr is None:
        positive = [np.min(c["fpr"][c["fpr"] > 0]) for c in curves.values() if np.any(np.asarray(c["fpr"]) > 0)]
        min_fpr = 10.0 ** np.floor(np.log10(min(positive))) if positive else 1e-4
        min_fpr = min(max(min_fpr, 1e-6), 1e-2)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, log in zip(axes, (False, True)):
        for i, (label, c) in enumerate(curves.items()):
            fpr = np.asarray(c["fpr"], dtype=np.float64)
            tpr = np.asarray(c.get("tpr", c.get("tpr_mean")), dtype=np.float64)
            colour = colours[i % len(colours)]
            if "tpr_std" in c:
                std = np.asarray(c["tpr_std"], dtype=np.float64)
                ax.fill_between(fpr, np.clip(tpr - std, 0, 1), np.clip(tpr + std, 0, 1), color=colour, alpha=0.2,
                                lw=0)
                ax.plot(fpr, tpr, color=colour, lw=1.6, label=label)
            else:
                ax.step(*thin_curve(fpr, tpr), where="post", color=colour, lw=1.3, label=label)
        chance = np.logspace(np.log10(min_fpr), 0, 50)
        ax.plot(chance, chance, color="grey", lw=0.8, ls=":", label="chance" if not log else None)
        ax.set_xlabel("false-positive rate" + (" (log scale)" if log else ""))
        ax.set_ylabel("true-positive rate")
        ax.set_ylim(0, 1.01)
        if log:
            ax.set_xscale("log")
            ax.set_xlim(min_fpr, 1)
        else:
            ax.set_xlim(0, 1)
        ax.grid(alpha=0.3, lw=0.5)
    axes[0].legend(loc="lower right", fontsize=8, framealpha=0.9)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------
# maps


def normalise_map(image: np.ndarray, how: str | None, percentiles: tuple | None = (0.5, 99.5)) -> np.ndarray:
    """``None``: as is; ``"minmax"``: to [0, 1] between the map's own ``percentiles`` (None:
    its minimum and maximum), clipped; ``"rank"``: each pixel's rank among the finite ones, in
    [0, 1]. Either way maps of different detectors share one scale. NaN stays NaN."""
    if how is None:
        return image
    out = np.full(image.shape, np.nan, dtype=np.float32)
    finite = np.isfinite(image)
    if not finite.any():
        return out
    values = image[finite].astype(np.float64)
    if how == "minmax":
        lo, hi = _percentiles(values, percentiles)
        out[finite] = np.clip((values - lo) / (hi - lo), 0, 1) if hi > lo else 0.0
    elif how == "rank":
        ranks = np.empty(values.size)
        ranks[np.argsort(values, kind="stable")] = np.arange(values.size)
        out[finite] = ranks / max(values.size - 1, 1)
    else:
        raise ValueError(f"normalise must be None, 'minmax' or 'rank'; got {how!r}")
    return out


def plot_maps(maps: dict, truth: np.ndarray | None = None, shared_scale: bool = True,
              title: str | None = None, *, normalise: str | None = None, ncols: int | None = None,
              cmap: str = MAP_CMAP, label: str | None = None, panel_size: float = 3.8,
              percentiles: tuple | None = (0.5, 99.5), grid=None, outlines=None,
              outline_label: str | None = None) -> plt.Figure:
    """Score maps side by side (``ncols`` per row), ground-truth outlines drawn over them when
    given. ``shared_scale``: one colour scale (the ``percentiles`` of all maps; None: their
    full range) and one colour bar; else one per map. ``normalise`` rescales each map to
    [0, 1] first (``"minmax"``: between its own ``percentiles``; ``"rank"``), so that maps of
    different detectors share one scale (the study's comparison figures). ``grid`` (a
    :class:`~hsad_scale.detections.MapGrid`): axes in its map coordinates when it has a CRS;
    ``outlines``: polygons (shapely, in the grid's coordinates: pixel corners when there is no
    grid) drawn over each map, named ``outline_label`` in the legend."""
    shown = {k: normalise_map(_as_array(thin(v)), normalise, percentiles) for k, v in maps.items()}
    first = next(iter(maps.values()))
    step = _step(first.shape, MAX_PIXELS_SHOWN)
    mask = None if truth is None else _thin_mask(truth, step)
    finite = np.concatenate([v[np.isfinite(v)].ravel() for v in shown.values()])
    lo, hi = (0.0, 1.0) if normalise else _percentiles(finite, percentiles)
    n = len(shown)
    ncols = min(n, ncols or n)
    nrows = -(-n // ncols)
    ny, nx = next(iter(shown.values())).shape
    aspect = panel_aspect(ny, nx)
    image_aspect = "equal" if aspect == ny / nx else "auto"  # a scan line is stretched into a visible strip
    width = panel_size * ncols + (0.9 if shared_scale else 0.9 * ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, panel_size * aspect * nrows + 0.9 + (0.4 if title else 0)),
                             squeeze=False, layout="constrained")
    cbar_label = label or {"minmax": "normalised score", "rank": "score rank"}.get(normalise, "score")
    im = None
    full_ny, full_nx = first.shape[-2:]
    georeferenced = grid is not None and grid.crs is not None
    if georeferenced:
        t = grid.transform
        extent = (t.c, t.c + full_nx * t.a, t.f + full_ny * t.e, t.f)
    else:
        extent = (0, full_nx, full_ny, 0)
    for ax, (name, image) in zip(axes.ravel(), shown.items()):
        vmin, vmax = (lo, hi) if shared_scale or normalise else _percentiles(image, percentiles)
        im = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", extent=extent,
                       aspect=image_aspect)
        handles = []
        if mask is not None and mask.any():
            outline_truth(ax, mask, 1.0, extent)
            handles.append(matplotlib.lines.Line2D([], [], color=TRUTH_COLOUR, lw=1.0, label="ground truth"))
        if outlines:
            _draw_outlines(ax, outlines)
            handles.append(matplotlib.lines.Line2D([], [], color=DETECTION_COLOUR, lw=1.0,
                                                   label=outline_label or "detections"))
        if handles:
            ax.legend(handles=handles, loc="lower right", fontsize=7, framealpha=0.8)
        ax.set_title(name, fontsize=10)
        if georeferenced:
            units = grid.crs.linear_units if grid.crs.is_projected else "degrees"
            ax.set_xlabel(f"x ({units}; {grid.crs.to_string()})", fontsize=8)
            ax.set_ylabel(f"y ({units})", fontsize=8)
            ax.tick_params(labelsize=7)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if not shared_scale:
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label=cbar_label)
    for ax in axes.ravel()[n:]:
        ax.set_axis_off()
    if shared_scale and im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), fraction=0.046 if n == 1 else 0.03, pad=0.02, label=cbar_label)
    if title:
        fig.suptitle(title)
    return fig


def _draw_outlines(ax, polygons) -> None:
    """Exterior and interior rings of shapely (multi)polygons as one line collection."""
    from matplotlib.collections import LineCollection

    rings = []
    for geom in polygons:
        for part in getattr(geom, "geoms", [geom]):
            rings.append(np.asarray(part.exterior.coords))
            rings.extend(np.asarray(r.coords) for r in part.interiors)
    ax.add_collection(LineCollection(rings, colors=DETECTION_COLOUR, linewidths=0.9))


def plot_objects(evaluation: dict, title: str = "Objects") -> plt.Figure:
    """Object-level curve of :func:`hsad_scale.detections.object_evaluation`: targets detected
    (fraction of ground-truth objects, left) and false-alarm objects (right, log scale) against
    the PFA of the empirical threshold; the chosen PFA marked."""
    sweep, chosen = evaluation["sweep"], evaluation["at_pfa"]
    pfa = np.array([r["pfa"] for r in sweep])
    rate = np.array([r["detection_rate"] if r["detection_rate"] is not None else np.nan for r in sweep])
    false_alarms = np.array([r["false_alarm_objects"] for r in sweep], dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 4.2), layout="constrained")
    ax.plot(pfa, rate, "o-", color="C0", label="targets detected (fraction)")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("probability of false alarm (fraction of pixels flagged)")
    ax.set_ylabel(f"targets detected (of {chosen['targets']})", color="C0")
    right = ax.twinx()
    right.plot(pfa, false_alarms, "s--", color="C3", label="false-alarm objects")
    right.set_yscale("symlog", linthresh=1)
    right.set_ylim(bottom=0)
    right.set_ylabel("false-alarm objects", color="C3")
    ax.axvline(chosen["pfa"], color="grey", lw=0.8, ls=":")
    ax.annotate(f"PFA {chosen['pfa']:g}: {chosen['targets_detected']}/{chosen['targets']} targets, "
                f"{chosen['false_alarm_objects']} false alarms", (chosen["pfa"], 0.02), fontsize=7, rotation=90,
                ha="right", va="bottom")
    ax.grid(alpha=0.3, lw=0.5)
    ax.set_title(title)
    return fig


def plot_detection_spectra(frame, top: int = 5, title: str | None = None) -> plt.Figure:
    """Peak-pixel spectra of the ``top`` first detections of a detection GeoDataFrame
    (:func:`hsad_scale.detections.run_detections`; wavelengths from ``frame.attrs``)."""
    rows = frame[frame["spectrum"].notna()].iloc[:top] if "spectrum" in frame else frame.iloc[:0]
    wavelength = frame.attrs.get("wavelength_nm")
    fig, ax = plt.subplots(figsize=(10, 4.0), layout="constrained")
    for i, (_, row) in enumerate(rows.iterrows()):
        spectrum = np.asarray(row["spectrum"], dtype=np.float64)
        x_axis = np.asarray(wavelength) if wavelength else np.arange(spectrum.size)
        ax.plot(x_axis, spectrum, lw=1.1, color=plt.get_cmap("plasma")(0.05 + 0.8 * i / max(len(rows) - 1, 1)),
                label=f"#{int(row['id'])} peak (y {int(row['peak_row'])}, x {int(row['peak_col'])}): "
                      f"score {row['peak_score']:.4g}, {int(row['pixels'])} px")
    ax.set_xlabel("wavelength (nm)" if wavelength else "band")
    ax.set_ylabel("value")
    ax.grid(alpha=0.3, lw=0.5)
    if len(rows):
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"peak spectra of the top {len(rows)} detections")
    return fig


def _percentiles(image: np.ndarray, percentiles: tuple | None = (0.5, 99.5)) -> tuple[float, float]:
    finite = image[np.isfinite(image)]
    if not finite.size:
        return 0.0, 1.0
    if percentiles is None:
        return float(finite.min()), float(finite.max())
    lo, hi = np.percentile(finite, percentiles)
    return float(lo), float(hi)


# --------------------------------------------------------------------------------------
# latent space


def principal_axes(latent: np.ndarray, n: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projection of ``latent`` ``(n_points, k)`` on its first ``n`` principal axes, and the
    fraction of the variance each one explains."""
    x = latent - latent.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    explained = s**2 / max(float((s**2).sum()), 1e-300)
    return x @ vt[:n].T, explained[:n]


def plot_latent(latent, truth=None, title: str = "latent space", max_points: int = 20000,
                seed: int = 0) -> plt.Figure:
    """Scatter of a latent space ``(n, k)``: the two units when ``k == 2``, else the first two
    principal axes (``k == 1``: histograms). ``truth`` ``(n,)`` marks anomalies, drawn on top
    in red; at most ``max_points`` background points are drawn (a seeded random subset)."""
    latent = np.asarray(latent, dtype=np.float64)
    if latent.ndim != 2:
        raise ValueError(f"latent must be (n, k), got shape {latent.shape}")
    keep = np.isfinite(latent).all(axis=1)
    labels = np.zeros(latent.shape[0], bool) if truth is None else (np.asarray(truth).ravel() > 0)
    if labels.shape[0] != latent.shape[0]:
        raise ValueError(f"truth has {labels.shape[0]} entries, latent has {latent.shape[0]} rows")
    latent, labels = latent[keep], labels[keep]
    k = latent.shape[1]
    if k > 2:
        xy, explained = principal_axes(latent)
        axis_names = [f"principal axis {i + 1} ({100 * e:.0f} % of variance)" for i, e in enumerate(explained)]
    else:
        xy, axis_names = latent, [f"latent unit {i + 1}" for i in range(k)]
    background = np.flatnonzero(~labels)
    if background.size > max_points:
        background = np.sort(np.random.default_rng(seed).choice(background, max_points, replace=False))
    anomalies = np.flatnonzero(labels)
    fig, ax = plt.subplots(figsize=(5.6, 4.8), layout="constrained")
    if k == 1:
        bins = np.histogram_bin_edges(xy[:, 0], bins=60)
        ax.hist(xy[background, 0], bins=bins, color="0.55", alpha=0.8, label=f"background ({background.size})")
        if anomalies.size:
            ax.hist(xy[anomalies, 0], bins=bins, color=ANOMALY_COLOUR, alpha=0.9, label=f"anomaly ({anomalies.size})")
        ax.set_yscale("log")
        ax.set_ylabel("pixels")
    else:
        ax.scatter(xy[background, 0], xy[background, 1], s=3, c="0.55", alpha=0.4, lw=0,
                   label=f"background ({background.size} shown)", rasterized=True)
        if anomalies.size:
            ax.scatter(xy[anomalies, 0], xy[anomalies, 1], s=14, c=ANOMALY_COLOUR, edgecolors="k", linewidths=0.3,
                       label=f"anomaly ({anomalies.size})", zorder=3)
        ax.set_ylabel(axis_names[1])
    ax.set_xlabel(axis_names[0])
    ax.set_title(title)
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(loc="best", fontsize=8, markerscale=2)
    return fig


# --------------------------------------------------------------------------------------
# RGB composite


def _cube_of(obj):
    """The ``(band, y, x)`` cube of a cube Dataset, or the object itself."""
    return obj[CUBE] if hasattr(obj, "data_vars") else obj


def rgb_bands(n_bands: int, wavelength=None, targets=RGB_NM, bands=None) -> tuple[int, int, int]:
    """Band indices of the red, green and blue channels: ``bands`` when given; else the bands
    nearest to ``targets`` (nm) in ``wavelength``; else (wavelengths unknown) the bands those
    targets would fall on if the bands spread evenly over 400-2500 nm."""
    if bands is not None:
        picked = tuple(int(b) for b in bands)
        if len(picked) != 3 or not all(-n_bands <= b < n_bands for b in picked):
            raise ValueError(f"bands must be three indices in [0, {n_bands}), got {bands!r}")
        return tuple(b % n_bands for b in picked)
    if wavelength is not None:
        wl = np.asarray(wavelength, dtype=np.float64)
        return tuple(int(np.nanargmin(np.abs(wl - t))) for t in targets)
    lo, hi = ASSUMED_RANGE_NM
    return tuple(int(np.clip(round((t - lo) / (hi - lo) * (n_bands - 1)), 0, n_bands - 1)) for t in targets)


def select_rgb(cube, targets=RGB_NM, bands=None):
    """The three bands of an RGB composite as a lazy DataArray ``(y, x, rgb)`` (raw values),
    keeping the cube's spatial coords and CRS, with ``band`` and (when known) ``wavelength``
    coords on ``rgb``. ``cube``: a cube Dataset or a DataArray ``(band, y, x)``."""
    import xarray as xr

    da_ = _cube_of(cube)
    if not isinstance(da_, xr.DataArray):
        da_ = xr.DataArray(np.asarray(da_), dims=("band", "y", "x"))
    wavelength = da_.coords["wavelength"].values if "wavelength" in da_.coords else None
    picked = rgb_bands(da_.sizes["band"], wavelength, targets, bands)
    out = da_.isel(band=list(picked)).rename(band="rgb").transpose("y", "x", "rgb")
    out = out.assign_coords(rgb=["red", "green", "blue"], band=("rgb", np.asarray(picked)))
    out.attrs = {**da_.attrs, "long_name": "RGB composite bands"}
    return out


def stretch(image: np.ndarray, percentiles=(2.0, 98.0)) -> np.ndarray:
    """Each channel of ``(y, x, 3)`` scaled to [0, 1] between its percentiles (clipped);
    invalid pixels black."""
    image = np.asarray(image, dtype=np.float32)
    out = np.zeros(image.shape, dtype=np.float32)
    for c in range(image.shape[-1]):
        channel = image[..., c]
        finite = np.isfinite(channel)
        if not finite.any():
            continue
        lo, hi = np.percentile(channel[finite], percentiles)
        scaled = (channel - lo) / (hi - lo) if hi > lo else np.zeros_like(channel)
        out[..., c] = np.where(finite, np.clip(scaled, 0, 1), 0)
    return out


def rgb_composite(cube, targets=RGB_NM, bands=None, percentiles=(2.0, 98.0),
                  max_side: int | None = None) -> np.ndarray:
    """Display-ready RGB composite ``(y, x, 3)`` float32 in [0, 1] (computed): the bands of
    :func:`select_rgb`, each stretched between its ``percentiles``; thinned to ``max_side``
    pixels per side when given. Plot it with :func:`plot_rgb` (or ``imshow``)."""
    rgb = select_rgb(cube, targets, bands)
    if max_side:
        rgb = rgb.isel(y=slice(None, None, _step(rgb.shape[:2], max_side)),
                       x=slice(None, None, _step(rgb.shape[:2], max_side)))
    return stretch(_as_array(rgb), percentiles)


def _rgb_caption(rgb) -> str:
    if "wavelength" in rgb.coords:
        return "R/G/B = " + " / ".join(f"{w:.0f} nm" for w in rgb.coords["wavelength"].values)
    return "R/G/B = bands " + " / ".join(str(int(b)) for b in rgb.coords["band"].values)


def plot_rgb(cube, targets=RGB_NM, bands=None, truth=None, title: str | None = None,
             percentiles=(2.0, 98.0), panel_size: float = 5.0) -> plt.Figure:
    """RGB composite of a cube (see :func:`rgb_composite`), with ground-truth outlines when
    ``truth`` is given (``truth=True`` takes the Dataset's own ``ground_truth``)."""
    rgb = select_rgb(cube, targets, bands)
    step = _step(rgb.shape[:2], MAX_PIXELS_SHOWN)
    image = stretch(_as_array(rgb.isel(y=slice(None, None, step), x=slice(None, None, step))), percentiles)
    if truth is True:
        truth = cube[GROUND_TRUTH] if hasattr(cube, "data_vars") and GROUND_TRUTH in cube else None
    ny, nx = image.shape[:2]
    aspect = panel_aspect(ny, nx)
    fig, ax = plt.subplots(figsize=(panel_size, panel_size * aspect + 0.5), layout="constrained")
    ax.imshow(image, interpolation="nearest", aspect="equal" if aspect == ny / nx else "auto")
    if truth is not None and truth is not False:
        mask = _thin_mask(_truth_of(truth), step)
        if mask.any():
            outline_truth(ax, mask, 0.8)
    ax.set_xticks([])
    ax.set_yticks([])
    caption = _rgb_caption(rgb)
    ax.set_title(f"{title}\n{caption}" if title else caption, fontsize=10)
    return fig


# --------------------------------------------------------------------------------------
# spectra


def top_pixels(scores, n: int = 5, min_distance: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the ``n`` highest finite scores of a map ``(y, x)``, highest first;
    with ``min_distance`` > 0, each one more than that many pixels (Chebyshev) from those
    picked before it (one pixel per target)."""
    values = _as_array(scores, np.float64)
    flat = np.where(np.isfinite(values), values, -np.inf).ravel()
    finite = int(np.isfinite(values).sum())
    pool = min(finite, n if min_distance <= 0 else max(50 * n, 1000))
    idx = np.argpartition(flat, flat.size - pool)[flat.size - pool:] if pool else np.array([], int)
    idx = idx[np.argsort(flat[idx], kind="stable")[::-1]]
    rows, cols = np.divmod(idx, values.shape[1])
    if min_distance > 0:
        keep: list[int] = []
        for i in range(idx.size):
            if all(max(abs(rows[i] - rows[j]), abs(cols[i] - cols[j])) > min_distance for j in keep):
                keep.append(i)
                if len(keep) == n:
                    break
        rows, cols = rows[keep], cols[keep]
    return rows[:n], cols[:n]


def plot_spectra(cube, scores, top: int = 5, truth=None, background=None, title: str | None = None,
                 wavelength=None, min_distance: int = 0) -> plt.Figure:
    """Spectra of the ``top`` highest-scoring pixels against the background mean and its
    one-standard-deviation spread. ``cube``: cube Dataset (its ``ground_truth`` is used when
    ``truth`` is None) or DataArray/array ``(band, y, x)``; ``background``: a
    :class:`~hsad_scale.stats.BackgroundStats` of the cube (e.g. RX's), else the mean and
    spread are computed (one pass over the cube). With ground truth, true anomalies are
    drawn solid and false alarms dashed. ``min_distance``: see :func:`top_pixels`."""
    import xarray as xr

    if truth is None and hasattr(cube, "data_vars") and GROUND_TRUTH in cube:
        truth = cube[GROUND_TRUTH]
    da_ = _cube_of(cube)
    if not isinstance(da_, xr.DataArray):
        da_ = xr.DataArray(np.asarray(da_), dims=("band", "y", "x"))
    if wavelength is None and "wavelength" in da_.coords:
        wavelength = da_.coords["wavelength"].values
    x_axis = np.arange(da_.sizes["band"]) if wavelength is None else np.asarray(wavelength, dtype=np.float64)
    rows, cols = top_pixels(scores, top, min_distance)
    score_values = _as_array(scores, np.float64)[rows, cols]
    picked = _as_array(da_.isel(y=xr.DataArray(rows, dims="pixel"), x=xr.DataArray(cols, dims="pixel"))
                       .transpose("pixel", "band"), np.float64)
    if background is not None:
        mean = np.asarray(background.mean)
        spread = np.sqrt(np.maximum(np.diag(background.covariance), 0))
    else:
        mean_, std_ = da_.mean(("y", "x"), skipna=True), da_.std(("y", "x"), skipna=True)
        if hasattr(mean_.data, "compute"):
            import dask

            mean_, std_ = dask.compute(mean_, std_)
        mean, spread = np.asarray(mean_, dtype=np.float64), np.asarray(std_, dtype=np.float64)
    labels = None if truth is None else _truth_of(truth)[rows, cols]
    fig, ax = plt.subplots(figsize=(10, 4.4), layout="constrained")
    ax.fill_between(x_axis, mean - spread, mean + spread, color="0.8", label="background mean ± 1 sd")
    ax.plot(x_axis, mean, color="k", lw=1.5, label="background mean")
    colours = plt.get_cmap("plasma")(np.linspace(0.05, 0.85, max(len(rows), 1)))
    for i, (r, c) in enumerate(zip(rows, cols)):
        kind = "" if labels is None else (" anomaly" if labels[i] else " false alarm")
        ax.plot(x_axis, picked[i], color=colours[i], lw=1.1, ls="-" if labels is None or labels[i] else "--",
                label=f"#{i + 1} (y {r}, x {c}): score {score_values[i]:.4g}{kind}")
    ax.set_xlabel("wavelength (nm)" if wavelength is not None else "band")
    ax.set_ylabel(da_.attrs.get("long_name", "value"))
    ax.set_xlim(x_axis[0], x_axis[-1])
    ax.grid(alpha=0.3, lw=0.5)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(title or f"top {len(rows)} scores against the background")
    return fig
