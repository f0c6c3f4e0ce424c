"""Sweeps of any registered detector's settings (the study's search), without Prefect.

A grid file (YAML) names the method, the fixed settings and the swept lists::

    method: ae              # any registered method: rx, local-rx, utd, rxd-utd, cluster-rx, ae, vae
    preset: default-ae      # optional, AE/VAE only (default: default-<method>)
    fixed: {latent: 4}      # optional: settings shared by every trial
    grid:                   # the swept settings: every combination is one setting
      epochs: [1, 5]
      layers: [2, 4]
    repeats: 3              # optional (the command line's --repeats wins)
    criterion: auc          # optional: how the best setting is chosen (higher is better)

or, for a statistical detector, e.g. ``method: local-rx`` with ``grid: {outer: [11, 21]}``.
Every key of ``fixed`` and ``grid`` is a field of the method's settings object (``AEConfig``
/ ``VAEConfig``: epochs, layers, batch_size, lr, latent, metric, beta...; ``LocalRXSettings``:
inner, outer, covariance, components; ``ClusterRXSettings``: clusters, sample_pixels, seed...;
see ``docs/detectors.md``). A method without settings (rx, utd, rxd-utd) takes no ``grid``:
one setting, its defaults. Each (setting, repeat) is one trial: the detector is fitted (the
AE/VAE trained with seed ``seed + repeat``; a detector with a ``seed`` setting likewise; the
others are deterministic, so their repeats agree) on the scene's pixels through the one
fitting path (:mod:`hsad_scale.fitting`, as ``hsad detect`` does), its score map written to a
temporary store and counted against the ground truth tile by tile
(:func:`hsad_scale.roc_tiles.map_roc_counts`, as ``hsad detect`` evaluates).
:func:`run_trial` is a plain function that returns a row of the results table; the flow in
``flows/sweep.py`` (or :func:`run_sweep`) runs the trials as tasks on the workers, then
:func:`write_outputs` writes ``results.csv``/``results.parquet`` (one row per setting and
repeat), ``curves.npz``, averaged-ROC plots per swept parameter (``roc-<param>.png``: mean
curve and a band of one standard deviation) and ``best.json``.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from hsad_scale import cube as cubes, evaluate, fitting, learned, outputs, plots, report
from hsad_scale.detectors import autoencoder as ae, base
from hsad_scale.errors import InputError
from hsad_scale.names import METRIC_KEYS as CRITERIA

METRIC_COLUMNS = CRITERIA
GRID_KEYS = ("method", "preset", "fixed", "grid", "repeats", "criterion")


@dataclass(frozen=True)
class Setting:
    """One point of the grid: ``values`` of the swept settings, ``id`` ``s0``, ``s1``..."""

    id: str
    values: dict

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={_text(v)}" for k, v in self.values.items()) or "defaults"


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated grid file."""

    method: str
    preset: str | None
    fixed: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    repeats: int = 1
    criterion: str = "auc"
    source: str | None = None

    @property
    def parameters(self) -> list[str]:
        return list(self.grid)

    def settings(self) -> list[Setting]:
        """Every combination of the swept values, in file order (last key varies fastest); one
        setting (the defaults and ``fixed``) when nothing is swept."""
        combos = itertools.product(*self.grid.values())
        width = len(str(max(math.prod(len(v) for v in self.grid.values()) - 1, 0)))
        return [Setting(f"s{i:0{width}d}", dict(zip(self.grid, combo))) for i, combo in enumerate(combos)]

    def trials(self) -> list[tuple[Setting, int]]:
        """(setting, repeat) pairs: every setting, each repeated ``repeats`` times."""
        return [(s, r) for s in self.settings() for r in range(self.repeats)]

    def config(self, setting: Setting, repeat: int = 0) -> base.Settings:
        """The detector's settings object for one trial: the AE/VAE preset (else the
        method's defaults), then ``fixed``, then the setting's values; ``seed + repeat``
        where the settings have a seed."""
        values = {**self.fixed, **setting.values}
        try:
            if self.preset is not None:
                config = learned.resolve_config(self.method, self.preset).replace(**values)
            else:
                config = base.detector_class(self.method).settings_type.from_dict(values)
            if repeat and "seed" in config.field_names():
                config = config.from_dict({**config.to_dict(), "seed": config.seed + repeat})
            return config
        except (TypeError, ValueError) as exc:
            where = f"grid setting {setting.label}" if setting.values else "fixed settings"
            raise InputError(f"{self._name()}: {where}: {exc}") from None

    def to_dict(self) -> dict:
        return {"method": self.method, "preset": self.preset, "fixed": self.fixed, "grid": self.grid,
                "repeats": self.repeats, "criterion": self.criterion, "source": self.source}

    def _name(self) -> str:
        return f"grid file {self.source}" if self.source else "grid"


def _text(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() \
        if isinstance(value, (list, dict)) else str(value)


def parse_grid(data, source: str | None = None, repeats: int | None = None,
               criterion: str | None = None) -> SweepSpec:
    """Validate a grid (the mapping a grid file holds) and every setting it expands to;
    ``repeats``/``criterion`` override the file's. InputError names what is wrong."""
    name = f"grid file {source}" if source else "grid"
    if not isinstance(data, dict):
        raise InputError(f"{name} must hold a mapping with method, fixed and grid")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise InputError(f"{name}: unknown key(s) {', '.join(map(str, unknown))}; valid: {', '.join(GRID_KEYS)}")
    method = data.get("method")
    if method not in base.methods():
        raise InputError(f"{name}: method must be one of {', '.join(base.methods())}, got {method!r}")
    preset, fields = _preset_and_fields(name, method, data.get("preset"))
    fixed = data.get("fixed") or {}
    grid = data.get("grid")
    if grid is None and not fields:  # a method without settings: one setting, nothing swept
        grid = {}
    if not isinstance(fixed, dict):
        raise InputError(f"{name}: fixed must be a mapping of settings, e.g. fixed: {{latent: 4}}")
    if not isinstance(grid, dict) or (not grid and fields):
        raise InputError(f"{name}: grid must map at least one setting to a list of values, e.g. grid: {{epochs: [1, 5]}}")
    for where, keys in (("fixed", fixed), ("grid", grid)):
        bad = sorted(str(k) for k in keys if k not in fields)
        if bad:
            raise InputError(f"{name}: unknown {method} setting(s) in {where}: {', '.join(bad)}; "
                             f"valid: {', '.join(sorted(fields)) or f'none ({method} has no settings)'}")
    both = sorted(set(fixed) & set(grid))
    if both:
        raise InputError(f"{name}: {', '.join(both)} both fixed and swept; keep each setting in one place")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise InputError(f"{name}: grid.{key} must be a non-empty list of values, got {values!r}")
        if len({_text(v) for v in values}) != len(values):
            raise InputError(f"{name}: grid.{key} lists a value twice: {values!r}")
    repeats = data.get("repeats", 1) if repeats is None else repeats
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise InputError(f"{name}: repeats must be a positive integer, got {repeats!r}")
    criterion = criterion or data.get("criterion") or "auc"
    if criterion not in CRITERIA:
        raise InputError(f"{name}: criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    spec = SweepSpec(method, preset, dict(fixed), {k: list(v) for k, v in grid.items()}, repeats, criterion,
                     source)
    for setting in spec.settings():  # every combination must make valid settings
        spec.config(setting)
    return spec


def _preset_and_fields(name: str, method: str, preset: str | None) -> tuple[str | None, set]:
    """The AE/VAE preset (None for the other methods, which have none) and the names of the
    method's settings; InputError for an unknown preset or a preset given to another method."""
    cls = base.detector_class(method)
    if not cls.needs_torch:
        if preset:
            raise InputError(f"{name}: {method} has no presets (got {preset!r}); set its settings in fixed/grid")
        return None, set(cls.settings_type.field_names())
    preset = preset or learned.DEFAULT_PRESET[method]
    if preset not in ae.PRESETS or ae.PRESETS[preset].kind != method:
        valid = sorted(k for k, v in ae.PRESETS.items() if v.kind == method)
        raise InputError(f"{name}: unknown {method} preset {preset!r}; valid: {', '.join(valid)}")
    return preset, set(ae.PRESETS[preset].field_names())


def load_grid(path, repeats: int | None = None, criterion: str | None = None) -> SweepSpec:
    """Read and validate a grid file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"grid file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InputError(f"grid file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    return parse_grid(data, str(path), repeats, criterion)


def check_cube(cube_path) -> None:
    """A sweep needs a cube store with ground truth."""
    ds = cubes.open_cube(cube_path)
    if cubes.GROUND_TRUTH not in ds:
        raise InputError(f"{cube_path} has no ground truth: a sweep scores settings against it "
                         "(ingest the scene with --gt)")


# --------------------------------------------------------------------------------------
# one trial


def run_trial(cube_path, spec: SweepSpec, setting: Setting, repeat: int, device: str = "auto") -> dict:
    """Fit and score one (setting, repeat) on the whole scene and return its result row:
    ``setting``, ``repeat``, each swept value, AUC, TPR at low FPR, partial AUC, fitting time
    (``train_seconds``: the AE/VAE's training, the others' statistics)... and ``roc_tpr``
    (TPR on :data:`evaluate.FPR_GRID`, for averaged curves). The score map is written tile
    by tile to a temporary store and counted from there (:func:`trial_figures`): memory
    follows the tiles, not the scene.

    Runs in this process (on a Dask worker when the sweep submits it there), with Dask's
    synchronous scheduler for the reductions over the cube: one trial, one core."""
    import dask

    start = time.perf_counter()
    config = spec.config(setting, repeat)
    torch_method = base.detector_class(spec.method).needs_torch
    with dask.config.set(scheduler="synchronous"):
        ds = cubes.open_cube(cube_path)
        if cubes.GROUND_TRUTH not in ds:
            raise InputError(f"{cube_path} has no ground truth")
        cube = ds[cubes.CUBE]
        det = fitting.fit_detector(cube, spec.method, config, client=None, repeats=1, device=device)
        fit_seconds = time.perf_counter() - start
        scores, _ = fitting.score_detector(cube, det, metrics=(config.metric,) if torch_method else None)
        score = scores["score_runs"].isel(run=0) if "score_runs" in scores else scores["score"]
        figures, (fpr, tpr) = trial_figures(score, ds[cubes.GROUND_TRUTH])
    history = det.models[0].history if torch_method else {"seconds": fit_seconds, "device": "cpu"}
    return {
        **_row_head(spec, setting, repeat, getattr(config, "seed", None)),
        **{k: figures[k] for k in METRIC_COLUMNS},
        "n_anomaly": figures["n_anomaly"], "n_background": figures["n_background"],
        "train_seconds": round(float(history.get("seconds", float("nan"))), 3),
        "trial_seconds": round(time.perf_counter() - start, 3),
        "epochs_run": history.get("epochs_run"),
        "steps": history.get("steps"),
        "device": history.get("device"),
        "worker": det.workers[0] if torch_method else _worker_name(),
        "error": None,
        "roc_tpr": np.interp(evaluate.FPR_GRID, fpr, tpr).astype(np.float32),
    }


def trial_figures(score, truth) -> tuple[dict, tuple[np.ndarray, np.ndarray]]:
    """:func:`evaluate.metrics_from_counts` of a lazy score map ``(y, x)`` against the ground
    truth ``(y, x)``: the map is computed once, tile by tile, into a temporary Zarr store
    (on the current Dask scheduler), then counted from it as ``hsad detect`` counts its
    written scores (:func:`hsad_scale.roc_tiles.map_roc_counts`: tile by tile above
    :data:`~hsad_scale.roc_tiles.IN_MEMORY_MAX_PIXELS`, never a whole map in memory)."""
    import tempfile

    import xarray as xr

    from hsad_scale.roc_tiles import map_roc_counts

    with tempfile.TemporaryDirectory(prefix="hsad-trial-") as tmp:
        store = Path(tmp) / "score.zarr"
        outputs.write_scores(xr.Dataset({"score": score}), store)
        written = xr.open_zarr(store, consolidated=True)["score"]
        return evaluate.metrics_from_counts(map_roc_counts(written, truth))


def _worker_name():
    """The name of the Dask worker running this code (None outside a worker)."""
    from distributed import get_worker

    try:
        return get_worker().name
    except ValueError:
        return None


def failed_row(spec: SweepSpec, setting: Setting, repeat: int, error: BaseException | str) -> dict:
    """The row of a trial that raised: its figures NaN, ``error`` the message."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return {**_row_head(spec, setting, repeat, None), **{k: float("nan") for k in METRIC_COLUMNS},
            "n_anomaly": None, "n_background": None,
            "train_seconds": float("nan"), "trial_seconds": float("nan"), "epochs_run": None, "steps": None,
            "device": None, "worker": None, "error": message.splitlines()[0] if message else type(error).__name__,
            "roc_tpr": None}


def _row_head(spec: SweepSpec, setting: Setting, repeat: int, seed) -> dict:
    return {"setting_id": setting.id, "setting": setting.label, **setting.values, "repeat": repeat, "seed": seed,
            "method": spec.method}


def trial_key(spec: SweepSpec, setting: Setting, repeat: int, token: str) -> str:
    """The Dask key of a trial (readable on the dashboard's task stream)."""
    return f"trial-{spec.method}-{setting.id}-r{repeat}-{token}"


def submit_trial(client, cube_path, spec: SweepSpec, setting: Setting, repeat: int, device: str = "auto"):
    """Submit :func:`run_trial` to the cluster as one task (an AE/VAE trial on a GPU worker
    when the cluster has one); returns its future."""
    import dask

    token = dask.base.tokenize(str(cube_path), spec.to_dict(), setting.id, repeat, device)
    resources = learned.gpu_resources(client) if base.detector_class(spec.method).needs_torch else None
    return client.submit(run_trial, str(cube_path), spec, setting, repeat, device,
                         key=trial_key(spec, setting, repeat, token[:10]), resources=resources, pure=False)


def run_trial_on(client, cube_path, spec: SweepSpec, setting: Setting, repeat: int, device: str = "auto") -> dict:
    """One trial as a task on the cluster (in this process without a client); its row, or
    :func:`failed_row` when it raised."""
    try:
        if client is None:
            return run_trial(cube_path, spec, setting, repeat, device)
        return submit_trial(client, cube_path, spec, setting, repeat, device).result()
    except Exception as exc:  # a trial's failure is a row of the table, the others go on
        return failed_row(spec, setting, repeat, exc)


# --------------------------------------------------------------------------------------
# results


def results_table(rows: list[dict]):
    """The results as a pandas DataFrame (one row per setting and repeat; no curves)."""
    import pandas as pd

    table = pd.DataFrame([{k: v for k, v in r.items() if k != "roc_tpr"} for r in rows])
    return table.sort_values(["setting_id", "repeat"], kind="stable").reset_index(drop=True)


def summary_table(rows: list[dict], spec: SweepSpec):
    """Per setting: mean and standard deviation of each figure over its repeats, and the
    count of repeats that ran, best first by the criterion."""
    import pandas as pd

    table = results_table(rows)
    ok = table[table["error"].isna()]
    parts = []
    for sid, group in table.groupby("setting_id", sort=True):
        good = ok[ok["setting_id"] == sid]
        entry = {"setting_id": sid, "setting": group["setting"].iloc[0],
                 **{p: group[p].iloc[0] for p in spec.parameters}, "runs": len(good), "failed": len(group) - len(good)}
        for col in (*METRIC_COLUMNS, "train_seconds"):
            values = good[col].astype(float)
            entry[f"{col}_mean"] = float(values.mean()) if len(values) else float("nan")
            entry[f"{col}_std"] = float(values.std(ddof=0)) if len(values) else float("nan")
        parts.append(entry)
    summary = pd.DataFrame(parts)
    key = f"{spec.criterion}_mean"
    return summary.sort_values([key, f"{spec.criterion}_std"], ascending=[False, True], na_position="last",
                               kind="stable").reset_index(drop=True)


def best_setting(rows: list[dict], spec: SweepSpec) -> dict | None:
    """The setting with the highest mean criterion over its repeats (ties: the smaller
    standard deviation, then the first setting), with its full detector settings; None
    when every trial failed."""
    summary = summary_table(rows, spec)
    usable = summary[summary["runs"] > 0]
    if usable.empty:  # every trial failed
        return None
    top = usable.iloc[0]
    setting = next(s for s in spec.settings() if s.id == top["setting_id"])
    return {"criterion": spec.criterion, "setting_id": setting.id, "setting": setting.label, "values": setting.values,
            "mean": float(top[f"{spec.criterion}_mean"]), "std": float(top[f"{spec.criterion}_std"]),
            "runs": int(top["runs"]), "config": spec.config(setting).to_dict(),
            "ranking": [{"setting_id": r["setting_id"], "setting": r["setting"],
                         "mean": r[f"{spec.criterion}_mean"], "std": r[f"{spec.criterion}_std"], "runs": int(r["runs"])}
                        for _, r in summary.iterrows()]}


def averaged_rocs(rows: list[dict], parameter: str) -> dict:
    """Per value of ``parameter``: the averaged ROC (mean and standard deviation of TPR on a
    common FPR grid) over every trial with that value, with its AUC mean and std."""
    out = {}
    values = []
    for r in rows:
        if r.get("roc_tpr") is not None and _text(r[parameter]) not in values:
            values.append(_text(r[parameter]))
    for value in values:
        chosen = [r for r in rows if r.get("roc_tpr") is not None and _text(r[parameter]) == value]
        curve = evaluate.average_roc([(evaluate.FPR_GRID, np.asarray(r["roc_tpr"], np.float64)) for r in chosen])
        aucs = np.array([r["auc"] for r in chosen], dtype=np.float64)
        out[value] = {**curve, "auc_mean": float(aucs.mean()), "auc_std": float(aucs.std()), "runs": len(chosen)}
    return out


def plot_parameter(rows: list[dict], spec: SweepSpec, parameter: str):
    """Figure of the averaged ROC of each value of a swept parameter (mean ± 1 sd band)."""
    curves = {}
    # the common grid reaches below one background pixel's FPR: start the curves there
    resolution = 1.0 / max(int(r["n_background"]) for r in rows)
    keep = (evaluate.FPR_GRID == 0) | (evaluate.FPR_GRID >= resolution)
    for value, c in averaged_rocs(rows, parameter).items():
        label = f"{parameter}={value}: AUC {c['auc_mean']:.4f} ± {c['auc_std']:.4f} ({c['runs']} runs)"
        curves[label] = {k: c[k][keep] for k in ("fpr", "tpr_mean", "tpr_std")}
    others = [p for p in spec.parameters if p != parameter]
    over = f", averaged over repeats{' and ' + ', '.join(others) if others else ''}"
    return plots.plot_roc(curves, title=f"{spec.method.upper()} sweep: ROC by {parameter}{over}")


def write_outputs(out_dir, spec: SweepSpec, rows: list[dict], extra: dict | None = None) -> dict:
    """Write the sweep's results into the existing folder ``out_dir``: ``results.csv`` and
    ``results.parquet`` (one row per setting and repeat), ``summary.csv`` (per setting),
    ``curves.npz`` (TPR of every trial on a common FPR grid), ``roc-<param>.png`` per swept
    parameter, ``best.json`` and ``sweep.json`` (the grid and ``extra``). Returns the best
    setting (None when every trial failed)."""
    out_dir = Path(out_dir)
    table = results_table(rows)
    table.to_csv(out_dir / "results.csv", index=False)
    _parquet_safe(table).to_parquet(out_dir / "results.parquet", index=False)
    summary_table(rows, spec).to_csv(out_dir / "summary.csv", index=False)
    done = [r for r in rows if r.get("roc_tpr") is not None]
    np.savez_compressed(out_dir / "curves.npz", fpr=evaluate.FPR_GRID,
                        tpr=np.stack([r["roc_tpr"] for r in done]) if done else np.zeros((0, evaluate.FPR_GRID.size)),
                        setting_id=np.array([r["setting_id"] for r in done], dtype=str),
                        repeat=np.array([r["repeat"] for r in done], dtype=np.int64))
    figures = []
    if done:
        for parameter in spec.parameters:
            name = f"roc-{_file_part(parameter)}.png"
            plots.save(plot_parameter(done, spec, parameter), out_dir / name)
            figures.append(name)
    best = best_setting(rows, spec)
    outputs.write_json(out_dir / "best.json", best)
    outputs.write_json(out_dir / "sweep.json", {"grid": spec.to_dict(), "trials": len(rows),
                                                "failed": int(table["error"].notna().sum()), "figures": figures,
                                                **(extra or {}), "versions": outputs.versions(),
                                                "finished": outputs.now()})
    report.write_sweep_report(out_dir)
    return best


def _parquet_safe(table):
    """Swept values of mixed or list types as text (Parquet columns have one type)."""
    table = table.copy()
    for col in table.columns:
        if table[col].dtype == object and col not in ("setting_id", "setting", "method", "device", "worker", "error"):
            kinds = {type(v) for v in table[col] if v is not None}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                table[col] = [None if v is None else _text(v) for v in table[col]]
    return table


def _file_part(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


# --------------------------------------------------------------------------------------
# the whole sweep without Prefect


def run_sweep(src, spec: SweepSpec, out, client=None, device: str = "auto", overwrite: bool = False) -> dict:
    """Every trial of ``spec`` on ``src`` (a cube store, or a scene file ingested into
    ``out/cube.zarr``), as cluster tasks when ``client`` is given, results written whole into
    ``out``. Returns the best setting. The ``sweep`` flow does the same with one Prefect task
    per trial."""
    from hsad_scale import cluster
    from hsad_scale.atomic import atomic_path
    from hsad_scale.locations import absolute
    from hsad_scale.pipeline import prepare_cube

    src, out = absolute(src), absolute(out)  # the trials run in other working directories
    with atomic_path(out, overwrite) as tmp:
        Path(tmp).mkdir()
        cube_path = prepare_cube(src, Path(tmp))
        check_cube(cube_path)
        rows = [run_trial_on(client, cube_path, spec, s, r, device) for s, r in spec.trials()] if client is None \
            else gather_trials(client, cube_path, spec, device)
        best = write_outputs(tmp, spec, rows, {"source": str(src), "dask": cluster.describe(client)})
    return best


def gather_trials(client, cube_path, spec: SweepSpec, device: str = "auto") -> list[dict]:
    """Every trial submitted at once to the cluster; their rows in order."""
    futures = [(s, r, submit_trial(client, cube_path, spec, s, r, device)) for s, r in spec.trials()]
    rows = []
    for s, r, future in futures:
        try:
            rows.append(future.result())
        except Exception as exc:
            rows.append(failed_row(spec, s, r, exc))
    return rows


def describe_best(best: dict | None) -> str:
    """One line about the best setting."""
    if best is None:
        return "every trial failed: no best setting (see the error column of results.csv)"
    return (f"best setting by {best['criterion']}: {best['setting']} "
            f"({best['criterion']} {best['mean']:.4f} ± {best['std']:.4f} over {best['runs']} runs)")
