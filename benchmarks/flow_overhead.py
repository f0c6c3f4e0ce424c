"""What the Prefect flow around ``hsad detect`` costs: wall time of ``hsad detect --method rx``
with and without ``--flow``, as a user runs it (a fresh process each time, its own
LocalCluster, Prefect's API started by the command unless ``PREFECT_API_URL`` is set).

    python benchmarks/flow_overhead.py                 # 100 x 100 real scene and the 2048 x 2048 x 200 cube
    python benchmarks/flow_overhead.py --small-only --repeats 5
    python benchmarks/flow_overhead.py --small-only --server   # against a running Prefect server

The big cube is ``bench-data/synth-2048x2048x200.zarr`` (generated with ``hsad synth`` when
missing: 3.2 GB). Runs alternate plain/flow so that background load hits both alike; the
medians and their difference are printed (and written with ``--json``). With ``--server`` a
``prefect server start`` process is started once on 127.0.0.1 first and every ``--flow`` run
is pointed at it with ``PREFECT_API_URL``, as on a team's machine with a Prefect server: the
temporary per-command API server is then out of the figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMALL = ROOT.parent / "shared" / "data" / "had" / "abu-airport-1.mat"  # 100 x 100 x 205
BIG = ROOT / "bench-data" / "synth-2048x2048x200-c256.zarr"  # the RX benchmark cube (benchmarks/rx_vs_spy.py)
HSAD = [sys.executable, "-m", "hsad_scale.cli"]


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds


def measure(src: Path, repeats: int, work: Path) -> dict:
    plain, flow = [], []
    for i in range(repeats):
        for mode, times in (("plain", plain), ("flow", flow)):
            out = work / f"{src.stem}-{mode}-{i}"
            cmd = [*HSAD, "detect", str(src), "--method", "rx", "--out", str(out)] + (["--flow"] if mode == "flow" else [])
            times.append(timed(cmd))
            shutil.rmtree(out, ignore_errors=True)
            print(f"  {src.name} {mode:<5} run {i + 1}: {times[-1]:.2f} s", flush=True)
    p, f = statistics.median(plain), statistics.median(flow)
    return {"source": str(src), "repeats": repeats, "plain_s": plain, "flow_s": flow, "plain_median_s": round(p, 2),
            "flow_median_s": round(f, 2), "overhead_s": round(f - p, 2)}


def start_server() -> tuple[subprocess.Popen, str]:
    """A ``prefect server start`` on a free loopback port, once it answers; its API URL."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                                str(port), "--no-ui", "--analytics-off"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return process, url
        except OSError:
            time.sleep(0.2)
    process.terminate()
    raise RuntimeError("the Prefect server did not answer within 120 s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs of each mode on the small scene (default 3)")
    p.add_argument("--big-repeats", type=int, default=1, help="runs of each mode on the big cube (default 1)")
    p.add_argument("--small-only", action="store_true", help="skip the 2048 x 2048 x 200 cube")
    p.add_argument("--server", action="store_true", help="start one Prefect server first and point --flow runs at it")
    p.add_argument("--json", help="write the results to this JSON file")
    args = p.parse_args(argv)
    if not SMALL.is_file():
        print(f"small scene not found: {SMALL}", file=sys.stderr)
        return 1
    if not args.small_only and not BIG.exists():
        print(f"generating {BIG} ...", flush=True)
        BIG.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([*HSAD, "synth", str(BIG), "--size", "2048x2048", "--bands", "200", "--chunk", "256"], check=True)
    server = None
    if args.server:
        server, os.environ["PREFECT_API_URL"] = start_server()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    print(f"{os.cpu_count()} cores, load average {load}; PREFECT_API_URL={os.environ.get('PREFECT_API_URL') or 'unset'}",
          flush=True)
    results = []
    try:
        with tempfile.TemporaryDirectory(dir=BIG.parent if BIG.parent.exists() else None) as tmp:
            results.append(measure(SMALL, args.repeats, Path(tmp)))
            if not args.small_only:
                results.append(measure(BIG, args.big_repeats, Path(tmp)))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)
    print(f"\n{'scene':<32} {'plain s':>8} {'flow s':>8} {'overhead s':>11}")
    for r in results:
        print(f"{Path(r['source']).name:<32} {r['plain_median_s']:>8.2f} {r['flow_median_s']:>8.2f} {r['overhead_s']:>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"cores": os.cpu_count(), "load_before": load, "server": args.server,
                                               "results": results},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
