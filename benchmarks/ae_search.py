"""Time-boxed search for the AE/VAE defaults on the shared scenes.

Each experiment is a named set of overrides on a base preset plus the metrics to score;
every (scene, seed) model is trained once and scored with all listed metrics. Results are
appended to benchmarks/ae_search_results.jsonl (one line per experiment and metric, with
per-scene per-seed AUC and TPR@1e-2) and summarised as

    name metric | mean AUC | mean TPR@1e-2 | worst per-scene seed std | worst scene | s/run

    python benchmarks/ae_search.py --group ae-scaling --seeds 5
    python benchmarks/ae_search.py --list
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality_table import DATA, evaluate, load_scene, scene_names  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "ae_search_results.jsonl"

AE_BASE = dict(preset="study-ae")
VAE_BASE = dict(preset="study-vae")
STD_LIN = dict(scaling="standardise", output_activation="linear", latent_activation="linear")
ALL_AE = ["resid-mahal", "mse", "sam", "joint-mahal"]
VSTD = dict(scaling="standardise", output_activation="linear", loss="mse", beta=1.0, width=64, latent=4,
            epochs=100, max_steps=300, batch_size=32)
ALL_VAE = ["latent-mahal", "resid-mahal", "joint-mahal", "mse"]

#: group -> list of (name, settings, metrics)
EXPERIMENTS: dict[str, list[tuple[str, dict, list[str]]]] = {
    # one ingredient at a time on the study AE (1 epoch, batch 32, 64-4)
    "ae-ingredients": [
        ("study", dict(AE_BASE), ALL_AE),
        ("std", dict(AE_BASE, scaling="standardise", output_activation="linear"), ALL_AE),
        ("bandmm", dict(AE_BASE, scaling="band-minmax"), ALL_AE),
        ("linlat", dict(AE_BASE, latent_activation="linear"), ALL_AE),
        ("std+linlat", dict(AE_BASE, **STD_LIN), ALL_AE),
    ],
    # training budget with standardise + linear latent
    "ae-budget": [
        ("std+linlat steps1000", dict(AE_BASE, **STD_LIN, min_steps=1000, max_steps=1000), ALL_AE),
        ("std+linlat steps3000", dict(AE_BASE, **STD_LIN, min_steps=3000, max_steps=3000), ALL_AE),
        ("std+linlat es(h.1,p2,<=4000)", dict(AE_BASE, **STD_LIN, epochs=50, max_steps=4000, holdout=0.1,
                                              patience=2), ALL_AE),
    ],
    "ae-members": [
        ("std+linlat m4", dict(AE_BASE, **STD_LIN, members=4), ALL_AE),
        ("std+linlat m4 steps1000", dict(AE_BASE, **STD_LIN, members=4, min_steps=1000, max_steps=1000),
         ALL_AE),
    ],
    "ae-shape": [
        ("std+linlat m4 lat2", dict(AE_BASE, **STD_LIN, members=4, latent=2), ALL_AE),
        ("std+linlat m4 lat8", dict(AE_BASE, **STD_LIN, members=4, latent=8), ALL_AE),
        ("std+linlat m4 lat16", dict(AE_BASE, **STD_LIN, members=4, latent=16), ALL_AE),
        ("std+linlat m4 3l", dict(AE_BASE, **STD_LIN, members=4, layers=3), ALL_AE),
        ("std+linlat m4 w32", dict(AE_BASE, **STD_LIN, members=4, width=32), ALL_AE),
        ("std+linlat m4 bs64", dict(AE_BASE, **STD_LIN, members=4, batch_size=64), ALL_AE),
        ("std m4 (relu latent)", dict(AE_BASE, scaling="standardise", output_activation="linear", members=4),
         ALL_AE),
    ],
    # fixed number of optimiser steps, larger batches (what a big scene would get)
    "ae-steps": [
        ("std+linlat m4 3l steps300 bs32", dict(AE_BASE, **STD_LIN, members=4, layers=3, epochs=100,
                                                max_steps=300), ALL_AE),
        ("std+linlat m4 3l steps300 bs128", dict(AE_BASE, **STD_LIN, members=4, layers=3, epochs=100,
                                                 max_steps=300, batch_size=128), ALL_AE),
        ("std+linlat m4 3l steps300 bs512", dict(AE_BASE, **STD_LIN, members=4, layers=3, epochs=100,
                                                 max_steps=300, batch_size=512), ALL_AE),
        ("std+linlat m8 3l", dict(AE_BASE, **STD_LIN, members=8, layers=3), ALL_AE),
    ],
    # the VAE
    "vae-ingredients": [
        ("study", dict(VAE_BASE), ALL_VAE),
        ("std", dict(VAE_BASE, scaling="standardise", output_activation="linear"), ALL_VAE),
        ("std mse", dict(VAE_BASE, scaling="standardise", output_activation="linear", loss="mse"), ALL_VAE),
        ("std beta1", dict(VAE_BASE, scaling="standardise", output_activation="linear", beta=1.0), ALL_VAE),
        ("std 64-4 mse beta1", dict(VAE_BASE, scaling="standardise", output_activation="linear", loss="mse",
                                    beta=1.0, width=64, latent=4), ALL_VAE),
    ],
    "vae-m4": [
        ("std 64-4 mse beta1 m4 steps300", dict(VAE_BASE, **VSTD, members=4), ALL_VAE),
        ("std 3l 64-32-4 mse beta1 m4 steps300", dict(VAE_BASE, **VSTD, members=4, layers=3), ALL_VAE),
        ("std 64-4 mse beta1 m4 steps300 bs128", dict(VAE_BASE, **dict(VSTD, batch_size=128), members=4), ALL_VAE),
        ("std 64-4 mse beta5 m4 steps300", dict(VAE_BASE, **dict(VSTD, beta=5.0), members=4), ALL_VAE),
    ],
}


def run_experiment(settings: dict, metrics: list[str], scenes: list[str], seeds: int, cache: dict) -> dict:
    from hsad_scale.detectors.autoencoder import config_from_dict, fit, score_in_memory

    config = config_from_dict(settings)
    res = {m: {} for m in metrics}
    seconds = []
    for scene in scenes:
        if scene not in cache:
            cube, gt = load_scene(scene)
            cache[scene] = (cube.reshape(-1, cube.shape[-1]), gt.reshape(-1))
        pixels, labels = cache[scene]
        for m in metrics:
            res[m][scene] = {"auc": [], "tpr": []}
        for seed in range(seeds):
            t0 = time.perf_counter()
            model = fit(pixels, config.replace(seed=seed), device="cpu")
            for m in metrics:
                auc, tpr = evaluate(labels, score_in_memory(model, pixels, m))
                res[m][scene]["auc"].append(auc)
                res[m][scene]["tpr"].append(tpr)
            seconds.append(time.perf_counter() - t0)
    return {"config": config.to_dict(), "results": res, "seconds_per_run": float(np.mean(seconds))}


def summarise(per_scene: dict) -> dict:
    auc = {s: np.asarray(v["auc"]) for s, v in per_scene.items()}
    tpr = {s: np.asarray(v["tpr"]) for s, v in per_scene.items()}
    stds = {s: float(a.std()) for s, a in auc.items()}
    worst = max(stds, key=stds.get)
    return {"mean_auc": float(np.mean([a.mean() for a in auc.values()])),
            "mean_tpr": float(np.mean([t.mean() for t in tpr.values()])),
            "worst_std": stds[worst], "worst_scene": worst,
            "min_auc_scene": min(auc, key=lambda s: auc[s].mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--group", nargs="*", default=[])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--scenes", nargs="*", default=None)
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", type=str, default=None, help="ad-hoc experiment: JSON list of [name, settings, metrics]")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.list:
        for g, exps in EXPERIMENTS.items():
            print(g + ": " + "; ".join(e[0] for e in exps))
        return 0
    import torch

    torch.set_num_threads(1)
    scenes = args.scenes or scene_names(DATA)
    todo = [(g, *e) for g in args.group for e in EXPERIMENTS[g]]
    if args.json:
        todo += [("adhoc", *e) for e in json.loads(args.json)]
    cache: dict = {}
    for group, name, settings, metrics in todo:
        t0 = time.perf_counter()
        out = run_experiment(settings, metrics, scenes, args.seeds, cache)
        for m in metrics:
            s = summarise(out["results"][m])
            line = {"group": group, "name": name, "metric": m, "seeds": args.seeds, "scenes": len(scenes),
                    "settings": settings, **s, "seconds_per_run": out["seconds_per_run"],
                    "per_scene": out["results"][m]}
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")
            print(f"{group:16s} {name:34s} {m:13s} | AUC {s['mean_auc']:.4f} | TPR {s['mean_tpr']:.3f} | "
                  f"worst std {s['worst_std']:.3f} ({s['worst_scene']}) | min {s['min_auc_scene']} | "
                  f"{out['seconds_per_run']:.2f} s/run", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
