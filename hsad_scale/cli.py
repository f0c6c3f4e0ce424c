"""The ``hsad`` command line. Exit status: 0 ok, 2 bad input (one line on stderr), 1 internal error."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from hsad_scale.errors import InputError


def _ingest(args) -> None:
    from hsad_scale.cube import ingest

    ingest(args.src, args.dest, gt=args.gt, cube_key=args.cube_key, gt_key=args.gt_key, chunk=args.chunk,
           compression=args.compression, overwrite=args.overwrite)
    print(f"[hsad] wrote {args.dest}", file=sys.stderr)


def _detect(args) -> None:
    from hsad_scale.pipeline import DetectOptions, run_detect

    metrics = tuple(m.strip() for m in args.metric.split(",") if m.strip()) if args.metric else None
    options = DetectOptions(method=args.method, preset=args.preset, config_file=args.config,
                            settings=tuple(args.set or ()), metrics=metrics, repeats=args.repeats,
                            ensemble=args.ensemble, device=args.device, model=args.model)
    ingest_options = dict(gt=args.gt, cube_key=args.cube_key, gt_key=args.gt_key, chunk=args.chunk)
    run_detect(args.src, args.out, options, overwrite=args.overwrite, dask_address=args.dask_address,
               ingest_options=ingest_options)


def _evaluate(args) -> None:
    from hsad_scale.evaluate import metrics

    scores = _load_map(args.scores, args.variable)
    if Path(args.gt).is_dir():
        truth = _load_map(args.gt, "ground_truth")
    else:
        from hsad_scale.readers.dispatch import read_ground_truth

        truth = read_ground_truth(args.gt, scores.shape, args.gt_key)
    result = metrics(scores, truth)
    width = max(len(k) for k in result)
    for key, value in result.items():
        print(f"{key:<{width}}  {value:.4f}" if isinstance(value, float) else f"{key:<{width}}  {value}")
    if args.json:
        from hsad_scale.outputs import write_json

        write_json(Path(args.json), result)


def _load_map(path: str, variable: str):
    """A 2-D map: a variable of a Zarr store, a single-band GeoTIFF or a .npy file."""
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p} does not exist")
    if p.is_dir():
        import xarray as xr

        try:
            ds = xr.open_zarr(p, consolidated=False)
        except Exception as exc:
            raise InputError(f"{p} is not a readable Zarr store: {exc}") from None
        if variable not in ds:
            raise InputError(f"{p} holds no variable {variable!r} (it has {', '.join(map(str, ds.data_vars))})")
        return ds[variable].values
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hsad", description="Hyperspectral anomaly detection at scale (RX, AE, VAE) on chunked Zarr cubes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_source(p):
        p.add_argument("--gt", help="ground truth file (.mat, GeoTIFF, .npy) when not inside SRC")
        p.add_argument("--cube-key", help="variable holding the cube (.mat/NetCDF); found by itself when omitted")
        p.add_argument("--gt-key", help="variable holding the ground truth (.mat); found by itself when omitted")
        p.add_argument("--chunk", type=int, default=256, help="tile size in pixels along y and x (default 256)")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")

    p = sub.add_parser("ingest", help="read a scene (.mat, ENVI, GeoTIFF, NetCDF) into a chunked Zarr cube")
    p.add_argument("src", help="scene file")
    p.add_argument("dest", help="output Zarr store (DEST.zarr)")
    common_source(p)
    p.add_argument("--compression", default="none", choices=("none", "zstd", "lz4"),
                   help="codec of the cube store (default none: fastest to read twice)")
    p.set_defaults(run=_ingest)

    p = sub.add_parser("detect", help="score every pixel of a scene and write maps, metrics and plots")
    p.add_argument("src", help="a cube store (.zarr) or any scene file that ingest reads")
    p.add_argument("--method", default="rx", choices=("rx", "ae", "vae"), help="detector (default rx)")
    p.add_argument("--out", required=True, help="run folder to create")
    p.add_argument("--preset", help="AE/VAE settings preset: default-ae, default-vae, study-ae, study-ae-4l, study-vae")
    p.add_argument("--config", help="YAML file of AE/VAE settings (may name a preset)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one AE/VAE setting, e.g. --set epochs=5 --set latent=8")
    p.add_argument("--metric", help="comma-separated AE/VAE scores to map (first one is `score`): "
                                    "resid-mahal, mse, sam, l1, latent-mahal, joint-mahal")
    p.add_argument("--repeats", type=int, default=1, help="AE/VAE trainings with seeds seed..seed+N-1 (default 1)")
    p.add_argument("--ensemble", default="mean", choices=("mean", "max"),
                   help="combine repeated runs' robustly normalised maps by mean (default) or maximum")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="training device (default auto)")
    p.add_argument("--model", help="apply a saved model (RUN_DIR/model, a model folder, or rx_stats.npz) without refitting")
    p.add_argument("--dask-address", default=os.environ.get("HSAD_DASK_ADDRESS"),
                   help="scheduler of an existing Dask cluster (default: a LocalCluster; env HSAD_DASK_ADDRESS)")
    common_source(p)
    p.set_defaults(run=_detect)

    p = sub.add_parser("evaluate", help="ROC figures of a score map against ground truth")
    p.add_argument("scores", help="score map: scores.zarr, GeoTIFF or .npy")
    p.add_argument("gt", help="ground truth: a cube store (its ground_truth), .mat, GeoTIFF or .npy")
    p.add_argument("--gt-key", help="variable holding the ground truth in a .mat file")
    p.add_argument("--variable", default="score", help="variable of a Zarr score store (default score)")
    p.add_argument("--json", help="also write the figures to this JSON file")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args)
    except InputError as exc:
        print(f"hsad: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hsad: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # an internal error: one line, traceback on --debug
        if args.debug:
            raise
        print(f"hsad: internal error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
