"""``report.html``: one self-contained page per run folder (``hsad detect``) or sweep folder,
readable offline in any browser: the metrics tables, the figures (PNG embedded as base64),
the settings, stage timings, the Dask cluster and library versions. No scripts, no links
to fetch.

- :func:`write_report` reads a run folder (``run.json``, ``metrics.json``, ``*.png``).
- :func:`write_sweep_report` reads a sweep folder (``results.csv``, ``*.png``, optional
  ``best.json``).
- :func:`latent_figure` / :func:`write_latent_plot` draw an AE/VAE's latent space with the
  ground-truth anomalies highlighted (``latent.png`` of a VAE run).
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
from pathlib import Path

import numpy as np

from hsad_scale.atomic import replace_file
from hsad_scale.names import CUBE, GROUND_TRUTH

REPORT = "report.html"
#: Figures shown first, in this order, with their captions; other PNGs follow by name.
FIGURES = {
    "map.png": "Score map (ground-truth anomalies outlined)",
    "roc.png": "ROC curves, linear and log false-positive axes",
    "latent.png": "Latent space, ground-truth anomalies highlighted",
    "objects.png": "Object level: targets detected and false-alarm objects against the PFA",
    "spectra.png": "Peak spectra of the top detections",
}
#: Rows of the detection table shown in the report (the highest peaks).
REPORT_DETECTIONS = 10
DETECTION_COLUMNS = ("id", "pixels", "area_m2", "row", "col", "lon", "lat", "peak_score", "mean_score")
METRIC_NAMES = {
    "auc": "AUC",
    "tpr_at_fpr_0.001": "TPR @ FPR 1e-3",
    "tpr_at_fpr_0.01": "TPR @ FPR 1e-2",
    "tpr_at_fpr_0.1": "TPR @ FPR 1e-1",
    "pauc_0.01": "pAUC (FPR ≤ 1e-2) / 1e-2",
    "n_anomaly": "anomaly pixels",
    "n_background": "background pixels",
}
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto; max-width: 1150px;
       padding: 0 1em; color: #222; line-height: 1.4; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.9em; display: block; overflow-x: auto; max-width: 100%; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td.k, th.k { text-align: left; }
tr.best td { background: #fff4cc; font-weight: 600; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 0.25em; }
details { margin: 0.5em 0; } summary { cursor: pointer; color: #345; }
"""


# --------------------------------------------------------------------------------------
# building blocks


def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    """Numbers for tables: floats to 4 significant decimals, the rest as text."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if not math.isfinite(v):
            return str(v)
        if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
            return f"{v:.3e}"
        return f"{v:.4f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _number(text: str):
    """A CSV cell as a number when it is one."""
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _table(header: list, rows: list[list], row_classes: list[str] | None = None, text_columns=(0,)) -> str:
    """An HTML table; columns in ``text_columns`` are left-aligned, the others (numbers) right-aligned."""
    def cell(tag, i, value):
        cls = ' class="k"' if i in text_columns else ""
        return f"<{tag}{cls}>{_esc(value)}</{tag}>"

    head = "".join(cell("th", i, h) for i, h in enumerate(header))
    body = []
    for r, row in enumerate(rows):
        cls = f' class="{row_classes[r]}"' if row_classes and row_classes[r] else ""
        body.append(f"<tr{cls}>{''.join(cell('td', i, _fmt(v)) for i, v in enumerate(row))}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _setting(value) -> str:
    """A setting's value as text: floats with up to 6 significant digits, None as 'none'."""
    if value is None:
        return "none"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return _fmt(value)


def _key_values(d: dict) -> str:
    return _table(["setting", "value"], [[k, _setting(v)] for k, v in d.items()], text_columns=(0, 1))


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img alt="{_esc(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_esc(caption)} (<code>{_esc(path.name)}</code>)</figcaption></figure>")


def _figures(folder: Path, captions: dict | None = None) -> str:
    captions = captions or FIGURES
    pngs = {p.name: p for p in folder.glob("*.png") if p.is_file()}
    ordered = [n for n in captions if n in pngs] + sorted(n for n in pngs if n not in captions)
    return "".join(_image(pngs[n], captions.get(n) or _caption(n)) for n in ordered)


def _caption(name: str) -> str:
    stem = Path(name).stem
    if stem.startswith("roc-"):  # a sweep's averaged ROC curves per swept parameter
        return f"Averaged ROC curves by {stem[4:]} (mean ± 1 sd over runs)"
    return stem.replace("_", " ").replace("-", " ")


def _read_json(path: Path):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _page(title: str, subtitle: str, sections: list[tuple[str, str]]) -> str:
    parts = [f"<h1>{_esc(title)}</h1>", f'<p class="sub">{_esc(subtitle)}</p>']
    parts += [f"<h2>{_esc(name)}</h2>{content}" for name, content in sections if content]
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_esc(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(parts)}"
            '<p class="sub">Written by hsad-scale; everything on this page is embedded (readable offline).</p>'
            "</body></html>\n")


# --------------------------------------------------------------------------------------
# run folder


def metric_rows(metrics: dict) -> tuple[list, list[list]]:
    """(header, rows) of the metrics table of a ``metrics.json``: the ``score`` map, each
    further metric's map, and the mean ± sd over repeated runs."""
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    header = ["map"] + [METRIC_NAMES.get(k, k) for k in keys]
    n_runs = len(metrics.get("runs") or [])
    rows = [[f"score{f' (ensemble of {n_runs} runs)' if n_runs > 1 else ''}"] + [metrics[k] for k in keys]]
    for name, values in (metrics.get("per_metric") or {}).items():
        rows.append([f"score_{name}"] + [values.get(k) for k in keys])
    summary = metrics.get("runs_summary")
    if summary:
        rows.append([f"single runs: mean ± sd ({n_runs})"] +
                    [f"{_fmt(summary['mean'][k])} ± {_fmt(summary['std'][k])}" if k in summary["mean"]
                     else _fmt(summary["mean"].get(k)) for k in keys])
    return header, rows


def _run_sections(run: dict, metrics: dict | None, folder: Path) -> list[tuple[str, str]]:
    sections = []
    if metrics:
        header, rows = metric_rows(metrics)
        content = _table(header, rows)
        if metrics.get("runs"):
            run_keys = [k for k, v in metrics["runs"][0].items() if isinstance(v, (int, float))]
            content += "<details><summary>each run</summary>" + _table(
                ["run"] + [METRIC_NAMES.get(k, k) for k in run_keys],
                [[f"run {i + 1}"] + [r.get(k) for k in run_keys] for i, r in enumerate(metrics["runs"])]) + "</details>"
        sections.append(("Metrics", content))
    elif (run.get("skipped") or {}).get("metrics"):
        sections.append(("Metrics", f"<p>No metrics: {html.escape(str(run['skipped']['metrics']))}.</p>"))
    else:
        sections.append(("Metrics", "<p>No ground truth: no metrics.</p>"))
    if run.get("skipped"):
        sections.append(("Skipped", "<p>This run finished, but these side products could not be made:</p>"
                         + _key_values(run["skipped"])))
    sections.append(("Detections", _detections_section(run.get("detections"), folder / "detections")))
    sections.append(("Figures", _figures(folder)))
    settings = {"method": run.get("method"), "source": run.get("source"), "cube": run.get("cube"),
                "shape": run.get("shape"), "chunks": run.get("chunks")}
    options = run.get("options") or {}
    settings.update({k: v for k, v in options.items() if k != "method" and v not in (None, (), [], "")})
    if run.get("training_pixels") is not None:
        settings["training pixels"] = run["training_pixels"]
    content = _key_values({k: v for k, v in settings.items() if v is not None})
    if run.get("config"):
        content += "<details open><summary>detector settings</summary>" + _key_values(run["config"]) + "</details>"
    if run.get("background"):
        content += "<details><summary>background statistics</summary>" + _key_values(run["background"]) + "</details>"
    training = run.get("training") or []
    if training:
        keys = ["epochs_run", "best_epoch", "steps", "train_pixels", "device", "seconds"]
        rows = [[f"run {i + 1}"] + [h.get(k) for k in keys] + [(h.get("loss") or [None])[-1]] for i, h in enumerate(training)]
        content += "<details><summary>training</summary>" + _table(["run", *keys, "final loss"], rows) + "</details>"
    sections.append(("Settings", content))
    seconds = run.get("stage_seconds") or {}
    if seconds:
        rows = [[k, v] for k, v in seconds.items()] + [["total", float(sum(seconds.values()))]]
        sections.append(("Stage timings (s)", _table(["stage", "seconds"], rows)))
    dask_info = run.get("dask") or {}
    if dask_info:
        content = _key_values({k: v for k, v in dask_info.items() if k != "workers"})
        workers = dask_info.get("workers") or []
        if workers:
            content += _table(["worker", "address", "threads", "resources"],
                              [[w.get("name"), w.get("address"), w.get("nthreads"), _fmt(w.get("resources") or {})]
                               for w in workers], text_columns=(0, 1, 3))
        sections.append(("Dask cluster", content))
    if run.get("versions"):
        sections.append(("Library versions", _key_values(run["versions"])))
    return sections


def _detections_section(record: dict | None, folder: Path) -> str:
    """Thresholds (both rules, the one used first), object-level figures at the chosen PFA and
    the top rows of ``detections/detections.csv``."""
    if not record:
        return ""
    expected = record["expected_pixels"]
    rows = [[record["rule"] + " (used)", record["threshold"], record["flagged_pixels"], expected]]
    other = record.get("chi2") if record["rule"] == "empirical" else record.get("empirical")
    if other:
        rows.append(["chi2" if record["rule"] == "empirical" else "empirical", other["threshold"],
                     other["flagged_pixels"], expected])
    content = (f"<p>{record['objects']} detection(s) at PFA {record['pfa']:g} over {record['valid_pixels']} valid "
               f"pixels (8-connected objects, ranked by peak score).</p>"
               + _table(["threshold rule", "threshold", "pixels flagged", "PFA x N"], rows))
    found = record.get("object_evaluation")
    if found:
        at = found["at_pfa"]
        content += _table(["PFA", "targets detected", "targets", "detections", "false-alarm objects",
                           "false alarms / km²"],
                          [[at["pfa"], at["targets_detected"], at["targets"], at["objects"], at["false_alarm_objects"],
                            at["false_alarms_per_km2"]]])
    table = folder / "detections.csv"
    if table.is_file():
        header, body = _read_csv(table)
        keep = [header.index(c) for c in DETECTION_COLUMNS if c in header]
        content += _table([header[i] for i in keep], [[r[i] for i in keep] for r in body[:REPORT_DETECTIONS]],
                          text_columns=())
        if len(body) > REPORT_DETECTIONS:
            content += f"<p>Top {REPORT_DETECTIONS} of {len(body)}: all in <code>detections/</code>.</p>"
    return content


def write_report(run_dir) -> Path:
    """Write ``run_dir/report.html`` from the run folder's ``run.json``, ``metrics.json`` and
    ``*.png`` (each optional); returns its path."""
    folder = Path(run_dir)
    run = _read_json(folder / "run.json") or {}
    metrics = _read_json(folder / "metrics.json")
    if metrics is None and isinstance(run.get("metrics"), dict):
        metrics = run["metrics"]
    method = str(run.get("method") or "detect").upper()
    source = Path(str(run.get("source") or folder.name)).name
    title = f"hsad detect: {method} on {source}"
    shape = run.get("shape") or {}
    dims = (f"{shape['y']} x {shape['x']} pixels, {shape.get('band', '?')} bands" if {"y", "x"} <= set(shape) else "")
    headline = ""
    if metrics and "auc" in metrics:
        headline = f"AUC {metrics['auc']:.4f}, TPR @ FPR 1e-2 {metrics.get('tpr_at_fpr_0.01', float('nan')):.3f}. "
    subtitle = f"{headline}{dims}{'; ' if dims else ''}finished {run.get('finished', 'unknown')}; folder {folder.resolve()}"
    return replace_file(folder / REPORT, _page(title, subtitle, _run_sections(run, metrics, folder)))


# --------------------------------------------------------------------------------------
# sweep folder


def _read_csv(path: Path) -> tuple[list, list[list]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = [[_number(c) for c in row] for row in reader if row]
    return header, rows


#: Columns that identify a setting, tried in this order to find the best one's row.
ID_COLUMNS = ("setting_id", "setting", "name", "id")


def _is_best(header: list, row: list, best: dict | None) -> bool:
    """Whether ``row`` is the setting ``best.json`` names: by the first identifying column
    (:data:`ID_COLUMNS`) both have; else when every column it shares with ``best.json``'s
    scalars and its ``values``/``settings``/``params`` mappings holds the same value."""
    if not best:
        return False
    cells = dict(zip(header, row))
    for key in ID_COLUMNS:
        if key in cells and key in best and not isinstance(best[key], (dict, list)):
            return _fmt(_number(str(best[key]))) == _fmt(cells[key])
    flat = {k: v for k, v in best.items() if not isinstance(v, (dict, list))}
    for key in ("values", "settings", "params"):
        if isinstance(best.get(key), dict):
            flat.update(best[key])
    shared = [h for h in cells if h in flat and not isinstance(flat[h], (dict, list))]
    return bool(shared) and all(_fmt(_number(str(flat[h]))) == _fmt(cells[h]) for h in shared)


def _csv_table(path: Path, best: dict | None) -> tuple[str, int]:
    header, rows = _read_csv(path)
    classes = ["best" if _is_best(header, r, best) else "" for r in rows]
    text = tuple(i for i in range(len(header)) if any(isinstance(r[i], str) and r[i] != "" for r in rows if i < len(r)))
    return _table(header, rows, classes, text_columns=text or (0,)), len(rows)


def _json_sections(payload: dict) -> str:
    """Scalars as a settings table; each mapping as a folded table; each list of mappings
    (e.g. a ranking) as a table of its own."""
    scalars = {k: v for k, v in payload.items() if not isinstance(v, (dict, list))}
    lists = {k: v for k, v in payload.items() if isinstance(v, list)}
    content = _key_values({**scalars, **{k: v for k, v in lists.items() if not all(isinstance(i, dict) for i in v)}})
    for key, value in payload.items():
        if isinstance(value, dict):
            content += f"<details><summary>{_esc(key)}</summary>{_key_values(value)}</details>"
        elif isinstance(value, list) and value and all(isinstance(i, dict) for i in value):
            header = list(dict.fromkeys(k for item in value for k in item))
            rows = [[item.get(h) for h in header] for item in value]
            text = tuple(i for i, h in enumerate(header) if any(isinstance(r[i], str) for r in rows))
            content += f"<details open><summary>{_esc(key)}</summary>{_table(header, rows, text_columns=text or (0,))}</details>"
    return content


def write_sweep_report(out_dir) -> Path:
    """Write ``out_dir/report.html`` for a sweep folder: ``best.json`` (the best setting and
    the ranking), ``summary.csv`` (per setting) and ``results.csv`` (per trial) as tables with
    the best setting's rows highlighted, the folder's ``*.png`` (averaged ROC curves per swept
    parameter) and ``sweep.json``. Every file is optional."""
    folder = Path(out_dir)
    sections = []
    best = _read_json(folder / "best.json")
    if isinstance(best, dict):
        sections.append(("Best setting", _json_sections(best)))
    elif (folder / "best.json").is_file():
        sections.append(("Best setting", "<p>No best setting: every trial failed (see the error column).</p>"))
    n_rows = 0
    if (folder / "summary.csv").is_file():
        table, _ = _csv_table(folder / "summary.csv", best if isinstance(best, dict) else None)
        sections.append(("Summary per setting (summary.csv)", table))
    sections.append(("Figures", _figures(folder, {})))
    if (folder / "results.csv").is_file():
        table, n_rows = _csv_table(folder / "results.csv", best if isinstance(best, dict) else None)
        folded = (folder / "summary.csv").is_file()
        sections.append(("Results (results.csv)", f"<details><summary>{n_rows} rows</summary>{table}</details>"
                         if folded else table))
    else:
        sections.append(("Results", "<p>No results.csv in this folder.</p>"))
    sweep = _read_json(folder / "sweep.json")
    if isinstance(sweep, dict):
        sections.append(("Sweep (sweep.json)", _json_sections(sweep)))
    subtitle = f"{n_rows} result row(s); folder {folder.resolve()}"
    if isinstance(best, dict) and "mean" in best:
        subtitle = (f"best {best.get('criterion', 'score')} {_fmt(best['mean'])} ± {_fmt(best.get('std'))}: "
                    f"{best.get('setting', best.get('setting_id', ''))}. " + subtitle)
    return replace_file(folder / REPORT, _page(f"hsad sweep: {folder.name}", subtitle, sections))


# --------------------------------------------------------------------------------------
# latent space of a learned detector


def latent_pixels(cube_ds, sample: np.ndarray | None = None, max_points: int = 20000,
                  max_anomalies: int = 5000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(n, B)`` and labels ``(n,)`` (True: ground-truth anomaly) to show in a latent
    plot: every pixel of a scene of at most ``max_points`` pixels; else the background from
    ``sample`` (or ``max_points`` random pixels) plus the ground-truth anomalies (at most
    ``max_anomalies``, read by position)."""
    import xarray as xr

    cube = cube_ds[CUBE]
    truth = cube_ds[GROUND_TRUTH] if GROUND_TRUTH in cube_ds else None
    n_bands, ny, nx = cube.shape
    if ny * nx <= max_points:
        pixels = np.asarray(cube.values, dtype=np.float32).reshape(n_bands, -1).T
        labels = np.zeros(ny * nx, bool) if truth is None else (np.asarray(truth.values).ravel() > 0)
        return pixels, labels
    rng = np.random.default_rng(seed)

    def gather(flat_idx):
        rows, cols = np.divmod(np.sort(flat_idx), nx)
        picked = cube.isel(y=xr.DataArray(rows, dims="pixel"), x=xr.DataArray(cols, dims="pixel"))
        return np.asarray(picked.transpose("pixel", "band").values, dtype=np.float32)

    if sample is not None:
        sample = np.asarray(sample, dtype=np.float32)
        background = sample[rng.choice(sample.shape[0], min(max_points, sample.shape[0]), replace=False)]
    else:
        background = gather(rng.choice(ny * nx, max_points, replace=False))
    parts, labels = [background], [np.zeros(background.shape[0], bool)]
    if truth is not None:
        anomalies = np.flatnonzero(np.asarray(truth.values).ravel() > 0)
        if anomalies.size > max_anomalies:
            anomalies = rng.choice(anomalies, max_anomalies, replace=False)
        if anomalies.size:
            parts.append(gather(anomalies))
            labels.append(np.ones(anomalies.size, bool))
    return np.concatenate(parts), np.concatenate(labels)


def latent_figure(model, cube_ds, sample: np.ndarray | None = None, max_points: int = 20000, seed: int = 0,
                  title: str | None = None):
    """Figure of a trained AE/VAE's latent space (the VAE's latent means; the AE's codes;
    members concatenated), 2-D or its first two principal axes, over the pixels of
    :func:`latent_pixels`, ground-truth anomalies highlighted."""
    from hsad_scale import plots

    pixels, labels = latent_pixels(cube_ds, sample, max_points=max_points, seed=seed)
    latent = model.score(pixels, "latent-mahal")
    kind = model.config.kind.upper()
    what = "latent means" if kind == "VAE" else "latent codes"
    return plots.plot_latent(latent, labels, title=title or f"{kind} {what} (latent {latent.shape[1]})",
                             max_points=max_points, seed=seed)


def write_latent_plot(run_dir, model, cube_ds, sample: np.ndarray | None = None) -> Path:
    """``run_dir/latent.png`` of :func:`latent_figure`."""
    from hsad_scale import plots

    path = Path(run_dir) / "latent.png"
    plots.save(latent_figure(model, cube_ds, sample), path)
    return path
