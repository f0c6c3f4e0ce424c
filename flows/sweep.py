"""The ``sweep`` flow: the study's hyperparameter search, for any registered detector.

A grid file (see :mod:`hsad_scale.sweep`) names the method (``rx``, ``local-rx``, ...,
``ae``, ``vae``), its fixed settings and the swept lists; every (setting, repeat) is its own
Prefect task (``trial-ae-s0-r0``, ``trial-local-rx-s1-r0``...), run concurrently, each
submitting one Dask task (``trial-ae-s0-r0-<token>``; an AE/VAE trial on a worker with the
``GPU`` resource when the cluster has one) so the trials fan out over the workers. The
results table (``results.csv``, ``results.parquet``), the averaged-ROC plots per swept
parameter (``roc-<param>.png``) and the best setting (``best.json``) are written whole into
``out``, and published as artifacts.

Run it: ``hsad sweep CUBE --grid GRID.yaml --repeats N --out DIR``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.states import Failed
from prefect.task_runners import ThreadPoolTaskRunner

from flows import flow_run_record
from flows.detect import TASK_OPTIONS
from hsad_scale import cluster, pipeline, sweep as sweeps
from hsad_scale.atomic import atomic_path
from hsad_scale.locations import absolute

#: Prefect tasks waiting on trials at once (each only waits on its Dask task).
MAX_CONCURRENT_TRIALS = 64


@task(name="sweep-grid", task_run_name="sweep-grid", **TASK_OPTIONS)
def load_grid(grid: str, repeats: int | None, criterion: str | None) -> sweeps.SweepSpec:
    return sweeps.load_grid(grid, repeats, criterion)


@task(name="ingest", task_run_name="ingest", **TASK_OPTIONS)
def ingest(src: str, run_dir: Path) -> Path:
    return pipeline.prepare_cube(src, run_dir)


@task(name="check-cube", task_run_name="check-cube", **TASK_OPTIONS)
def check_cube(cube_path: Path) -> None:
    sweeps.check_cube(cube_path)


@task(name="trial", **TASK_OPTIONS)
def trial(client, cube_path: Path, spec: sweeps.SweepSpec, setting: sweeps.Setting, repeat: int,
          device: str) -> dict:
    """One trial on the cluster; a trial that raises is a failed task run with its reason
    (and a row with the error in the table)."""
    return sweeps.submit_trial(client, cube_path, spec, setting, repeat, device).result()


@task(name="write-results", task_run_name="write-results", **TASK_OPTIONS)
def write_results(out_dir: Path, spec: sweeps.SweepSpec, rows: list[dict], extra: dict) -> dict | None:
    return sweeps.write_outputs(out_dir, spec, rows, extra)


@task(name="publish-sweep", task_run_name="publish-sweep", **TASK_OPTIONS)
def publish(out: str, spec: sweeps.SweepSpec, rows: list[dict], best: dict | None) -> None:
    """Artifacts: the per-setting summary table and a report with the best setting and links."""
    out_dir = Path(out).resolve()
    summary = sweeps.summary_table(rows, spec)
    c = spec.criterion
    columns = ["setting_id", "setting", "runs", "failed", f"{c}_mean", f"{c}_std", "train_seconds_mean"]
    create_table_artifact([{k: (round(v, 6) if isinstance(v, float) else v) for k, v in r.items()}
                           for r in summary[columns].to_dict("records")],
                          description=f"{spec.method.upper()} sweep: {c} per setting over {spec.repeats} repeat(s)")
    files = ["results.csv", "results.parquet", "summary.csv", "best.json",
             *sorted(p.name for p in out_dir.glob("roc-*.png"))]
    lines = [f"# {spec.method.upper()} sweep: {len(rows)} trials", "", sweeps.describe_best(best), "",
             *[f"- [{name}]({(out_dir / name).as_uri()})" for name in files if (out_dir / name).exists()]]
    failed = [r for r in rows if r.get("error")]
    if failed:
        lines += ["", f"{len(failed)} trial(s) failed:",
                  *[f"- {r['setting']} repeat {r['repeat']}: {r['error']}" for r in failed]]
    create_markdown_artifact("\n".join(lines), description=f"hsad sweep report: {out_dir.name}")


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"sweep-{Path(str(flow_run.parameters.get('out', 'sweep'))).name}"


@flow(name="sweep", flow_run_name=_run_name, task_runner=ThreadPoolTaskRunner(max_workers=MAX_CONCURRENT_TRIALS))
def sweep(cube: str, grid: str, out: str, repeats: int | None = None, criterion: str | None = None,
          device: str = "auto", dask_address: str | None = None, overwrite: bool = False) -> dict | None:
    """Every (setting, repeat) of the grid file ``grid`` on ``cube`` (a cube store with
    ground truth, or a scene file), results into the folder ``out``; returns the best setting.
    When trials fail, the results are still written (the error column holds each reason) and
    the flow run ends Failed, its message counting the failed trials."""
    # the trials run in other processes: absolute paths (URLs kept)
    cube, grid, out = (str(absolute(p)) for p in (cube, grid, out))
    spec = load_grid(grid, repeats, criterion)
    with atomic_path(out, overwrite) as tmp:
        tmp.mkdir()
        cube_path = ingest(cube, tmp)
        check_cube(cube_path)
        with cluster.dask_client(dask_address) as client:
            link = cluster.dashboard_link(client)
            if link:
                print(f"[hsad] Dask dashboard: {link}", file=sys.stderr)
            futures = [trial.with_options(task_run_name=f"trial-{spec.method}-{s.id}-r{r}")
                       .submit(client, cube_path, spec, s, r, device) for s, r in spec.trials()]
            rows = [_row(f, spec, s, r) for f, (s, r) in zip(futures, spec.trials())]
            extra = {"source": str(cube), "dask": cluster.describe(client), "prefect": flow_run_record()}
        best = write_results(tmp, spec, rows, extra)
    publish(out, spec, rows, best)
    print(f"[hsad] wrote {out}: {len(rows)} trials; {sweeps.describe_best(best)}", file=sys.stderr)
    failed = sum(1 for r in rows if r.get("error"))
    if failed:
        return Failed(message=failed_message(failed, len(rows), out))
    return best


def failed_message(failed: int, trials: int, out: str) -> str:
    """The message of a sweep run with failed trials."""
    first = "every trial" if failed == trials else f"{failed} of {trials} trials"
    return f"{first} failed; results written to {out} (reasons in the error column of results.csv)"


def _row(future, spec: sweeps.SweepSpec, setting: sweeps.Setting, repeat: int) -> dict:
    """A trial's row: its result, or the failed row with the reason of its failed task run."""
    outcome = future.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        return sweeps.failed_row(spec, setting, repeat, outcome)
    return outcome
