"""Throughput of the default AE (`hsad detect --method ae`, end to end on a LocalCluster)
against PyOD's AutoEncoder with the same layer widths, epochs and batch size, trained on the
same pixel sample and scoring every pixel of the same generated cube.

    python benchmarks/ae_vs_pyod.py [--size 1024] [--bands 200] [--repeats 3]

Prints a Markdown table (pixels per second for training and scoring, end-to-end seconds, AUC)
of the median of interleaved rounds, and every round's times."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[1] / "bench-data"
#: The `hsad` script of this interpreter's environment (works without activating it).
HSAD = str(Path(sys.executable).with_name("hsad")) if Path(sys.executable).with_name("hsad").exists() else "hsad"


def ensure_cube(size: int, bands: int, chunk: int = 128) -> Path:
    path = DATA / f"synth-{size}x{size}x{bands}-c{chunk}.zarr"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        subprocess.run([HSAD, "synth", str(path), "--size", f"{size}x{size}", "--bands", str(bands),
                        "--chunk", str(chunk)], check=True)
    return path


def run_ours(cube: Path) -> dict:
    out = DATA / f"run-ae-{cube.stem}"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([HSAD, "detect", str(cube), "--method", "ae", "--out", str(out)], check=True)
    wall = time.perf_counter() - start
    run = json.loads((out / "run.json").read_text())
    return {"wall": wall, "run": run, "auc": run["metrics"]["auc"]}


def run_pyod(cube: Path, config: dict, train_pixels: int) -> dict:
    """PyOD AutoEncoder with the default AE's widths, epochs, batch size and learning rate,
    trained on ``train_pixels`` of the same sample, scoring every pixel (in memory)."""
    import torch
    import xarray as xr
    from pyod.models.auto_encoder import AutoEncoder
    from sklearn.metrics import roc_auc_score

    from hsad_scale.cube import open_cube
    from hsad_scale.detectors import autoencoder as ae
    from hsad_scale.sampling import sample_pixels

    torch.set_num_threads(2)
    ds = open_cube(cube)
    sample = sample_pixels(ds["cube"], config["max_train_pixels"], seed=config["seed"])[:train_pixels]
    pixels = ds["cube"].values.reshape(ds.sizes["band"], -1).T.copy()
    truth = xr.DataArray(ds["ground_truth"]).values.ravel()
    widths = list(ae.AEConfig.from_dict(config).hidden_widths(pixels.shape[1])) + [config["latent"]]
    model = AutoEncoder(hidden_neuron_list=widths, epoch_num=config["epochs"], batch_size=config["batch_size"],
                        lr=config["lr"], verbose=0, random_state=config["seed"])
    start = time.perf_counter()
    model.fit(sample)
    fitted = time.perf_counter()
    scores = model.decision_function(pixels)
    done = time.perf_counter()
    return {"train": fitted - start, "score": done - fitted, "wall": done - start, "epochs": config["epochs"],
            "train_pixels": sample.shape[0], "widths": widths, "auc": roc_auc_score(truth, scores)}


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the upper median for an even count)."""
    return sorted(runs, key=lambda r: r["wall"])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--bands", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3,
                        help="rounds of (ours, PyOD same epochs, PyOD same steps), interleaved so that the "
                             "machine's speed drifts alike for all; medians are reported (default 3)")
    args = parser.parse_args()
    cube = ensure_cube(args.size, args.bands)
    n_pixels = args.size * args.size

    names = ("PyOD AutoEncoder, same epochs and sample", "PyOD AutoEncoder, same steps")
    rounds = []
    for i in range(args.repeats):
        ours = run_ours(cube)
        config = ours["run"]["config"]
        steps = int(ours["run"]["training"][0].get("steps", config.get("max_steps") or 0))
        # PyOD as configured (the same epochs over the same sample) and with the same number of
        # optimiser steps as ours (one epoch over as many pixels as our capped run sees)
        pyod = {names[0]: run_pyod(cube, config, ours["run"]["training_pixels"]),
                names[1]: run_pyod(cube, config, steps * config["batch_size"])}
        rounds.append((ours, pyod, steps))
        print(f"round {i + 1}: ours {ours['wall']:.1f} s, " + ", ".join(f"{n} {r['wall']:.1f} s" for n, r in pyod.items()),
              file=sys.stderr, flush=True)

    ours = median_run([r[0] for r in rounds])
    run, steps = ours["run"], rounds[0][2]
    config = run["config"]
    stages = run["stage_seconds"]
    train_s = stages["train-ae"]
    score_s = stages["ae-feature-stats"] + stages["score"]
    seen_ours = steps * config["batch_size"]
    pyod_runs = {name: median_run([r[1][name] for r in rounds]) for name in names}
    widths = next(iter(pyod_runs.values()))["widths"]
    print(f"\ncube {args.size}x{args.size}x{args.bands}; widths {widths}; training sample {run['training_pixels']} "
          f"pixels; ours: {steps} steps of {config['batch_size']} x {config['members']} member(s); "
          f"median of {args.repeats} interleaved rounds\n")
    print("| detector | end to end (s) | training (s) | training pixels/s | scoring (s) | scoring pixels/s | AUC |")
    print("|---|---|---|---|---|---|---|")
    print(f"| hsad default AE (`hsad detect --method ae`, whole command) | {ours['wall']:.1f} | {train_s:.1f} | "
          f"{seen_ours / train_s:,.0f} | {score_s:.1f} | {n_pixels / score_s:,.0f} | {ours['auc']:.4f} |")
    for name, pyod in pyod_runs.items():
        seen = pyod["epochs"] * pyod["train_pixels"]
        print(f"| {name} ({pyod['train_pixels']} px; fit + decision_function in memory) | {pyod['wall']:.1f} | "
              f"{pyod['train']:.1f} | {seen / pyod['train']:,.0f} | {pyod['score']:.1f} | "
              f"{n_pixels / pyod['score']:,.0f} | {pyod['auc']:.4f} |")
    print(f"\nend-to-end seconds per round: ours {[round(r[0]['wall'], 1) for r in rounds]}")
    for name in names:
        walls = [r[1][name]["wall"] for r in rounds]
        ratios = [r[1][name]["wall"] / r[0]["wall"] for r in rounds]
        print(f"{name}: {[round(w, 1) for w in walls]}; speed-up of the medians {pyod_runs[name]['wall'] / ours['wall']:.1f}x, "
              f"per round {min(ratios):.1f}-{max(ratios):.1f}x")


if __name__ == "__main__":
    main()
