"""The ``watch`` flow: process new acquisitions of a landing location, and ``serve``.

Each run lists the acquisitions under the landing location (a folder or any fsspec URL),
hashes their content, and runs the ``detect`` flow (as a subflow, into
``OUT/<name>-<hash12>/``) for each one whose hash ``OUT/ledger.json`` does not hold yet, so a
rerun processes nothing twice. A bad acquisition is recorded (ledger, artifact, the run's
return value) and the others go on. :func:`serve` serves the ``watch`` deployment on an
interval together with ``detect`` and ``sweep``, starting a local Prefect server when no
``PREFECT_API_URL`` is set.

Run it: ``hsad watch LANDING --out OUT`` (once) or ``hsad serve --landing LANDING --out OUT``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import time
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows import PrefectStart
from flows.detect import TASK_OPTIONS, detect
from hsad_scale import cluster, watch as watching
from hsad_scale.errors import InputError
from hsad_scale.locations import absolute


@task(name="prepare-output", task_run_name="prepare-output", **TASK_OPTIONS)
def prepare_output(out: str) -> None:
    watching.prepare_output(out)


@task(name="list-acquisitions", task_run_name="list-acquisitions", **TASK_OPTIONS)
def list_acquisitions(landing: str) -> list[watching.Acquisition]:
    return watching.list_acquisitions(landing)


@task(name="content-hash", **TASK_OPTIONS)
def content_hash(acq: watching.Acquisition, out: str) -> str:
    return watching.cached_hash(acq, out)


@task(name="pending", task_run_name="pending", **TASK_OPTIONS)
def pending(acquisitions: list[watching.Acquisition], digests: list[str], out: str):
    return watching.pending(acquisitions, digests, out)


@task(name="fetch", **TASK_OPTIONS)
def fetch(acq: watching.Acquisition, out: str) -> Path:
    return watching.fetch(acq, out)


@task(name="cleanup", **TASK_OPTIONS)
def cleanup(acq: watching.Acquisition, local: Path | None) -> None:
    watching.cleanup(acq, local)


class AcquisitionFailed(Exception):
    """An acquisition that could not be processed (its ``record`` task run fails with this)."""


@task(name="record", **TASK_OPTIONS)
def record(out: str, entry: dict) -> dict:
    """Write the outcome into the ledger; a failed acquisition makes this task run Failed,
    with the acquisition and its reason as the message."""
    watching.record(out, entry)
    if entry["status"] == "failed":
        raise AcquisitionFailed(f"acquisition {entry['acquisition']} failed: {entry['error']}")
    return entry


@task(name="publish-watch", task_run_name="publish-watch", **TASK_OPTIONS)
def publish(landing: str, out: str, rows: list[dict]) -> None:
    """Artifacts: one table row per acquisition (status, run folder, error) and a summary."""
    columns = ("acquisition", "status", "previous", "run", "error", "hash")
    create_table_artifact([{k: (r.get(k) or "") if k != "hash" else r[k][:12] for k in columns} for r in rows],
                          description=f"hsad watch {landing} -> {out}")
    failed = [r for r in rows if r["status"] == "failed"]
    lines = [f"# watch `{landing}`", "", watching.summary(rows), "", f"Output: `{Path(out).resolve()}`"]
    if failed:
        lines += ["", "Failed:", *[f"- `{r['acquisition']}`: {r['error']}" for r in failed]]
    create_markdown_artifact("\n".join(lines), description="hsad watch report")


def _process(acq: watching.Acquisition, digest: str, out: str, address: str, detect_params: dict) -> dict:
    """One acquisition: fetch it, the detect subflow, the ledger entry (never raises)."""
    start = time.perf_counter()
    local = None
    error = None
    try:
        local = fetch.with_options(task_run_name=f"fetch-{acq.stem}")(acq, out)
        state = detect(src=str(local), out=str(Path(out) / watching.run_name(acq, digest)), dask_address=address,
                       acquisition={"acquisition": acq.name, "url": acq.url, "hash": digest}, return_state=True,
                       **detect_params)
        if not state.is_completed():
            error = state.result(raise_on_failure=False)
            if not isinstance(error, BaseException):
                error = RuntimeError(state.message or f"detect ended {state.type.value}")
    except Exception as exc:  # a failed fetch: reported like a failed detect
        error = exc
    finally:
        if local is not None:
            cleanup.with_options(task_run_name=f"cleanup-{acq.stem}")(acq, local)
    entry = watching.outcome(acq, digest, out, error, round(time.perf_counter() - start, 3))
    record.with_options(task_run_name=f"record-{acq.stem}")(out, entry, return_state=True)
    return entry


def _run_name() -> str:
    from prefect.runtime import flow_run

    return f"watch-{Path(str(flow_run.parameters.get('landing', 'landing'))).name}"


@flow(name="watch", flow_run_name=_run_name, task_runner=ThreadPoolTaskRunner(max_workers=8))
def watch(landing: str, out: str, method: str = "rx", preset: str | None = None, config: str | None = None,
          settings: list[str] | None = None, device: str = "auto", dask_address: str | None = None) -> list[dict]:
    """Run ``detect`` for every acquisition of ``landing`` not yet processed into ``out``;
    returns one row per acquisition (status done, failed or skipped; each failed one is also a
    failed ``record-<name>`` task run with its reason)."""
    landing, out = str(absolute(landing)), str(absolute(out))  # the detect runs see other working directories
    prepare_output(out)
    acquisitions = list_acquisitions(landing)
    hashes = [content_hash.with_options(task_run_name=f"hash-{a.stem}").submit(a, out) for a in acquisitions]
    todo, skipped = pending(acquisitions, [h.result() for h in hashes], out)
    rows = [row for _, _, row in skipped]
    if todo:
        params = dict(method=method, preset=preset, config=config, settings=settings, device=device)
        with cluster.dask_client(dask_address) as client:  # one cluster for every acquisition
            address = client.scheduler.address
            rows += [_process(acq, digest, out, address, params) for acq, digest in todo]
    publish(landing, out, rows)
    print(f"[hsad] {landing}: {watching.summary(rows)}", file=sys.stderr)
    for r in rows:
        if r["status"] == "failed":
            print(f"[hsad] failed: {r['acquisition']}: {r['error']}", file=sys.stderr)
    return rows


# --------------------------------------------------------------------------------------
# serving the deployments


def deployments(landing: str, out: str, interval: float = 300, method: str = "rx", preset: str | None = None,
                config: str | None = None, settings: list[str] | None = None, device: str = "auto",
                dask_address: str | None = None) -> list:
    """The deployments ``hsad serve`` serves: ``watch-landing`` every ``interval`` seconds
    (one run at a time) with these parameters, and ``detect`` and ``sweep`` to run on demand."""
    from prefect.deployments.runner import EntrypointType

    from flows.sweep import sweep

    params = {k: v for k, v in dict(landing=str(landing), out=str(out), method=method, preset=preset, config=config,
                                    settings=settings, device=device, dask_address=dask_address).items()
              if v is not None}
    module = EntrypointType.MODULE_PATH
    return [
        watch.to_deployment(name="watch-landing", interval=dt.timedelta(seconds=interval), parameters=params,
                            concurrency_limit=1, entrypoint_type=module, tags=["hsad"],
                            description=f"Process new acquisitions of {landing} into {out}"),
        detect.to_deployment(name="detect", entrypoint_type=module, tags=["hsad"],
                             parameters={"dask_address": dask_address} if dask_address else None),
        sweep.to_deployment(name="sweep", entrypoint_type=module, tags=["hsad"],
                            parameters={"dask_address": dask_address} if dask_address else None),
    ]


@contextlib.contextmanager
def prefect_api(port: int = 4200, startup_timeout: float = 120):
    """The Prefect API URL to use: ``PREFECT_API_URL`` when set, else a local server (``prefect
    server start`` on ``port``, reused when one already answers there; see
    :class:`flows.PrefectStart`) for as long as the block runs. Scheduled runs need a real
    server: Prefect's ephemeral API has no scheduler."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = PrefectStart(startup_timeout, port=port, ui=True)
    try:
        url = api.wait()
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # for the flow-run processes the runner starts
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
    finally:
        api.stop(timeout=20)


def serve(landing: str, out: str, interval: float = 300, port: int = 4200, **params) -> None:
    """Serve the deployments of :func:`deployments` on this machine until interrupted."""
    import prefect

    if interval <= 0:
        raise InputError(f"--interval must be positive, got {interval}")
    watching.landing_fs(landing)
    watching.prepare_output(out)
    # runs start in their own processes: give them absolute paths
    landing = landing if "://" in str(landing) else str(Path(landing).resolve())
    out = str(Path(out).resolve())
    with prefect_api(port) as url:
        print(f"[hsad] serving watch-landing every {interval:g} s, detect and sweep; Prefect API {url}",
              file=sys.stderr)
        prefect.serve(*deployments(landing, out, interval, **params))
