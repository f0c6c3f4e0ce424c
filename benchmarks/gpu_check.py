"""GPU check: train and score the default AE and VAE on CUDA and on the CPU, and print the
throughput of both.

    python benchmarks/gpu_check.py                      # 1024 x 1024 x 200 generated cube
    python benchmarks/gpu_check.py --size 256 --bands 64 --max-steps 300   # a quick smoke run

Self-contained: it generates its scene in memory (``hsad_scale.synth``, sub-pixel targets as
ground truth), trains each model on the same pixel sample (the preset's ``max_train_pixels``,
200 000 by default) with ``device="cuda"`` and ``device="cpu"``, scores every pixel of the
scene with the preset's metric (Mahalanobis metrics whitened over the whole scene, as
``hsad detect`` does), and prints training and scoring throughput, the speed-up, and the AUC
of each map (the two devices should agree closely). Without CUDA it says so and runs the
CPU only. Needs only the installed package; a few minutes on a machine with a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings

import numpy as np


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=1024, help="scene height and width in pixels (default 1024)")
    p.add_argument("--bands", type=int, default=200, help="bands (default 200)")
    p.add_argument("--models", default="ae,vae", help="comma-separated: ae, vae (default both)")
    p.add_argument("--devices", default="cuda,cpu", help="comma-separated: cuda, cpu (default both)")
    p.add_argument("--max-steps", type=int, help="cap on optimiser steps (default: the preset's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the results to this JSON file")
    return p.parse_args(argv)


def make_scene(size: int, bands: int, seed: int):
    """Pixels ``(n, bands)`` float32 and ground truth ``(n,)`` of a generated scene."""
    from hsad_scale.cube import CUBE, GROUND_TRUTH
    from hsad_scale.synth import SceneSpec, synth_dataset

    ds = synth_dataset(SceneSpec(size, size, bands, seed), chunk=256)
    cube = ds[CUBE].values  # (band, y, x)
    pixels = np.ascontiguousarray(cube.reshape(bands, -1).T)
    return pixels, ds[GROUND_TRUTH].values.ravel()


def sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def run_one(kind: str, device: str, pixels, truth, max_steps, seed) -> dict:
    """Train one default model on ``device`` and score the scene with it."""
    from hsad_scale.detectors import autoencoder as ae
    from hsad_scale.evaluate import metrics

    config = ae.PRESETS[f"default-{kind}"].replace(seed=seed)
    if max_steps:
        config = config.replace(max_steps=max_steps)
    rng = np.random.default_rng(seed)
    n_train = min(config.max_train_pixels, pixels.shape[0])
    sample = pixels[np.sort(rng.choice(pixels.shape[0], n_train, replace=False))]
    scaling = ae.BandScaling.from_pixels(sample, config.scaling)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ae.CudaFallbackWarning)
        sync(device)
        start = time.perf_counter()
        model = ae.fit(sample, config, scaling, device=device)
        sync(device)
        train_s = time.perf_counter() - start
    ran_on = model.history.get("device", device)
    start = time.perf_counter()
    scores = ae.score_in_memory(model, pixels, config.metric)
    sync(ran_on)
    score_s = time.perf_counter() - start
    steps = int(model.history.get("steps", 0))
    seen = steps * min(config.batch_size, n_train) * config.members  # pixel presentations
    return {
        "model": kind, "device": device, "ran_on": ran_on, "metric": config.metric, "members": config.members,
        "train_pixels": n_train, "steps": steps, "train_s": round(train_s, 3),
        "train_steps_per_s": round(steps / train_s, 1), "train_pixels_per_s": round(seen / train_s),
        "score_s": round(score_s, 3), "score_pixels_per_s": round(pixels.shape[0] / score_s),
        "auc": round(metrics(scores, truth)["auc"], 5),
        "warnings": [str(w.message) for w in caught],
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    devices = [d.strip() for d in args.devices.split(",") if d.strip()]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "cuda" in devices and not torch.cuda.is_available():
        print("CUDA is not available on this machine (torch "
              f"{torch.__version__}, CUDA build {torch.version.cuda}): running the CPU only.", flush=True)
        devices = [d for d in devices if d != "cuda"]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU {gpu}; CPU threads {torch.get_num_threads()} "
          f"({os.cpu_count()} cores); python {platform.python_version()}", flush=True)

    start = time.perf_counter()
    pixels, truth = make_scene(args.size, args.bands, args.seed)
    print(f"scene {args.size} x {args.size} x {args.bands} ({pixels.nbytes / 2**30:.2f} GiB float32, "
          f"{int(truth.sum())} target pixels) generated in {time.perf_counter() - start:.1f} s", flush=True)

    if "cuda" in devices:  # CUDA context and kernels warmed up outside the timings
        from hsad_scale.detectors import autoencoder as ae

        ae.fit(pixels[:4096], ae.PRESETS["default-ae"].replace(max_steps=5, holdout=0.0), device="cuda")
        sync("cuda")

    results = []
    header = f"{'model':<5} {'device':<6} {'train s':>8} {'steps':>6} {'steps/s':>8} {'train px/s':>11} " \
             f"{'score s':>8} {'score px/s':>11} {'AUC':>8}"
    print(header, flush=True)
    for kind in models:
        for device in devices:
            r = run_one(kind, device, pixels, truth, args.max_steps, args.seed)
            results.append(r)
            print(f"{kind:<5} {r['ran_on']:<6} {r['train_s']:>8.2f} {r['steps']:>6} {r['train_steps_per_s']:>8.1f} "
                  f"{r['train_pixels_per_s']:>11,} {r['score_s']:>8.2f} {r['score_pixels_per_s']:>11,} "
                  f"{r['auc']:>8.4f}", flush=True)
            for w in r["warnings"]:
                print(f"      warning: {w}", flush=True)
    for kind in models:
        by = {r["device"]: r for r in results if r["model"] == kind}
        if "cuda" in by and "cpu" in by:
            print(f"{kind}: CUDA speed-up x{by['cpu']['train_s'] / by['cuda']['train_s']:.1f} training, "
                  f"x{by['cpu']['score_s'] / by['cuda']['score_s']:.1f} scoring; "
                  f"AUC {by['cuda']['auc']:.4f} (cuda) vs {by['cpu']['auc']:.4f} (cpu)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"size": args.size, "bands": args.bands, "gpu": gpu, "torch": torch.__version__,
                       "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
