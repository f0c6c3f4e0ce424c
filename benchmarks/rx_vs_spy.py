"""RX end to end with `hsad detect` on a generated 2048 x 2048 x 200 float32 cube, against
Spectral Python's `spectral.rx` on the same array in memory; peak RSS of all processes.

    python benchmarks/rx_vs_spy.py [--size 2048] [--bands 200] [--chunk 256] [--larger] [--skip-spy] [--repeats 3]

Prints a Markdown table. The compute limit is two passes of 2*N*B^2 flops at the float32
matrix-multiply rate measured in the same run (numpy, all cores)."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

DATA = Path(__file__).resolve().parents[1] / "bench-data"
#: The `hsad` script of this interpreter's environment (works without activating it).
HSAD = str(Path(sys.executable).with_name("hsad")) if Path(sys.executable).with_name("hsad").exists() else "hsad"


def matmul_rate(bands: int) -> float:
    """float32 flop/s of (n, B) @ (B, B), the shape of the scoring kernel, on all cores."""
    rng = np.random.default_rng(0)
    x = rng.random((262144, bands), dtype=np.float32)
    w = rng.random((bands, bands), dtype=np.float32)
    x @ w
    best = np.inf
    for _ in range(5):
        t = time.perf_counter()
        x @ w
        best = min(best, time.perf_counter() - t)
    return 2 * x.shape[0] * bands * bands / best


def ensure_cube(size: int, bands: int, chunk: int) -> Path:
    path = DATA / f"synth-{size}x{size}x{bands}-c{chunk}.zarr"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        subprocess.run([HSAD, "synth", str(path), "--size", f"{size}x{size}", "--bands", str(bands),
                        "--chunk", str(chunk)], check=True)
    return path


class PeakRSS:
    """Peak of the summed RSS of a process and all its descendants, polled every 50 ms."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self):
        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                total = sum(p.memory_info().rss for p in procs if p.is_running())
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_detect(cube: Path) -> tuple[float, int, dict]:
    import json

    out = DATA / f"run-{cube.stem}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    proc = subprocess.Popen([HSAD, "detect", str(cube), "--method", "rx", "--out", str(out)])
    rss = PeakRSS(proc.pid)
    proc.wait()
    wall = time.perf_counter() - start
    peak = rss.stop()
    if proc.returncode:
        raise SystemExit(f"hsad detect failed with {proc.returncode}")
    run = json.loads((out / "run.json").read_text())
    return wall, peak, run


def run_spy(cube: Path) -> float:
    import spectral
    import xarray as xr

    array = xr.open_zarr(cube, consolidated=False)["cube"].values.transpose(1, 2, 0)  # (rows, cols, bands)
    start = time.perf_counter()
    spectral.rx(array)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--bands", type=int, default=200)
    parser.add_argument("--chunk", type=int, default=256, help="tile size of the generated cube (default 256, as ingest and synth)")
    parser.add_argument("--larger", action="store_true", help="also run a cube with 4x the pixels (memory only)")
    parser.add_argument("--skip-spy", action="store_true")
    parser.add_argument("--repeats", type=int, default=3,
                        help="hsad detect runs per cube; the table shows the fastest and the largest peak RSS")
    args = parser.parse_args()

    rate = matmul_rate(args.bands)
    rows = []
    sizes = [args.size] + ([args.size * 2] if args.larger else [])
    for size in sizes:
        cube = ensure_cube(size, args.bands, args.chunk)
        n = size * size
        limit = 2 * (2 * n * args.bands**2) / rate
        spy = run_spy(cube) if size == args.size and not args.skip_spy else None
        runs = [run_detect(cube) for _ in range(args.repeats)]  # after Spectral Python, which evicts the page cache
        wall, peak, run = min(runs, key=lambda r: r[0])
        walls = sorted(r[0] for r in runs)
        print(f"{size}: hsad detect wall times {', '.join(f'{w:.1f}' for w in walls)} s", file=sys.stderr)
        rows.append((size, wall, limit, max(r[1] for r in runs), spy, run["stage_seconds"]))
    print(f"\nfloat32 matmul rate: {rate / 1e9:.0f} GFLOP/s; cores: {psutil.cpu_count()}; "
          f"memory: {psutil.virtual_memory().total / 2**30:.0f} GiB\n")
    print(f"tiles {args.chunk} x {args.chunk} x {args.bands}, uncompressed store\n")
    print("| cube | hsad detect (s) | spectral.rx (s) | speed-up | compute limit (s) | fraction of limit | peak RSS, all processes (GB) | stages (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for size, wall, limit, peak, spy, stages in rows:
        spy_text = f"{spy:.1f}" if spy else "-"
        speed = f"{spy / wall:.1f}x" if spy else "-"
        stage_text = ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
        print(f"| {size}x{size}x{args.bands} | {wall:.1f} | {spy_text} | {speed} | {limit:.2f} | {limit / wall:.2f} | "
              f"{peak / 1e9:.2f} | {stage_text} |")


if __name__ == "__main__":
    main()
