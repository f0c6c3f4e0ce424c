"""The ``detect`` flow: one acquisition in, maps and metrics out.

It is :func:`hsad_scale.pipeline.run_detect` with each stage run as a Prefect task of the
stage's name (``ingest``, ``rx-stats`` or ``scaling-stats``/``train-ae``/``ae-feature-stats``,
``score``, ``geotiff``, ``evaluate``, ``detections``, ``report``), so the run folder is the one ``hsad detect``
writes, plus ``run.json["prefect"]`` (the flow run). The Dask work inside the stages keeps its
own key names on the dashboard (``rx-stats``, ``train-ae-<i>`` on a worker with the ``GPU``
resource when there is one, ``score-tile``). A report is published as artifacts: the metrics
table, links to the maps, plots and stores, and the detection table (highest peaks first).

Run it: ``hsad detect SRC --out RUN_DIR --flow`` or ``python -m flows.detect SRC RUN_DIR``.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows import flow_run_record
from hsad_scale.pipeline import DetectOptions, Stages, run_detect

#: Options of every task of the flows: results stay in memory (cubes, clients and models are
#: passed between tasks in the flow's process), nothing is cached across runs.
TASK_OPTIONS = dict(cache_policy=NO_CACHE, persist_result=False)

REPORT_FILES = (("map.png", "score map"), ("roc.png", "ROC curves"), ("scores.zarr", "score store (Zarr)"),
                ("scores.tif", "score map (COG)"), ("detections/detections.tif", "detection ids (COG)"),
                ("detections/detections.geojson", "detection outlines (GeoJSON)"),
                ("detections/detections.parquet", "detections (GeoParquet)"), ("objects.png", "object-level curve"),
                ("metrics.json", "metrics"), ("run.json", "run record"))


@task(name="stage", **TASK_OPTIONS)
def _stage_task(fn, *args, **kwargs):
    return fn(*args, **kwargs)


class TaskStages(Stages):
    """The pipeline's stage runner with each stage run as a Prefect task of the same name
    (``ingest``, ``rx-stats``, ``train-ae``, ``score``...): one task, one library function."""

    def run(self, name: str, fn, *args, **kwargs):
        with self(name):
            return _stage_task.with_options(name=name, task_run_name=name)(fn, *args, **kwargs)


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters
    return f"detect-{params.get('method', 'rx')}-{Path(str(params.get('out', 'run'))).name}"


@task(name="publish-report", task_run_name="publish-report", **TASK_OPTIONS)
def publish_report(run_dir: str) -> None:
    """Prefect artifacts of a finished run folder: metrics table and links to its outputs."""
    from hsad_scale import locations

    if locations.is_url(run_dir):  # published on an object store: its record and location
        fs, path = locations.filesystem(run_dir)
        record = json.loads(fs.cat(f"{path}/run.json"))
        metrics = record.get("metrics") or {}
        create_markdown_artifact(f"# {record['method'].upper()} on `{record['source']}`\n\nRun folder: `{run_dir}`"
                                 + (f"\n\nAUC **{metrics['auc']:.4f}**" if metrics else ""),
                                 description=f"hsad detect report: {run_dir}")
        return
    run_dir = Path(run_dir).resolve()
    record = json.loads((run_dir / "run.json").read_text())
    metrics = record.get("metrics")
    if metrics:
        rows = [{"figure": k, "value": round(v, 6) if isinstance(v, float) else v}
                for k, v in metrics.items() if isinstance(v, (int, float))]
        create_table_artifact(rows, description=f"Metrics of {record['method'].upper()} on {record['source']}")
    links = [f"- [{label}]({(run_dir / name).as_uri()}): `{run_dir / name}`"
             for name, label in REPORT_FILES if (run_dir / name).exists()]
    dask = record.get("dask", {})
    lines = [f"# {record['method'].upper()} on `{record['source']}`", "",
             f"Run folder: `{run_dir}`", "", *links, "",
             f"Shape {record['shape']}, chunks {record['chunks']}; Dask scheduler `{dask.get('scheduler')}`"
             + (f", dashboard {dask['dashboard']}" if dask.get("dashboard") else ""), "",
             "Stage seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in record.get("stage_seconds", {}).items())]
    if metrics:
        lines += ["", f"AUC **{metrics['auc']:.4f}**, TPR at FPR 1e-2 **{metrics['tpr_at_fpr_0.01']:.3f}**"]
    else:
        lines += ["", "No ground truth: no metrics."]
    create_markdown_artifact("\n".join(lines), description=f"hsad detect report: {run_dir.name}")
    publish_detections(run_dir, record)


#: Rows of the detection table published as an artifact (the highest peaks).
ARTIFACT_DETECTIONS = 50


def publish_detections(run_dir: Path, record: dict) -> None:
    """The run's detection table (``detections/detections.csv``, highest peaks first) as a
    Prefect table artifact."""
    import pandas as pd

    table = run_dir / "detections" / "detections.csv"
    found = record.get("detections") or {}
    if not table.is_file():
        return

    rows = pd.read_csv(table, nrows=ARTIFACT_DETECTIONS).round(6)
    rows = json.loads(rows.to_json(orient="records"))  # plain JSON values (NaN -> null)
    create_table_artifact(rows, description=(
        f"Detections of {record['method'].upper()} on {record['source']}: {found.get('objects')} at PFA "
        f"{found.get('pfa')} ({found.get('rule')} threshold {found.get('threshold')}); top {len(rows)} by peak score"))


@flow(name="detect", flow_run_name=_run_name, validate_parameters=True)
def detect(src: str, out: str, method: str = "rx", preset: str | None = None, config: str | None = None,
           settings: list[str] | None = None, metrics: list[str] | None = None, repeats: int = 1,
           ensemble: str = "mean", device: str = "auto", model: str | None = None, overwrite: bool = False,
           dask_address: str | None = None, gt: str | None = None, cube_key: str | None = None,
           gt_key: str | None = None, chunk: int = 256, acquisition: dict | None = None, pfa: float = 1e-3,
           threshold: str = "empirical", normalise: bool = False, band_axis: str | None = None,
           drop_bands: str | None = None, swath: bool = False, background_mask: str | None = None) -> str:
    """Score every pixel of ``src`` (a cube store or any scene file ``hsad ingest`` reads)
    into the run folder ``out``; the same options as ``hsad detect`` (``acquisition``: what
    the watch flow records about the source). Returns ``out``."""
    options = DetectOptions(method=method, preset=preset, config_file=config, settings=tuple(settings or ()),
                            metrics=tuple(metrics) if metrics else None, repeats=repeats, ensemble=ensemble,
                            device=device, model=model, pfa=pfa, threshold=threshold, normalise=normalise,
                            background_mask=background_mask)
    run_dir = run_detect(src, out, options, overwrite=overwrite, dask_address=dask_address,
                         ingest_options=dict(gt=gt, cube_key=cube_key, gt_key=gt_key, chunk=chunk,
                                             band_axis=band_axis, drop_bands=drop_bands, swath=swath),
                         stage=TaskStages(), record_extra={"prefect": flow_run_record(),
                                                           **({"acquisition": acquisition} if acquisition else {})})
    publish_report(str(run_dir))
    return str(run_dir)


if __name__ == "__main__":
    import sys

    detect(sys.argv[1], sys.argv[2], *sys.argv[3:4])
