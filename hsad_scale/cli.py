"""The ``hsad`` command line. Exit status: 0 ok, 2 bad input (one line on stderr), 1 internal error."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from pathlib import Path

from hsad_scale.errors import InputError, Interrupted, pending_interruption, raise_if_interrupted  # noqa: F401
from hsad_scale.names import DEVICES, ENSEMBLES


def _ingest(args) -> None:
    from hsad_scale.cube import ingest

    ingest(args.src, args.dest, gt=args.gt, cube_key=args.cube_key, gt_key=args.gt_key, band_axis=args.band_axis,
           drop_bands=args.drop_bands, swath=args.swath, chunk=args.chunk, compression=args.compression, overwrite=args.overwrite)
    print(f"[hsad] wrote {args.dest}", file=sys.stderr)


def _check_paths(args) -> None:
    """The destination (local path or URL) is free, or ``--overwrite``; the source exists."""
    from hsad_scale import locations

    locations.check_destination(args.out, args.overwrite)
    if not locations.exists(args.src):
        raise InputError(f"{args.src} does not exist")


def _check_detect(args) -> None:
    """What can be checked of a detect command line at once (no data read, nothing heavy
    imported): destination, source, scheduler address, options, AE/VAE settings and metrics."""
    from hsad_scale import checks, locations

    _check_paths(args)
    checks.check_dask_address(args.dask_address)
    if args.dashboard_address is not None:
        checks.check_listen_address(args.dashboard_address, "--dashboard-address")
    if args.repeats < 1:
        raise InputError(f"--repeats must be at least 1, got {args.repeats}")
    if args.chunk < 1:
        raise InputError(f"--chunk must be positive, got {args.chunk}")
    if args.model:  # the saved model's detector; another --method is refused (exit 2)
        from hsad_scale.detectors.saved import check_method

        args.method = check_method(args.model, args.method)
    method = args.method = args.method or "rx"
    checks.check_metrics(method, _metrics(args))
    config = None
    if not args.model:  # the detector's settings (AE/VAE: without importing PyTorch)
        from hsad_scale.detectors import LEARNED_METHODS
        from hsad_scale.detectors.base import resolve_settings

        settings = resolve_settings(method, args.preset, args.config, tuple(args.set or ()))
        config = settings if method in LEARNED_METHODS else None
    mask = _background_mask(args, method)
    shape = None if locations.is_url(args.src) else checks.cube_store_shape(args.src)
    if shape is not None:  # a cube store: its metadata gives the shape (a scene file's, after ingest)
        checks.check_detect_inputs(method, _metrics(args), config, args.model, shape)
        if mask is not None:
            from hsad_scale.background_mask import check_shape

            check_shape(mask, tuple(shape)[-2:])


def _background_mask(args, method: str):
    """The ``--background-mask`` read and checked (a statistical detector, no saved model), or None."""
    if not getattr(args, "background_mask", None):
        return None
    from hsad_scale import fitting
    from hsad_scale.background_mask import check_file

    fitting.check_mask_method(method, args.model)
    return check_file(args.background_mask)  # None for polygons: rasterised on the cube's grid later


def _metrics(args) -> tuple | None:
    return tuple(m.strip() for m in args.metric.split(",") if m.strip()) or None if args.metric else None


def _detect(args) -> None:
    if getattr(args, "flow", False):
        # Prefect's temporary API server (when one is needed) is launched once the source and
        # destination are known to be right, before the rest: its start-up (3 s of CPU) then
        # overlaps the other checks and the imports, which keep one core busy, instead of
        # delaying the flow run (0.7-1.2 s less on 2 cores; benchmarks/flow_overhead.py)
        from flows import start_prefect

        _check_paths(args)
        prefect = start_prefect()
        try:
            return _detect_checked(args, prefect)
        finally:
            prefect.stop()  # also on bad input: the temporary server ends with the command
    return _detect_checked(args, None)


def _detect_checked(args, prefect) -> None:
    _check_detect(args)  # bad input fails before anything starts; the method is now known (a saved model's)
    from hsad_scale import cluster
    from hsad_scale.detectors import LEARNED_METHODS

    if cluster.local_cluster_wanted(args.dask_address):
        # the workers' modules (those of the method, the saved model's included) load in the
        # background while this process imports its own (and while Prefect's API starts, with --flow)
        cluster.start_worker_server(cluster.LEARNED_WORKER_MODULES if args.method in LEARNED_METHODS
                                    else cluster.WORKER_MODULES)
    if prefect is not None:
        return _detect_flow(args, prefect)
    from hsad_scale.pipeline import DetectOptions, run_detect

    metrics = tuple(m.strip() for m in args.metric.split(",") if m.strip()) if args.metric else None
    options = DetectOptions(method=args.method, preset=args.preset, config_file=args.config,
                            settings=tuple(args.set or ()), metrics=metrics, repeats=args.repeats,
                            ensemble=args.ensemble, device=args.device, model=args.model, pfa=args.pfa,
                            threshold=args.threshold, normalise=args.normalise,
                            background_mask=args.background_mask)
    ingest_options = dict(gt=args.gt, cube_key=args.cube_key, gt_key=args.gt_key, chunk=args.chunk,
                          band_axis=args.band_axis, drop_bands=args.drop_bands, swath=args.swath)
    run_detect(args.src, args.out, options, overwrite=args.overwrite, dask_address=args.dask_address,
               ingest_options=ingest_options, dashboard_address=args.dashboard_address)


def _detect_flow(args, prefect) -> None:
    """``hsad detect --flow``: the same run as a run of the Prefect ``detect`` flow (``prefect``:
    its API, launched first thing by :func:`_detect`, getting ready while the rest loads and
    the cluster starts)."""
    from flows import local_run
    from hsad_scale.pipeline import DetectOptions, learned_config

    metrics = [m.strip() for m in args.metric.split(",") if m.strip()] if args.metric else None
    learned_config(DetectOptions(method=args.method, preset=args.preset, config_file=args.config,
                                 settings=tuple(args.set or ()), metrics=tuple(metrics) if metrics else None,
                                 repeats=args.repeats, ensemble=args.ensemble, device=args.device, model=args.model,
                                 pfa=args.pfa, threshold=args.threshold, normalise=args.normalise))
    from flows.detect import detect
    from hsad_scale import cluster

    with contextlib.ExitStack() as stack:
        address = args.dask_address
        if args.dashboard_address is not None and cluster.local_cluster_wanted(address):
            # the LocalCluster with its dashboard where asked (local_run would start one on the default)
            address = stack.enter_context(cluster.dask_client(None, dashboard_address=args.dashboard_address)
                                          ).scheduler.address
        address = stack.enter_context(local_run(address, prefect=prefect))
        detect(src=args.src, out=args.out, method=args.method, preset=args.preset, config=args.config,
               settings=list(args.set or ()), metrics=metrics, repeats=args.repeats, ensemble=args.ensemble,
               device=args.device, model=args.model, overwrite=args.overwrite, dask_address=address, gt=args.gt,
               cube_key=args.cube_key, gt_key=args.gt_key, chunk=args.chunk, pfa=args.pfa, threshold=args.threshold,
               normalise=args.normalise, band_axis=args.band_axis, drop_bands=args.drop_bands, swath=args.swath,
               background_mask=args.background_mask)


def _detections(args) -> None:
    from hsad_scale.pipeline import redo_detections

    redo_detections(args.run_dir, args.pfa, args.threshold, overwrite=args.overwrite)


def threshold_options(p) -> None:
    p.add_argument("--pfa", type=float, default=1e-3,
                   help="probability of false alarm: the fraction of valid pixels flagged as detections "
                        "(default 1e-3)")
    p.add_argument("--threshold", default="empirical", choices=("empirical", "chi2"),
                   help="threshold rule: empirical = the (1 - PFA) quantile of the scores (default; every "
                        "detector); chi2 = chi-square with B degrees of freedom (RX only)")


def _inspect(args) -> None:
    """``hsad inspect SRC``: what ingest would read, printed; nothing written."""
    from hsad_scale.inspect import describe

    print(describe(args.src, gt=args.gt, cube_key=args.cube_key, gt_key=args.gt_key,
                   band_axis=args.band_axis, drop_bands=args.drop_bands, swath=args.swath))


def _sweep(args) -> None:
    from hsad_scale import sweep as sweeps
    from hsad_scale.atomic import check_destination

    sweeps.load_grid(args.grid, args.repeats, args.criterion)  # bad input fails before Prefect starts
    check_destination(args.out, args.overwrite)
    if not Path(args.cube).exists():
        raise InputError(f"{args.cube} does not exist")
    from flows import local_run, start_prefect

    prefect = start_prefect()
    from flows.sweep import sweep

    with local_run(args.dask_address, prefect=prefect) as address:
        state = sweep(cube=args.cube, grid=args.grid, out=args.out, repeats=args.repeats, criterion=args.criterion,
                      device=args.device, dask_address=address, overwrite=args.overwrite, return_state=True)
    if not state.is_completed():  # failed trials (counted in the message), or the flow itself failed
        from prefect.exceptions import FailedRun

        error = state.result(raise_on_failure=False)
        if isinstance(error, Exception) and not isinstance(error, FailedRun):
            raise error  # the flow raised: bad input (exit 2) or an internal error
        raise RuntimeError(state.message or f"the sweep flow run ended {state.type.value}")


def _watch_options(args) -> dict:
    """Detector options of watch/serve, validated now."""
    from hsad_scale.pipeline import DetectOptions, learned_config

    learned_config(DetectOptions(method=args.method, preset=args.preset, config_file=args.config,
                                 settings=tuple(args.set or ()), device=args.device))
    return dict(method=args.method, preset=args.preset, config=args.config, settings=list(args.set or ()) or None,
                device=args.device)


def _watch(args) -> None:
    from hsad_scale import watch as watching

    params = _watch_options(args)
    watching.landing_fs(args.landing)
    watching.prepare_output(args.out)
    quiet_prefect_console()
    from flows import local_run, start_prefect

    prefect = start_prefect()
    from flows.watch import watch

    with local_run(args.dask_address, start_cluster=False, prefect=prefect) as address:
        rows = watch(landing=args.landing, out=args.out, dask_address=address, **params)
    failed = [r for r in rows if r["status"] == "failed"]
    if failed:  # each one has had its line ("[hsad] failed: ...")
        names = ", ".join(r["acquisition"] for r in failed[:3]) + (", ..." if len(failed) > 3 else "")
        message = (f"{len(failed)} of {len(rows)} acquisition(s) failed: {names} (details in "
                   f"{Path(args.out) / 'ledger.json'} and the flow run's logs)")
        if all(r.get("error_kind") == "input" for r in failed):
            raise InputError(message)
        raise RuntimeError(message)


def quiet_prefect_console() -> None:
    """Prefect's console handler (flow and task run lines, task tracebacks, and every other
    library's warnings through the root logger) shows only CRITICAL records: a watch prints
    one line per failed acquisition, while the flow runs' logs still reach Prefect's API.
    Set before Prefect is imported; ``PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`` overrides it."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _serve(args) -> None:
    from flows.watch import serve

    serve(args.landing, args.out, interval=args.interval, port=args.port, dask_address=args.dask_address,
          **_watch_options(args))


def _evaluate(args) -> None:
    from hsad_scale.evaluate import metrics_from_counts
    from hsad_scale.roc_tiles import map_roc_counts

    if args.json:  # an existing file is kept unless --overwrite: checked before any work
        from hsad_scale.atomic import check_destination

        check_destination(args.json, args.overwrite)
    scores = _load_map(args.scores, args.variable)
    if Path(args.gt).is_dir():
        truth = _load_map(args.gt, "ground_truth")
    else:
        from hsad_scale.readers.dispatch import read_ground_truth

        truth = read_ground_truth(args.gt, scores.shape, args.gt_key)
    result = metrics_from_counts(map_roc_counts(scores, truth))[0]  # a store's map: tile by tile, local threads
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        import json

        from hsad_scale.atomic import write_file_atomic
        from hsad_scale.stats import _jsonable

        write_file_atomic(args.json, json.dumps(result, indent=2, default=_jsonable) + "\n", args.overwrite)


def _load_map(path: str, variable: str):
    """A 2-D map: a variable of a Zarr store (lazy, dask-backed in blocks), a single-band
    GeoTIFF or a .npy file (numpy)."""
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_dir():
        from hsad_scale.cube import open_maps

        try:
            ds = open_maps(p)
        except Exception as exc:
            raise InputError(f"{p} is not a readable Zarr store: {exc}") from None
        if variable not in ds:
            raise InputError(f"{p} holds no variable {variable!r} (it has {', '.join(map(str, ds.data_vars))})")
        return ds[variable]
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return np.load(p, allow_pickle=False)
    if suffix in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(p) as f:
            return f.read(1)
    raise InputError(f"cannot read a score map from {p.name}: use a Zarr store, .tif or .npy")


def _synth(args) -> None:
    from hsad_scale.synth import SceneSpec, parse_size, synth

    height, width = parse_size(args.size)
    synth(args.dest, SceneSpec(height, width, args.bands, args.seed), chunk=args.chunk,
          compression=args.compression, overwrite=args.overwrite)
    print(f"[hsad] wrote {args.dest}", file=sys.stderr)


class HsadParser(argparse.ArgumentParser):
    """argparse with a one-line error (the usage block stays in ``--help``)."""

    def error(self, message: str):
        self.exit(2, f"hsad: error: {message} (see {self.prog} --help)\n")


def _version() -> str:
    """The installed hsad-scale's version (the package's own when it is not installed)."""
    import importlib.metadata

    try:
        return importlib.metadata.version("hsad-scale")
    except importlib.metadata.PackageNotFoundError:
        from hsad_scale import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = HsadParser(prog="hsad", description="Hyperspectral anomaly detection at scale (RX, AE, VAE) on chunked Zarr cubes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    parser.add_argument("--version", action="version", version=f"hsad {_version()}")
    from hsad_scale.detectors import METHODS

    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def source_layout(p):
        p.add_argument("--band-axis", help="stored axis holding the bands when the file does not say "
                                           "(.mat/NetCDF/HDF5): first, middle, last, 0-2 or a dimension name")
        p.add_argument("--drop-bands", help="bands to leave out: source indices and ranges (0-based) and "
                                            "wavelength ranges in nm, e.g. 0-3,107,1350-1450nm")
        p.add_argument("--swath", action="store_true", help="keep swath geometry: do not move maps "
                                                            "through a GLT (EMIT) onto its orthorectified grid")

    def common_source(p):
        p.add_argument("--gt", help="ground truth file (.mat, GeoTIFF, .npy) when not inside SRC")
        p.add_argument("--cube-key", help="variable holding the cube (.mat/NetCDF); found by itself when omitted")
        p.add_argument("--gt-key", help="variable holding the ground truth (.mat); found by itself when omitted")
        source_layout(p)
        p.add_argument("--chunk", type=int, default=256, help="tile size in pixels along y and x (default 256)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("ingest", help="read a scene (.mat, ENVI, GeoTIFF, NetCDF) into a chunked Zarr cube")
    p.add_argument("src", help="scene file")
    p.add_argument("dest", help="output Zarr store (DEST.zarr)")
    common_source(p)
    p.add_argument("--compression", default="none", choices=("none", "zstd", "lz4"),
                   help="codec of the cube store (default none: fastest to read twice)")
    p.set_defaults(run=_ingest)

    p = sub.add_parser("inspect", help="print what ingest would read from a scene (layout, bands, wavelengths, "
                                       "CRS, nodata, ground truth); writes nothing")
    p.add_argument("src", help="scene file")
    p.add_argument("--gt", help="ground truth file (.mat, GeoTIFF, .npy) when not inside SRC")
    p.add_argument("--cube-key", help="variable (or HDF5 path) holding the cube (.mat/NetCDF/HDF5)")
    p.add_argument("--gt-key", help="variable holding the ground truth")
    source_layout(p)
    p.set_defaults(run=_inspect)

    p = sub.add_parser("detect", help="score every pixel of a scene and write maps, metrics and plots")
    p.add_argument("src", help="a cube store (.zarr) or any scene file that ingest reads")
    p.add_argument("--method", choices=METHODS,
                   help="detector (default: that of --model when given, else rx); see docs/detectors.md")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--preset", help="AE/VAE settings preset: default-ae, default-vae, study-ae, study-ae-4l, study-vae "
                                    "(wins over a config file's preset:)")
    p.add_argument("--config", help="YAML file of the detector's settings (AE/VAE: may name a preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="one setting of the detector, e.g. --set epochs=5 (AE/VAE), --set outer=15 (local-rx), "
                        "--set clusters=6 (cluster-rx)")
    p.add_argument("--metric", help="comma-separated AE/VAE scores to map (first one is `score`): "
                                    "resid-mahal, mse, sam, l1, latent-mahal, joint-mahal")
    p.add_argument("--repeats", type=int, default=1, help="AE/VAE trainings with seeds seed..seed+N-1 (default 1)")
    p.add_argument("--ensemble", default="mean", choices=ENSEMBLES,
                   help="combine repeated runs' robustly normalised maps by mean (default) or maximum")
    p.add_argument("--device", default="auto", choices=DEVICES, help="training device (default auto)")
    p.add_argument("--model", help="apply a saved model (RUN_DIR/model, a model folder, or rx_stats.npz) without refitting")
    p.add_argument("--background-mask", metavar="FILE",
                   help="single-band GeoTIFF or .npy on the scene's grid (nonzero = background), or polygons "
                        "(.geojson, .gpkg, .shp, .parquet) in the scene's CRS: the statistics of "
                        "rx, utd, rxd-utd, local-rx and cluster-rx come from those pixels only; every pixel is scored")
    p.add_argument("--dask-address", default=os.environ.get("HSAD_DASK_ADDRESS"),
                   help="scheduler of an existing Dask cluster (default: a LocalCluster; env HSAD_DASK_ADDRESS)")
    p.add_argument("--dashboard-address", metavar="HOST:PORT",
                   help="where the LocalCluster's dashboard listens (default 127.0.0.1:8787, this machine only; "
                        "e.g. 0.0.0.0:8787 opens it to the network)")
    p.add_argument("--flow", action="store_true",
                   help="run as a run of the Prefect detect flow (recorded on PREFECT_API_URL, else a temporary local API)")
    threshold_options(p)
    p.add_argument("--normalise", action="store_true",
                   help="write scores.tif min-max scaled to 0-1 (monotone: same ranking and AUC; scores.zarr keeps raw scores)")
    common_source(p)
    p.set_defaults(run=_detect)

    p = sub.add_parser("detections", help="threshold an existing run's score map at a PFA: detections/ (no rescoring)")
    p.add_argument("run_dir", help="run folder of hsad detect")
    threshold_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace the run's existing detections/")
    p.set_defaults(run=_detections)

    p = sub.add_parser("evaluate", help="ROC figures of a score map against ground truth")
    p.add_argument("scores", help="score map: scores.zarr, GeoTIFF or .npy")
    p.add_argument("gt", help="ground truth: a cube store (its ground_truth), .mat, GeoTIFF or .npy")
    p.add_argument("--gt-key", help="variable holding the ground truth in a .mat file")
    p.add_argument("--variable", default="score", help="variable of a Zarr score store (default score)")
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.set_defaults(run=_evaluate)

    p = sub.add_parser("synth", help="generate a synthetic scene with implanted sub-pixel targets")
    p.add_argument("dest", help="output Zarr store")
    p.add_argument("--size", default="512x512", help="HEIGHTxWIDTH in pixels (default 512x512)")
    p.add_argument("--bands", type=int, default=200, help="number of bands (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk", type=int, default=256, help="tile size (default 256)")
    p.add_argument("--compression", default="none", choices=("none", "zstd", "lz4"))
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=_synth)

    def dask_option(p):
        p.add_argument("--dask-address", default=os.environ.get("HSAD_DASK_ADDRESS"),
                       help="scheduler of an existing Dask cluster (default: a LocalCluster; env HSAD_DASK_ADDRESS)")

    p = sub.add_parser("sweep", help="settings sweep of any detector as a Prefect flow: table, averaged ROCs, best setting")
    p.add_argument("cube", help="cube store with ground truth (or a scene file, ingested into DIR/cube.zarr)")
    p.add_argument("--grid", required=True, help="YAML grid file: method, fixed settings, swept lists (grid:)")
    p.add_argument("--repeats", type=int, help="trials per setting (seeds seed..seed+N-1; default: the grid file's, or 1)")
    p.add_argument("--out", required=True, help="folder to create: results.csv/.parquet, roc-<param>.png, best.json")
    p.add_argument("--criterion", help="figure that picks the best setting (default auc): auc, tpr_at_fpr_0.001, "
                                       "tpr_at_fpr_0.01, tpr_at_fpr_0.1, pauc_0.01")
    p.add_argument("--device", default="auto", choices=DEVICES, help="AE/VAE training device (default auto)")
    dask_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.set_defaults(run=_sweep)

    def watch_options(p):
        p.add_argument("landing", help="landing location: a folder or an fsspec URL (s3://..., gs://...)")
        p.add_argument("--out", required=True, help="output location: a run folder per acquisition and ledger.json")
        p.add_argument("--method", default="rx", choices=METHODS, help="detector (default rx)")
        p.add_argument("--preset", help="AE/VAE settings preset")
        p.add_argument("--config", help="YAML file of AE/VAE settings")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one AE/VAE setting")
        p.add_argument("--device", default="auto", choices=DEVICES, help="training device (default auto)")
        dask_option(p)

    p = sub.add_parser("watch", help="run detect once on every acquisition of a landing location not yet processed")
    watch_options(p)
    p.set_defaults(run=_watch)

    p = sub.add_parser("serve", help="serve the Prefect deployments here: watch LANDING on an interval, detect, sweep")
    watch_options(p)
    p.add_argument("--interval", type=float, default=300, help="seconds between watch runs (default 300)")
    p.add_argument("--port", type=int, default=4200,
                   help="port of the local Prefect server started when PREFECT_API_URL is not set (default 4200)")
    p.set_defaults(run=_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command ``argv`` (default ``sys.argv[1:]``); return its exit status."""
    return execute(build_parser().parse_args(argv))


def _on_signal(signum, frame) -> None:
    import logging

    for sig in (signal.SIGINT, signal.SIGTERM):  # the clean-up runs once, uninterrupted
        signal.signal(sig, signal.SIG_IGN)
    # what the stopped cluster and its client log while they close (pending gathers cancelled,
    # "Task exception was never retrieved") is no news: the command says it was interrupted
    for name in ("asyncio", "distributed", "tornado"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    pending_interruption[0] = signum  # checked again where an exception raised here could be lost
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_interrupt():
    """SIGINT and SIGTERM raise :class:`Interrupted` in the block (main thread only; the
    previous handlers come back after it)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    previous_hook = sys.unraisablehook

    def quiet_lost_interruption(unraisable):
        # the handler's exception landed where Python can only print it (a gc callback, a
        # __del__): no traceback; the recorded signal stops the run at the next check
        if not isinstance(unraisable.exc_value, Interrupted):
            previous_hook(unraisable)

    sys.unraisablehook = quiet_lost_interruption
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def execute(args: argparse.Namespace) -> int:
    """Run parsed command line ``args``; return the exit status: 0, 2 bad input, 1 internal
    error, 130/143 interrupted by SIGINT/SIGTERM (temporary outputs removed)."""
    try:
        with _signals_interrupt():
            args.run(args)
            raise_if_interrupted()
    except InputError as exc:
        print(f"hsad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(f"hsad: interrupted by {signal.Signals(signum).name}: stopped, temporary output removed",
              file=sys.stderr)
        return 128 + signum
    except Exception as exc:  # an internal error: one line, traceback on --debug
        if args.debug:
            raise
        print(f"hsad: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


#: Commands whose process may end without the interpreter's teardown (every output already
#: renamed into place and closed; with a flow, Prefect's last logs and events already sent to
#: a configured API by flows.PrefectStart.stop, or its temporary API gone): the teardown of a
#: process that loaded PyTorch, xarray and Dask takes 1-1.5 s on 2 vCPUs, 10 % of an AE run
#: on a 1024 x 1024 scene.
FAST_EXIT_COMMANDS = (_ingest, _inspect, _detect, _evaluate, _synth, _detections, _sweep, _watch)


def run() -> None:
    """The ``hsad`` console script: :func:`main`, then exit."""
    args = build_parser().parse_args()
    status = execute(args)
    if getattr(args, "run", None) in FAST_EXIT_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        if "hsad_scale.cluster" in sys.modules:
            from hsad_scale.cluster import remove_multiprocessing_tempdir

            remove_multiprocessing_tempdir()  # no exit handlers run after os._exit
        os._exit(status)
    sys.exit(status)


if __name__ == "__main__":
    run()
