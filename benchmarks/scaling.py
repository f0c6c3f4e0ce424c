"""How `hsad detect --method rx` scales: end to end on generated 200-band cubes of 1024^2 to
8192^2 pixels, uncompressed and zstd-compressed, on the LocalCluster and through
`--dask-address` to a separately started scheduler and workers.

    python benchmarks/scaling.py                               # 1024 and 2048, both codecs, both clusters
    python benchmarks/scaling.py --sizes 4096 8192 --codecs none --clusters local external

Per run: seconds, Mpx/s, fraction of the compute limit (two passes of 2*N*B^2 flops at the
float32 matrix-multiply rate measured in the same run), peak RSS summed over every process
(the command, its forkserver and workers; for the external cluster also the scheduler and the
workers' processes). For the largest size it also reads the cube's chunk files once (4
threads) and compares that read rate with the statistics pass's (cube bytes / stage seconds):
a pass within 80 % of the read rate was bound by disk reads. That read runs after the run, so
it also records how much of the cube was in the page cache when the run started (mincore):
when the cube fits in memory and was not cached, the run read it from disk but the read rate
afterwards is the page cache's, and the verdict says so instead of comparing them. Cubes are written by
`hsad synth` into bench-data/ (git-ignored): an 8192^2 x 200 float32 cube is 54 GB, more
than this machine's memory (the point); check the free disk first. Prints a Markdown table
(and writes JSON with --json). Run by hand; never from the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rx_vs_spy import PeakRSS, matmul_rate  # noqa: E402  (the RX benchmark's rate and memory probes)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench-data"
HSAD = [sys.executable, "-m", "hsad_scale.cli"]


def ensure_cube(size: int, bands: int, chunk: int, codec: str) -> Path:
    path = DATA / f"synth-{size}x{size}x{bands}-c{chunk}{'' if codec == 'none' else '-' + codec}.zarr"
    if not path.exists():
        need = size * size * bands * 4
        free = shutil.disk_usage(DATA if DATA.exists() else ROOT).free
        if codec == "none" and need > 0.9 * free:
            raise SystemExit(f"{path.name} needs {need / 1e9:.0f} GB, {free / 1e9:.0f} GB free")
        DATA.mkdir(exist_ok=True)
        print(f"generating {path} ...", file=sys.stderr, flush=True)
        subprocess.run([*HSAD, "synth", str(path), "--size", f"{size}x{size}", "--bands", str(bands),
                        "--chunk", str(chunk), "--compression", codec], check=True)
    return path


class ExternalCluster:
    """`dask scheduler` and `dask worker` processes on 127.0.0.1 (one single-threaded worker
    per core), with hsad's Dask configuration, started in their own working directory."""

    def __init__(self, workers: int):
        from hsad_scale.cluster import CONFIG_FILE

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{port}"
        self.cwd = DATA / "external-cluster"
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "DASK_CONFIG": str(CONFIG_FILE.parent)}
        quiet = dict(cwd=self.cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.processes = [subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1",
                                            "--port", str(port), "--dashboard-address", "127.0.0.1:0"], **quiet)]
        self.processes.append(subprocess.Popen([sys.executable, "-m", "dask", "worker", self.address, "--host",
                                                "127.0.0.1", "--nworkers", str(workers), "--nthreads", "1",
                                                "--dashboard-address", "127.0.0.1:0"], **quiet))
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(workers, timeout=120)

    def close(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=60)


def run_detect(cube: Path, address: str | None, extra_pids: list[int]) -> tuple[float, int, dict]:
    out = DATA / f"run-scaling-{cube.stem}"
    shutil.rmtree(out, ignore_errors=True)
    command = [*HSAD, "detect", str(cube), "--method", "rx", "--out", str(out)]
    if address:
        command += ["--dask-address", address]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    probes = [PeakRSS(process.pid), *(PeakRSS(pid) for pid in extra_pids)]
    _, err = process.communicate()
    wall = time.perf_counter() - start
    peak = sum(p.stop() for p in probes)  # each tree's peak: an upper bound of the simultaneous peak
    if process.returncode:
        raise SystemExit(f"hsad detect failed ({process.returncode}): {err[-2000:]}")
    record = json.loads((out / "run.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return wall, peak, record


def _chunk_files(store: Path) -> list[Path]:
    return [p for p in (store / "cube").rglob("*") if p.is_file() and p.name != "zarr.json"]


def cached_fraction(store: Path) -> float:
    """Fraction of the chunk files' pages resident in the page cache (Linux mincore(2))."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    page = mmap.PAGESIZE
    resident = total = 0
    for path in _chunk_files(store):
        size = path.stat().st_size
        if not size:
            continue
        with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
            pages = (size + page - 1) // page
            vec = ctypes.create_string_buffer(pages)
            address = ctypes.addressof(ctypes.c_char.from_buffer(mm))
            if libc.mincore(ctypes.c_void_p(address), size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            resident += sum(b & 1 for b in vec.raw)
            total += pages
    return resident / total if total else 0.0


def read_rate(store: Path, threads: int = 4) -> float:
    """Bytes/s reading every chunk file of the store's cube once (page cache as it is)."""
    files = _chunk_files(store)

    def read(path: Path) -> int:
        with open(path, "rb", buffering=0) as f:
            return sum(len(block) for block in iter(lambda: f.read(8 << 20), b""))

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read, files))
    return total / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048], help="cube sides (default 1024 2048)")
    p.add_argument("--bands", type=int, default=200)
    p.add_argument("--chunk", type=int, default=256)
    p.add_argument("--codecs", nargs="+", default=["none", "zstd"], choices=("none", "zstd"))
    p.add_argument("--clusters", nargs="+", default=["local", "external"], choices=("local", "external"))
    p.add_argument("--workers", type=int, default=psutil.cpu_count(), help="external workers (default: cores)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args(argv)

    rate = matmul_rate(args.bands)
    load = os.getloadavg()[0]
    print(f"float32 matmul rate {rate / 1e9:.0f} GFLOP/s; {psutil.cpu_count()} cores, load {load:.1f}; "
          f"memory {psutil.virtual_memory().total / 2**30:.0f} GiB\n")
    rows = []
    external = ExternalCluster(args.workers) if "external" in args.clusters else None
    try:
        for size in args.sizes:
            for codec in args.codecs:
                cube = ensure_cube(size, args.bands, args.chunk, codec)
                for kind in args.clusters:
                    address = external.address if kind == "external" else None
                    pids = [proc.pid for proc in external.processes] if kind == "external" else []
                    largest = size == max(args.sizes) and codec == "none"
                    cached_before = cached_fraction(cube) if largest else None
                    wall, peak, record = run_detect(cube, address, pids)
                    pixels = size * size
                    limit = 2 * (2 * pixels * args.bands ** 2) / rate
                    row = {"size": size, "codec": codec, "cluster": kind, "seconds": round(wall, 2),
                           "mpx_per_s": round(pixels / wall / 1e6, 3), "limit_s": round(limit, 2),
                           "fraction_of_limit": round(limit / wall, 3), "peak_rss_gb": round(peak / 1e9, 2),
                           "stage_seconds": record["stage_seconds"]}
                    if largest:
                        bytes_ = pixels * args.bands * 4
                        disk = read_rate(cube)
                        stats_rate = bytes_ / record["stage_seconds"]["rx-stats"]
                        # A cube that fits in memory, read cold by the run, is cached for the read after it.
                        comparable = cached_before > 0.9 or bytes_ > 0.8 * psutil.virtual_memory().total
                        row.update(read_rate_gb_s=round(disk / 1e9, 2), stats_pass_gb_s=round(stats_rate / 1e9, 2),
                                   cached_before=round(cached_before, 3),
                                   disk_bound=bool(stats_rate >= 0.8 * disk) if comparable else None)
                    rows.append(row)
                    print(f"  {size}^2 {codec:<4} {kind:<8} {wall:7.2f} s  {row['mpx_per_s']:.2f} Mpx/s  "
                          f"{row['fraction_of_limit']:.2f} of the limit  {row['peak_rss_gb']:.2f} GB", flush=True)
    finally:
        if external is not None:
            external.close()
    print("\n| cube | codec | cluster | seconds | Mpx/s | compute limit | fraction of the limit | peak RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['size']} x {r['size']} x {args.bands} | {r['codec']} | {r['cluster']} | {r['seconds']:.2f} | "
              f"{r['mpx_per_s']:.2f} | {r['limit_s']:.2f} s | {r['fraction_of_limit']:.2f} | {r['peak_rss_gb']:.2f} GB |")
    for r in rows:
        if "read_rate_gb_s" in r:
            verdict = {True: "bound by disk reads", False: "not bound by disk reads",
                       None: f"not comparable (the run read {1 - r['cached_before']:.0%} of the cube from disk; "
                             "the read after it came from the page cache)"}
            print(f"\n{r['size']}^2 ({r['cluster']}): {r['cached_before']:.0%} of the cube in the page cache before the run; "
                  f"chunk files read at {r['read_rate_gb_s']} GB/s, statistics pass {r['stats_pass_gb_s']} GB/s: "
                  f"{verdict[r['disk_bound']]}")
    if args.json:
        Path(args.json).write_text(json.dumps({"matmul_gflops": rate / 1e9, "load": load, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
