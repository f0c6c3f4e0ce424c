"""Detection quality on the shared real scenes: ROC AUC and TPR at FPR 1e-2.

For every scene in the data folder (default ../shared/data/had next to the checkout) and every method, the
AUC (mean +- std over seeds) and the TPR at FPR 1e-2 (linear interpolation on the ROC
curve) are computed; the table (with the mean over scenes) is printed and written to
docs/quality_table.md. Runs on one CPU thread.

    python benchmarks/quality_table.py --seeds 5
    python benchmarks/quality_table.py --scenes hydice sandiego --methods rx default-ae
    python benchmarks/quality_table.py --seeds 1 --methods rx utd rxd-utd local-rx local-rx-3-11 \
        local-rx-localcov cluster-rx --out docs/quality_table_detectors.md
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "had"  # ../shared/data/had of the checkout
FPR_POINT = 1e-2

#: method name -> (preset, metric); "rx" is global RX. Methods sharing a preset share the
#: trained model of each seed.
METHODS: dict[str, tuple[str | None, str | None]] = {
    "rx": (None, None),
    "study-ae-mse": ("study-ae", "mse"),
    "study-ae-sam": ("study-ae", "sam"),
    "study-ae-resid-mahal": ("study-ae", "resid-mahal"),
    "study-ae-4l-mse": ("study-ae-4l", "mse"),
    "study-vae-latent-mahal": ("study-vae", "latent-mahal"),
    "study-vae-mse": ("study-vae", "mse"),
    "default-ae": ("default-ae", None),
    "default-vae": ("default-vae", None),
}
#: method name -> (detector of the contract, settings): hsad_scale.detectors.base, fitted and
#: scored on the scene in memory (deterministic: one run).
CONTRACT_METHODS: dict[str, tuple[str, dict | None]] = {
    "utd": ("utd", None),
    "rxd-utd": ("rxd-utd", None),
    "local-rx": ("local-rx", None),
    "local-rx-3-11": ("local-rx", {"inner": 3, "outer": 11}),
    "local-rx-localcov": ("local-rx", {"covariance": "local"}),
    "cluster-rx": ("cluster-rx", None),
}
for _name in CONTRACT_METHODS:
    METHODS[_name] = (None, None)
DEFAULT_METHODS = ["rx", "study-ae-mse", "study-ae-sam", "study-ae-resid-mahal", "study-vae-latent-mahal",
                   "default-ae", "default-vae"]


def scene_names(data: Path = DATA) -> list[str]:
    with open(data / "MANIFEST.tsv") as f:
        return [row["name"] for row in csv.DictReader(f, delimiter="\t")]


def load_scene(name: str, data: Path = DATA) -> tuple[np.ndarray, np.ndarray]:
    """``(cube (rows, cols, bands) float32, gt (rows, cols) bool)`` of a scene in MANIFEST.tsv."""
    with open(data / "MANIFEST.tsv") as f:
        row = next(r for r in csv.DictReader(f, delimiter="\t") if r["name"] == name)
    path = data / row["file"]
    try:
        from scipy.io import loadmat

        mat = loadmat(path)
        cube, gt = mat[row["cube_key"]], mat[row["gt_key"]]
    except NotImplementedError:  # MATLAB v7.3 = HDF5, axes reversed
        import h5py

        with h5py.File(path, "r") as f:
            cube = f[row["cube_key"]][()].transpose(2, 1, 0)
            gt = f[row["gt_key"]][()].T
    return np.ascontiguousarray(cube, dtype=np.float32), np.asarray(gt) > 0


def tpr_at_fpr(labels: np.ndarray, scores: np.ndarray, fpr_point: float = FPR_POINT) -> float:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(labels, scores)
    return float(np.interp(fpr_point, fpr, tpr))


def evaluate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import roc_auc_score

    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf, posinf=np.finfo(float).max)
    scores = np.maximum(scores, -np.finfo(float).max)
    return float(roc_auc_score(labels, scores)), tpr_at_fpr(labels, scores)


def run_scene(name: str, methods: list[str], seeds: int, data: Path = DATA, log=print) -> dict:
    """``{method: {"auc": [per seed], "tpr": [per seed], "seconds": float}}`` for one scene."""
    from hsad_scale.detectors.autoencoder import PRESETS, fit, score_in_memory
    from hsad_scale.detectors.rx import fit_rx, score_rx

    cube, gt = load_scene(name, data)
    pixels = cube.reshape(-1, cube.shape[-1])
    labels = gt.reshape(-1)
    out: dict[str, dict] = {m: {"auc": [], "tpr": [], "seconds": 0.0} for m in methods}
    if "rx" in methods:
        t0 = time.perf_counter()
        auc, tpr = evaluate(labels, score_rx(fit_rx(pixels), pixels))
        out["rx"].update(auc=[auc], tpr=[tpr], seconds=time.perf_counter() - t0)
    for m in (m for m in methods if m in CONTRACT_METHODS):
        from hsad_scale.detectors import base

        t0 = time.perf_counter()
        method, settings = CONTRACT_METHODS[m]
        scores = base.make(method, settings).fit(pixels).score_image(cube.transpose(2, 0, 1))
        auc, tpr = evaluate(labels, scores.reshape(-1))
        out[m].update(auc=[auc], tpr=[tpr], seconds=time.perf_counter() - t0)
    by_preset: dict[str, list[str]] = {}
    for m in methods:
        preset, _ = METHODS[m]
        if preset is not None:
            by_preset.setdefault(preset, []).append(m)
    for preset, group in by_preset.items():
        for seed in range(seeds):
            t0 = time.perf_counter()
            model = fit(pixels, PRESETS[preset].replace(seed=seed), device="cpu")
            fit_s = time.perf_counter() - t0
            for m in group:
                t1 = time.perf_counter()
                auc, tpr = evaluate(labels, score_in_memory(model, pixels, METHODS[m][1]))
                out[m]["auc"].append(auc)
                out[m]["tpr"].append(tpr)
                out[m]["seconds"] += (fit_s / len(group)) + time.perf_counter() - t1
    return out


def markdown_table(results: dict[str, dict], methods: list[str], seeds: int) -> str:
    head = "| scene | " + " | ".join(methods) + " |"
    lines = [head, "|---|" + "---|" * len(methods)]
    for scene, res in results.items():
        cells = []
        for m in methods:
            a = np.asarray(res[m]["auc"])
            cells.append(f"{a.mean():.3f}" if a.size == 1 else f"{a.mean():.3f} ±{a.std():.3f}")
        lines.append(f"| {scene} | " + " | ".join(cells) + " |")
    mean_auc = [np.mean([np.mean(r[m]["auc"]) for r in results.values()]) for m in methods]
    mean_tpr = [np.mean([np.mean(r[m]["tpr"]) for r in results.values()]) for m in methods]
    worst_std = [max(np.std(r[m]["auc"]) for r in results.values()) for m in methods]
    secs = [np.mean([r[m]["seconds"] / max(len(r[m]["auc"]), 1) for r in results.values()]) for m in methods]
    lines.append("| **mean AUC** | " + " | ".join(f"**{v:.3f}**" for v in mean_auc) + " |")
    lines.append(f"| TPR@FPR {FPR_POINT:g}, mean | " + " | ".join(f"{v:.3f}" for v in mean_tpr) + " |")
    lines.append("| worst per-scene seed std | " + " | ".join(f"{v:.3f}" for v in worst_std) + " |")
    lines.append("| seconds per run (1 thread) | " + " | ".join(f"{v:.2f}" for v in secs) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--scenes", nargs="*", default=None, help="scene names (default: all in MANIFEST.tsv)")
    ap.add_argument("--methods", nargs="*", default=DEFAULT_METHODS, choices=list(METHODS))
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "quality_table.md")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    scenes = args.scenes or scene_names(args.data)
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    for i, scene in enumerate(scenes, 1):
        ts = time.perf_counter()
        results[scene] = run_scene(scene, args.methods, args.seeds, args.data)
        summary = ", ".join(f"{m} {np.mean(results[scene][m]['auc']):.3f}" for m in args.methods)
        print(f"[{i}/{len(scenes)}] {scene} ({time.perf_counter() - ts:.1f}s): {summary}", flush=True)
    table = markdown_table(results, args.methods, args.seeds)
    header = (f"# Detection quality on the shared scenes\n\nROC AUC, mean ± std over {args.seeds} seeds "
              f"(RX is deterministic), TPR at FPR {FPR_POINT:g} by linear interpolation on the ROC curve. "
              f"Generated by `benchmarks/quality_table.py --seeds {args.seeds}` "
              f"(torch {torch.__version__}, {args.threads} CPU thread(s), {time.perf_counter() - t0:.0f} s).\n\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(header + table + "\n")
    print(table)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
