"""The detections stage on a large score map: time and peak memory.

    python benchmarks/detections.py [--size 4096] [--pfa 1e-3] [--repeats 2]

Generates (once) ``bench-data/detections-SIZE/``: a score store ``scores.zarr`` (``score``
float32 ``(y, x)`` in 256-pixel chunks, what ``hsad detect`` writes for a SIZE x SIZE cube:
gamma-distributed background, 3 x 3 targets on a 128-pixel grid, 5 % of them faint) and
``truth.zarr`` (``ground_truth`` uint8). Then, each in a fresh process on local threads (as
``hsad detections`` runs), :func:`hsad_scale.detections.run_detections` on the map read from
the store in 1024-pixel blocks (``cube.open_maps``): both thresholds, objects,
``detections.tif`` (COG), the vector files, and with ``--truth`` the object-level sweep.
Prints a Markdown table: wall time, peak RSS of the process and its RSS before the stage
(imports and the opened store), so the difference is what the stage adds."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "bench-data"

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import psutil
from hsad_scale import cube as cubes, detections
import geopandas, rasterio  # noqa: F401  (imported before the baseline: not the stage's memory)
folder, out, pfa, with_truth = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), sys.argv[4] == "1"
score = cubes.open_maps(folder / "scores.zarr")["score"]
truth = cubes.open_maps(folder / "truth.zarr")["ground_truth"] if with_truth else None
before = psutil.Process().memory_info().rss
start = time.perf_counter()
frame, record = detections.run_detections(score, out, pfa=pfa, bands=200, truth=truth)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
evaluation = record.get("object_evaluation", {}).get("at_pfa", {})
print(json.dumps({"seconds": seconds, "peak": peak, "before": before, "objects": record["objects"],
                  "flagged": record["flagged_pixels"], "expected": record["expected_pixels"],
                  "chi2_flagged": record["chi2"]["flagged_pixels"],
                  "targets": f"{evaluation.get('targets_detected')}/{evaluation.get('targets')}" if evaluation else ""}))
"""


def make_maps(folder: Path, size: int, chunk: int = 256, seed: int = 0) -> None:
    """The score and ground-truth stores (written tile by tile, never whole in memory)."""
    import dask
    import dask.array as da
    import numpy as np
    import xarray as xr

    if (folder / "truth.zarr").is_dir():
        return
    folder.mkdir(parents=True, exist_ok=True)

    def tile(template, which: int, block_info=None):
        (r0, r1), (c0, c1) = block_info[0]["array-location"]
        rng = np.random.default_rng([seed, r0, c0])
        scores = rng.gamma(2.0, 1.0, size=template.shape).astype(np.float32)
        truth = np.zeros(template.shape, np.uint8)
        for r in range(r0 - r0 % 128 + 64, r1, 128):
            for c in range(c0 - c0 % 128 + 64, c1, 128):
                strength = 2.0 if (r // 128 + c // 128) % 20 == 0 else 30.0
                scores[r - r0 - 1 : r - r0 + 2, c - c0 - 1 : c - c0 + 2] += strength
                truth[r - r0 - 1 : r - r0 + 2, c - c0 - 1 : c - c0 + 2] = 1
        return scores if which == 0 else truth

    template = da.zeros((size, size), dtype=np.uint8, chunks=chunk)
    coords = {"y": np.arange(size), "x": np.arange(size)}
    score = xr.Dataset({"score": (("y", "x"), template.map_blocks(tile, 0, dtype=np.float32))}, coords=coords)
    truth = xr.Dataset({"ground_truth": (("y", "x"), template.map_blocks(tile, 1, dtype=np.uint8))}, coords=coords)
    with dask.config.set(scheduler="threads"):
        score.to_zarr(folder / "scores.zarr", consolidated=False, mode="w")
        truth.to_zarr(folder / "truth.zarr", consolidated=False, mode="w")


def run_once(folder: Path, pfa: float, with_truth: bool) -> dict:
    out = Path(tempfile.mkdtemp(prefix="detections-", dir=folder))
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, str(folder), str(out), str(pfa), "1" if with_truth else "0"],
                              capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--pfa", type=float, default=1e-3)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    folder = DATA / f"detections-{args.size}"
    make_maps(folder, args.size)
    print(f"score map {args.size} x {args.size} float32 ({args.size ** 2 * 4 / 2**20:.0f} MB), PFA {args.pfa:g}\n")
    print("| stage | seconds (runs) | peak RSS | RSS before the stage | detections | pixels flagged / P x N "
          "| chi-square flags | targets detected |")
    print("|---|---|---|---|---|---|---|---|")
    for with_truth in (False, True):
        runs = [run_once(folder, args.pfa, with_truth) for _ in range(args.repeats)]
        best = min(runs, key=lambda r: r["seconds"])
        label = "thresholds, objects, files" + (" + object-level sweep (12 PFAs)" if with_truth else "")
        times = ", ".join(f"{r['seconds']:.1f}" for r in runs)
        print(f"| {label} | {best['seconds']:.1f} ({times}) "
              f"| {best['peak'] / 2**30:.2f} GB | {best['before'] / 2**30:.2f} GB | {best['objects']} "
              f"| {best['flagged']} / {best['expected']:.1f} | {best['chi2_flagged']} | {best['targets']} |")


if __name__ == "__main__":
    main()
