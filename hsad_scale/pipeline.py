"""The detect job as a short chain of library functions (the CLI and the Prefect flows call
these same functions): prepare cube -> fit -> score -> write -> evaluate -> report."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from hsad_scale import cluster, cube as cubes, evaluate, outputs, plots
from hsad_scale.atomic import atomic_path, check_destination
from hsad_scale.errors import InputError
from hsad_scale.stats import whitener
from hsad_scale.tiles import background_stats, score_map

METHODS = ("rx", "ae", "vae")


@dataclass
class Stages:
    """Wall time of each stage (seconds), printed as it goes."""

    seconds: dict = field(default_factory=dict)
    quiet: bool = False

    @contextlib.contextmanager
    def __call__(self, name: str):
        if not self.quiet:
            print(f"[hsad] {name} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        if not self.quiet:
            print(f"[hsad] {name} done in {self.seconds[name]:.1f} s", file=sys.stderr, flush=True)


def prepare_cube(src: str | Path, run_dir: Path, **ingest_options) -> Path:
    """The cube store to process: ``src`` itself when it is one, else ``src`` ingested into
    ``run_dir/cube.zarr``."""
    src = Path(src)
    if not src.exists():
        raise InputError(f"{src} does not exist")
    if cubes.is_cube_store(src):
        return src
    return cubes.ingest(src, run_dir / "cube.zarr", **ingest_options)


def fit_rx(cube: xr.DataArray):
    """RX background statistics (one Dask reduction) and their whitening."""
    stats = background_stats(cube, name="rx-stats")
    return stats, whitener(stats)


def rx_scores(cube: xr.DataArray, model) -> xr.Dataset:
    """Lazy RX score map as a Dataset with variable ``score`` ``(y, x)``."""
    score = score_map(cube, model.mahalanobis, name="score-tile")
    score.attrs.update(long_name="RX squared Mahalanobis distance", units="1")
    return xr.Dataset({"score": score})


def finish_scores(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, client, stage: Stages) -> xr.Dataset:
    """Write ``scores.zarr`` (and ``scores.tif`` when the cube has a CRS); return them reopened."""
    if cube_ds.rio.crs is not None:
        scores = scores.rio.write_crs(cube_ds.rio.crs).rio.write_transform(cube_ds.rio.transform())
    with stage("score"):
        outputs.write_scores(scores, run_dir / "scores.zarr", client)
    written = xr.open_zarr(run_dir / "scores.zarr", consolidated=False, decode_coords="all")
    if cube_ds.rio.crs is not None:
        with stage("geotiff"):
            outputs.write_geotiff(written["score"], run_dir / "scores.tif")
    return written


def evaluate_and_plot(run_dir: Path, cube_ds: xr.Dataset, scores: xr.Dataset, title: str) -> dict | None:
    """``metrics.json`` and ``roc.png`` when the cube holds ground truth; ``map.png`` always."""
    score = scores["score"].values
    truth = cube_ds[cubes.GROUND_TRUTH].values if cubes.GROUND_TRUTH in cube_ds else None
    plots.save(plots.plot_maps({title: score}, truth), run_dir / "map.png")
    if truth is None:
        return None
    result = evaluate.metrics(score, truth)
    fpr, tpr = evaluate.roc(score, truth)
    outputs.write_json(run_dir / "metrics.json", result)
    plots.save(plots.plot_roc({f"{title} (AUC {result['auc']:.4f})": {"fpr": fpr, "tpr": tpr}}), run_dir / "roc.png")
    return result


def run_detect(src, out, *, method: str = "rx", overwrite: bool = False, dask_address: str | None = None,
               client=None, quiet: bool = False, ingest_options: dict | None = None) -> Path:
    """Run one detection end to end into ``out`` (written whole, or not at all)."""
    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method != "rx":
        raise InputError(f"method {method!r} is not available yet")
    out = check_destination(out, overwrite)
    if not Path(src).exists():
        raise InputError(f"{src} does not exist")
    stage = Stages(quiet=quiet)
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(atomic_path(out, overwrite)))
        tmp.mkdir()
        with stage("ingest"):  # first: bad input fails before a cluster starts
            cube_path = prepare_cube(src, tmp, **(ingest_options or {}))
        cube_ds = cubes.open_cube(cube_path)
        if client is None:
            client = stack.enter_context(cluster.dask_client(dask_address))
        link = cluster.dashboard_link(client)
        if link and not quiet:
            print(f"[hsad] Dask dashboard: {link}", file=sys.stderr)
        with stage("rx-stats"):
            stats, model = fit_rx(cube_ds[cubes.CUBE])
        (tmp / "model").mkdir()
        stats.save(tmp / "model" / "rx_stats.npz")
        scores = finish_scores(tmp, cube_ds, rx_scores(cube_ds[cubes.CUBE], model), client, stage)
        with stage("evaluate"):
            result = evaluate_and_plot(tmp, cube_ds, scores, method.upper())
        run_info = {
            "method": method,
            "source": str(src),
            "cube": str(Path(src).resolve() if cube_path == Path(src) else Path(out).resolve() / "cube.zarr"),
            "shape": dict(cube_ds.sizes),
            "chunks": list(cube_ds[cubes.CUBE].data.chunksize),
            "background": {"pixels": stats.count, **model.describe()},
            "metrics": result,
            "stage_seconds": stage.seconds,
            "dask": cluster.describe(client),
            "versions": outputs.versions(),
            "finished": outputs.now(),
        }
        outputs.write_json(tmp / "run.json", run_info)
    if not quiet:
        print(f"[hsad] wrote {out}", file=sys.stderr)
        if result:
            print(f"[hsad] AUC {result['auc']:.4f}  TPR@FPR1e-2 {result['tpr_at_fpr_0.01']:.3f}", file=sys.stderr)
    return out
