"""Each detector of the contract on a generated 1024 x 1024 x 200 float32 cube (fit and score,
the map computed into memory, on a LocalCluster of one single-threaded worker per core),
against Spectral Python's `spectral.rx` with the same window where one exists.

    python benchmarks/detectors_vs_spy.py [--size 1024] [--bands 200] [--crop 96] [--cov-crop 24]

Spectral Python's windowed RX is a Python loop over pixels: it is timed on a crop of the same
cube (``--crop`` pixels square for the local mean with a fixed covariance, ``--cov-crop`` for
the local covariance) and its time per pixel is multiplied by the cube's pixel count; its
global RX runs on the whole cube in memory. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench-data"

#: (label, method, settings, Spectral Python window or None)
RUNS = [
    ("rx", "rx", None, None),
    ("utd", "utd", None, None),
    ("rxd-utd", "rxd-utd", None, None),
    ("local-rx (5, 21), global covariance", "local-rx", None, (5, 21)),
    ("local-rx (5, 21), local covariance, 20 components", "local-rx", {"covariance": "local"}, (5, 21)),
    ("cluster-rx (k = 4)", "cluster-rx", None, None),
]


def ensure_cube(size: int, bands: int, chunk: int = 256) -> Path:
    from hsad_scale.synth import SceneSpec, synth

    path = DATA / f"synth-{size}x{size}x{bands}-c{chunk}.zarr"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        synth(path, SceneSpec(size, size, bands), chunk=chunk)
    return path


def spy_seconds(image_yxb: np.ndarray, window, cov, crop: int, n_pixels: int) -> tuple[float, str]:
    """Spectral Python's time for ``n_pixels`` (measured whole, or on a crop and scaled)."""
    import spectral

    if window is None:
        t = time.perf_counter()
        spectral.rx(image_yxb)
        return time.perf_counter() - t, "measured"
    part = np.ascontiguousarray(image_yxb[:crop, :crop], dtype=np.float64)
    t = time.perf_counter()
    spectral.rx(part, window=window, cov=cov)
    seconds = time.perf_counter() - t
    return seconds * n_pixels / part[..., 0].size, f"{crop} x {crop} crop: {seconds:.1f} s, scaled"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--bands", type=int, default=200)
    ap.add_argument("--crop", type=int, default=96)
    ap.add_argument("--cov-crop", type=int, default=24)
    ap.add_argument("--skip-spy", action="store_true")
    args = ap.parse_args(argv)

    from hsad_scale import cube as cubes
    from hsad_scale.cluster import dask_client
    from hsad_scale.detectors import base

    path = ensure_cube(args.size, args.bands)
    cube = cubes.open_cube(path)[cubes.CUBE]
    truth = cubes.open_cube(path)[cubes.GROUND_TRUTH].values
    rows = []
    with dask_client(dashboard_address=":0") as client:
        n_workers = len(client.scheduler_info()["workers"])
        for label, method, settings, window in RUNS:
            t0 = time.perf_counter()
            det = base.make(method, settings).fit(cube)
            t1 = time.perf_counter()
            scores = det.score(cube)["score"].values
            t2 = time.perf_counter()
            from hsad_scale.evaluate import metrics

            auc = metrics(scores, truth)["auc"]
            rows.append([label, t1 - t0, t2 - t1, auc, window, det])
            print(f"{label}: fit {t1 - t0:.1f} s, score {t2 - t1:.1f} s, AUC {auc:.4f}", file=sys.stderr, flush=True)
    image = None if args.skip_spy else np.ascontiguousarray(cube.values.transpose(1, 2, 0))
    print(f"\n{args.size} x {args.size} x {args.bands} float32, {n_workers} workers x 1 thread\n")
    print("| detector | fit | score | total | AUC | Spectral Python | how |")
    print("|---|---|---|---|---|---|---|")
    for label, fit_s, score_s, auc, window, det in rows:
        spy, how = "–", "no equivalent"
        if image is not None and (det.method == "rx" or window is not None):
            local_cov = det.method == "local-rx" and det.settings.covariance == "local"
            cov = None if local_cov or window is None else det.stats.covariance
            crop = args.cov_crop if local_cov else args.crop
            seconds, how = spy_seconds(image, window, cov, crop, args.size * args.size)
            spy = f"{seconds:.1f} s"
            if local_cov:
                how += " (Spectral Python: all bands; ours: 20 principal components)"
        print(f"| {label} | {fit_s:.1f} s | {score_s:.1f} s | {fit_s + score_s:.1f} s | {auc:.4f} | {spy} | {how} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
