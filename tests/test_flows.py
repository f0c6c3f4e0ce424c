"""The Prefect flows, run for real under Prefect's test harness on real multi-process Dask
LocalClusters: detect (same scores as ``hsad detect``; training on the GPU-resource worker;
a worker killed while scoring), sweep (table and plots), watch (each file once, a corrupt one
reported), and the Prefect-free library pieces they call."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml
from distributed.diagnostics.plugin import SchedulerPlugin

from hsad_scale import sweep as sweeps, watch as watching
from hsad_scale.cli import main
from hsad_scale.errors import InputError
from hsad_scale.synth import SceneSpec, synth

pytestmark = pytest.mark.slow

AE_FAST = ["epochs=1", "max_steps=30", "members=1", "holdout=0", "patience=0"]


@pytest.fixture(scope="module", autouse=True)
def prefect_api():
    """Prefect's test harness: a temporary API server and database for this module."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture(scope="module")
def small_cube(tmp_path_factory):
    return synth(tmp_path_factory.mktemp("cube") / "scene.zarr", SceneSpec(64, 64, 24, seed=3), chunk=32)


def _scene(had_dir, manifest, name):
    row = next(r for r in manifest if r["name"] == name)
    return had_dir / row["file"]


def _prefect_client():
    from prefect import get_client

    return get_client(sync_client=True)


def _task_run_names(flow_run_id: str, expected: set, timeout: float = 30) -> set:
    """Names of the task runs of a flow run (recorded from events: poll a little)."""
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    with _prefect_client() as client:
        while True:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])))
            names = {r.name for r in runs}
            if expected <= names or time.monotonic() > deadline:
                return names
            time.sleep(0.5)


def _artifacts(flow_run_id: str) -> list:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _prefect_client() as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[uuid.UUID(flow_run_id)])))


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


# --------------------------------------------------------------------------------------
# detect


def test_detect_flow_gives_the_scores_and_run_folder_of_hsad_detect(had_dir, manifest, client, tmp_path):
    from flows.detect import detect

    src = _scene(had_dir, manifest, "hydice")
    cli_out, flow_out = tmp_path / "cli", tmp_path / "flow"
    address = client.scheduler.address
    assert main(["detect", str(src), "--out", str(cli_out), "--dask-address", address]) == 0
    assert detect(str(src), str(flow_out), dask_address=address) == str(flow_out)

    np.testing.assert_array_equal(xr.open_zarr(flow_out / "scores.zarr", consolidated=False)["score"].values,
                                  xr.open_zarr(cli_out / "scores.zarr", consolidated=False)["score"].values)
    assert _files(flow_out) == _files(cli_out)  # the same RUN_DIR layout
    assert json.loads((flow_out / "metrics.json").read_text()) == json.loads((cli_out / "metrics.json").read_text())
    run = json.loads((flow_out / "run.json").read_text())
    assert set(json.loads((cli_out / "run.json").read_text())) | {"prefect"} == set(run)
    assert run["dask"]["scheduler"] == address and run["dask"]["dashboard"]
    prefect = run["prefect"]
    assert prefect["flow"] == "detect" and prefect["flow_run_name"] == "detect-rx-flow"

    stages = {"ingest", "rx-stats", "score", "geotiff", "evaluate", "report", "publish-report"}
    assert stages <= _task_run_names(prefect["flow_run_id"], stages)
    artifacts = _artifacts(prefect["flow_run_id"])
    assert {a.type for a in artifacts} == {"table", "markdown"}
    markdown = next(a for a in artifacts if a.type == "markdown").data
    assert "map.png" in markdown and "roc.png" in markdown and "AUC" in markdown
    tables = {("detections" if t.description.startswith("Detections of RX") else "metrics"):
              (json.loads(t.data) if isinstance(t.data, str) else t.data)
              for t in artifacts if t.type == "table"}
    assert set(tables) == {"metrics", "detections"}
    # the metrics table: one row per figure of run.json's metrics, the value rounded to 6 digits
    assert all(set(row) == {"figure", "value"} for row in tables["metrics"])
    figures = {k: v for k, v in run["metrics"].items() if isinstance(v, (int, float))}
    assert {row["figure"]: row["value"] for row in tables["metrics"]} == {
        k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}
    assert {"auc", "tpr_at_fpr_0.01"} <= set(figures) and figures["auc"] > 0.5
    assert json.loads((flow_out / "metrics.json").read_text())["auc"] == figures["auc"]
    # the detection table: the first rows of detections/detections.csv, its columns, highest peaks first
    csv = pd.read_csv(flow_out / "detections" / "detections.csv")
    rows = tables["detections"]
    assert len(rows) == min(len(csv), 50) > 0 and list(rows[0]) == list(csv.columns)
    for row, (_, want) in zip(rows, csv.iterrows()):
        for column in csv.columns:
            value = want[column]
            if isinstance(value, float) and np.isnan(value):
                assert row[column] is None, column
            elif isinstance(value, float):
                assert row[column] == pytest.approx(round(value, 6), abs=1e-6), column
            else:
                assert row[column] == value, column


def test_detect_flow_cli_passes_every_option_and_exit_status_on_bad_input(small_cube, client, tmp_path, capsys):
    """``hsad detect --flow`` with the source-layout options, a background mask and the
    dashboard's address: the scores and run record of the plain command with the same options."""
    import socket

    out, plain = tmp_path / "run", tmp_path / "plain"
    address = client.scheduler.address
    mask = np.zeros((64, 64), dtype=bool)
    mask[:, :40] = True
    np.save(tmp_path / "mask.npy", mask)
    with socket.socket() as sock:  # a free port for the flow's LocalCluster dashboard
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    options = ["--drop-bands", "0-3", "--background-mask", str(tmp_path / "mask.npy")]
    assert main(["detect", str(small_cube), "--out", str(out), "--flow", *options,
                 "--dashboard-address", f"127.0.0.1:{port}"]) == 0
    assert main(["detect", str(small_cube), "--out", str(plain), *options, "--dask-address", address]) == 0
    run, want = (json.loads((folder / "run.json").read_text()) for folder in (out, plain))
    assert run["prefect"]["flow"] == "detect"
    assert run["dask"]["dashboard"] == f"http://127.0.0.1:{port}/status"
    for key in ("options", "shape", "ingest", "background_mask", "background", "metrics"):
        assert run[key] == want[key], key
    assert run["shape"]["band"] == 20 and run["background_mask"]["pixels"] == mask.sum()
    np.testing.assert_array_equal(xr.open_zarr(out / "scores.zarr", consolidated=False)["score"].values,
                                  xr.open_zarr(plain / "scores.zarr", consolidated=False)["score"].values)
    # bad input: exit 2 with one line, before Prefect or a cluster starts
    assert main(["detect", str(tmp_path / "missing.mat"), "--out", str(tmp_path / "x"), "--flow"]) == 2
    assert main(["detect", str(small_cube), "--out", str(out), "--flow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hsad: error:") and "already exists" in err[-1]
    assert not (tmp_path / "x").exists()


def _start_gpu_worker(address: str, name: str) -> subprocess.Popen:
    """A worker process declaring one GPU, as deploy/docker-compose.yml starts it."""
    return subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--nthreads", "1", "--nworkers", "1",
                             "--resources", "GPU=1", "--name", name, "--no-dashboard"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_every_training_runs_on_the_gpu_worker(small_cube, tmp_path):
    from distributed import Client, LocalCluster

    from flows.detect import detect

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        worker = _start_gpu_worker(cluster.scheduler_address, "gpu-0")
        try:
            client.wait_for_workers(2, timeout=120)
            out = tmp_path / "ae"
            detect(str(small_cube), str(out), method="ae", settings=AE_FAST, repeats=3,
                   dask_address=cluster.scheduler_address)
        finally:
            worker.terminate()
            worker.wait(30)
    run = json.loads((out / "run.json").read_text())
    workers = {w["name"]: w["resources"] for w in run["dask"]["workers"]}
    assert workers["gpu-0"] == {"GPU": 1} and len(workers) == 2  # a CPU worker was there too
    assert run["train_workers"] == ["gpu-0", "gpu-0", "gpu-0"]
    assert xr.open_zarr(out / "scores.zarr", consolidated=False)["score_runs"].sizes["run"] == 3
    assert {"scaling-stats", "train-ae", "ae-feature-stats", "score"} <= set(run["stage_seconds"])


class WorkerKiller(SchedulerPlugin):
    """Scheduler plugin: SIGKILLs the process of a worker that is scoring tiles once
    ``after`` ``score-tile`` tasks have finished; counts the tiles finished before and after."""

    name = "worker-killer"

    def __init__(self, pids: dict, after: int):
        self.pids, self.after = pids, after
        self.done, self.killed, self.done_after_kill = 0, None, 0

    async def start(self, scheduler):
        self.scheduler = scheduler

    def transition(self, key, start, finish, *args, **kwargs):
        from dask.utils import key_split

        if finish != "memory" or "score-tile" not in key_split(key):
            return
        self.done += 1
        if self.killed is not None:
            self.done_after_kill += 1
        elif self.done >= self.after:
            busy = [ws.address for ws in self.scheduler.workers.values()
                    if any("score-tile" in key_split(ts.key) for ts in ws.processing) and ws.address in self.pids]
            if busy:
                self.killed = busy[0]
                os.kill(self.pids[busy[0]], signal.SIGKILL)

    def summary(self):
        return {"killed": self.killed, "done": self.done, "done_after_kill": self.done_after_kill}


def test_a_worker_killed_while_scoring_does_not_fail_the_flow(tmp_path):
    from distributed import Client, LocalCluster

    from flows.detect import detect
    from hsad_scale.pipeline import run_detect

    cube = synth(tmp_path / "scene.zarr", SceneSpec(256, 256, 24, seed=4), chunk=32)  # 64 tiles
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        reference = run_detect(cube, tmp_path / "reference", client=client, quiet=True)
        pids = client.run(os.getpid)
        client.register_plugin(WorkerKiller(pids, after=12))
        detect(str(cube), str(tmp_path / "flow"), dask_address=cluster.scheduler_address)
        seen = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.plugins["worker-killer"].summary())
    assert seen["killed"] in pids and seen["done_after_kill"] > 0, seen  # killed in the middle of scoring
    np.testing.assert_array_equal(xr.open_zarr(tmp_path / "flow" / "scores.zarr", consolidated=False)["score"].values,
                                  xr.open_zarr(reference / "scores.zarr", consolidated=False)["score"].values)
    assert json.loads((tmp_path / "flow" / "metrics.json").read_text())["auc"] == \
        json.loads((reference / "metrics.json").read_text())["auc"]


# --------------------------------------------------------------------------------------
# sweep


def test_sweep_flow_writes_the_table_plots_and_best_setting(had_dir, manifest, client, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"method": "ae", "fixed": {"latent": 4, "max_steps": 40, "members": 1,
                                                              "holdout": 0.0, "patience": 0},
                                    "grid": {"epochs": [1, 2]}}))
    out = tmp_path / "sweep"
    src = _scene(had_dir, manifest, "abu-airport-1")
    assert main(["sweep", str(src), "--grid", str(grid), "--repeats", "2", "--out", str(out),
                 "--dask-address", client.scheduler.address]) == 0

    table = pd.read_csv(out / "results.csv")
    assert len(table) == 4 and sorted(zip(table["epochs"], table["repeat"])) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for column in ("setting", "repeat", "auc", "tpr_at_fpr_0.001", "tpr_at_fpr_0.01", "tpr_at_fpr_0.1",
                   "pauc_0.01", "train_seconds"):
        assert column in table.columns, column
    assert table["error"].isna().all() and table["auc"].between(0.5, 1).all()
    assert (table["train_seconds"] > 0).all()
    assert table.groupby("epochs")["seed"].apply(sorted).tolist() == [[0, 1], [0, 1]]  # repeats: seed, seed+1
    assert {w for w in table["worker"]} <= {w["name"] for w in client.scheduler_info()["workers"].values()} | {"0", "1"}
    parquet = pd.read_parquet(out / "results.parquet")
    assert parquet["error"].isna().all()
    pd.testing.assert_frame_equal(parquet.drop(columns="error"), table.drop(columns="error"), check_dtype=False)
    assert (out / "roc-epochs.png").stat().st_size > 10_000
    best = json.loads((out / "best.json").read_text())
    assert best["criterion"] == "auc" and best["values"]["epochs"] in (1, 2) and best["runs"] == 2
    means = table.groupby("epochs")["auc"].mean()
    assert best["mean"] == pytest.approx(means.max())
    curves = np.load(out / "curves.npz")
    assert curves["tpr"].shape == (4, curves["fpr"].size)
    sweep_record = json.loads((out / "sweep.json").read_text())
    assert sweep_record["prefect"]["flow"] == "sweep" and sweep_record["grid"]["grid"] == {"epochs": [1, 2]}
    names = _task_run_names(sweep_record["prefect"]["flow_run_id"], {"trial-ae-s0-r0", "trial-ae-s1-r1"})
    assert {"trial-ae-s0-r0", "trial-ae-s0-r1", "trial-ae-s1-r0", "trial-ae-s1-r1", "write-results"} <= names


@pytest.mark.parametrize("grid, message", [
    ({"method": "pca", "grid": {"epochs": [1]}}, "method must be one of rx, "),
    ({"method": "ae"}, "grid must map at least one setting"),
    ({"method": "ae", "grid": {"epochs": 3}}, "grid.epochs must be a non-empty list"),
    ({"method": "ae", "grid": {"epochz": [1, 2]}}, "unknown ae setting(s) in grid: epochz"),
    ({"method": "ae", "fixed": {"beta": 2}, "grid": {"epochs": [1]}}, "unknown ae setting(s) in fixed: beta"),
    ({"method": "ae", "fixed": {"epochs": 2}, "grid": {"epochs": [1]}}, "epochs both fixed and swept"),
    ({"method": "ae", "grid": {"epochs": [1, 0]}}, "grid setting epochs=0: epochs must be >= 1"),
    ({"method": "ae", "grid": {"epochs": [1, 1]}}, "lists a value twice"),
    ({"method": "vae", "grid": {"metric": ["mse", "nope"]}}, "metric must be one of"),
    ({"method": "ae", "grid": {"epochs": [1]}, "repeats": 0}, "repeats must be a positive integer"),
    ({"method": "ae", "grid": {"epochs": [1]}, "criterion": "f1"}, "criterion must be one of"),
    ({"method": "ae", "grid": {"epochs": [1]}, "seeds": 3}, "unknown key(s) seeds"),
    (["epochs"], "must hold a mapping"),
])
def test_grid_files_are_validated_with_clear_messages(grid, message):
    with pytest.raises(InputError, match=None) as error:
        sweeps.parse_grid(grid, "grid.yaml")
    assert message in str(error.value) and "grid.yaml" in str(error.value)


def test_grid_expands_every_combination_with_repeats():
    spec = sweeps.parse_grid({"method": "vae", "fixed": {"latent": 3}, "grid": {"epochs": [1, 5], "beta": [0.5, 1, 5]},
                              "repeats": 2})
    settings = spec.settings()
    assert [s.label for s in settings][:3] == ["epochs=1, beta=0.5", "epochs=1, beta=1", "epochs=1, beta=5"]
    assert len(settings) == 6 and len(spec.trials()) == 12
    config = spec.config(settings[4], repeat=1)
    assert (config.epochs, config.beta, config.latent, config.seed) == (5, 1.0, 3, spec.config(settings[4]).seed + 1)


def test_sweep_cli_bad_grid_is_exit_2_and_writes_nothing(small_cube, tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("method: ae\ngrid: {layers: [2, x]}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(small_cube), "--grid", str(grid), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layers=x" in err[0] and not out.exists()


# --------------------------------------------------------------------------------------
# watch


def test_watch_flow_processes_each_file_once_and_reports_a_corrupt_one(had_dir, manifest, client, tmp_path, capsys):
    from flows.watch import watch

    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    shutil.copy(_scene(had_dir, manifest, "hydice"), landing / "hydice.mat")
    shutil.copy(_scene(had_dir, manifest, "abu-beach-3"), landing / "beach.mat")
    (landing / "broken.mat").write_bytes(b"MATLAB 5.0 MAT-file, truncated" + bytes(100))
    (landing / "notes.txt").write_text("not an acquisition")
    address = client.scheduler.address

    # first run, from the command line: the bad file is reported (exit 2), the others complete
    assert main(["watch", str(landing), "--out", str(out), "--dask-address", address]) == 2
    err = capsys.readouterr().err
    assert "broken.mat" in err.strip().splitlines()[-1] and "1 of 3 acquisition(s) failed" in err
    ledger = json.loads((out / "ledger.json").read_text())
    assert sorted(e["acquisition"] for e in ledger["processed"].values()) == ["beach.mat", "hydice.mat"]
    assert [e["acquisition"] for e in ledger["failed"].values()] == ["broken.mat"]
    assert next(iter(ledger["failed"].values()))["error_kind"] == "input"
    runs = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(runs) == 2 and {r.split("-")[0] for r in runs} == {"hydice", "beach"}
    for run in runs:
        record = json.loads((out / run / "run.json").read_text())
        assert record["prefect"]["flow"] == "detect" and record["acquisition"]["hash"][:12] in run
        assert (out / run / "metrics.json").is_file()
    stamps = {run: (out / run / "run.json").stat().st_mtime_ns for run in runs}

    # second run: nothing twice (a renamed copy is the same content); a new file is processed
    shutil.copy(landing / "hydice.mat", landing / "hydice-copy.mat")
    shutil.copy(_scene(had_dir, manifest, "abu-urban-1"), landing / "urban.mat")
    rows = watch(str(landing), str(out), dask_address=address)
    status = {r["acquisition"]: r["status"] for r in rows}
    assert status == {"beach.mat": "skipped", "broken.mat": "skipped", "hydice.mat": "skipped",
                      "hydice-copy.mat": "skipped", "urban.mat": "done"}
    assert {run: (out / run / "run.json").stat().st_mtime_ns for run in runs} == stamps
    assert len(json.loads((out / "ledger.json").read_text())["processed"]) == 3
    # third run: nothing to do, no cluster started
    assert {r["status"] for r in watch(str(landing), str(out), dask_address=address)} == {"skipped"}
    # a new bad acquisition: its record task run is Failed, with the acquisition and the reason
    (landing / "broken2.mat").write_bytes(b"MATLAB 5.0 MAT-file, also truncated" + bytes(100))
    state = watch(str(landing), str(out), dask_address=address, return_state=True)
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 30
    with _prefect_client() as prefect_client:
        while True:
            runs = prefect_client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
            record_run = next((r for r in runs if r.name == "record-broken2"), None)
            if (record_run is not None and record_run.state.is_final()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert record_run is not None and record_run.state.is_failed(), record_run
    assert "acquisition broken2.mat failed" in record_run.state.message


def test_acquisitions_are_listed_and_hashed_by_content(tmp_path):
    landing = tmp_path / "landing"
    (landing / "sub").mkdir(parents=True)
    (landing / "a.mat").write_bytes(b"one")
    (landing / "sub" / "b.tif").write_bytes(b"two")
    (landing / "scene.hdr").write_text("ENVI\n")
    (landing / "scene.img").write_bytes(b"pixels")
    (landing / "store.zarr" / "cube").mkdir(parents=True)
    (landing / "store.zarr" / "zarr.json").write_text("{}")
    (landing / "store.zarr" / "cube" / "c").write_bytes(b"chunk")
    (landing / ".hidden.mat").write_bytes(b"skip")
    (landing / "readme.txt").write_text("skip")
    acquisitions = watching.list_acquisitions(str(landing))
    assert [a.name for a in acquisitions] == ["a.mat", "scene.hdr", "store.zarr", "sub/b.tif"]
    envi = acquisitions[1]
    assert [os.path.basename(m) for m in envi.members] == ["scene.hdr", "scene.img"]
    assert len(acquisitions[2].members) == 2
    digests = [watching.content_hash(a) for a in acquisitions]
    assert len(set(digests)) == 4
    (landing / "copy.mat").write_bytes(b"one")
    again = {a.name: watching.content_hash(a) for a in watching.list_acquisitions(str(landing))}
    assert again["copy.mat"] == again["a.mat"] == digests[0]
    (landing / "scene.img").write_bytes(b"other pixels")
    assert watching.content_hash(watching.list_acquisitions(str(landing))[2]) != digests[1]
    # the hash cache: reused while size and modification time hold, recomputed when they change
    out = tmp_path / "out"
    first = watching.list_acquisitions(str(landing))[0]
    digest = watching.cached_hash(first, out)
    cache = json.loads((out / ".hashes.json").read_text())
    cache[first.url]["hash"] = "cached"
    (out / ".hashes.json").write_text(json.dumps(cache))
    assert watching.cached_hash(first, out) == "cached"
    (landing / "a.mat").write_bytes(b"one more")
    assert watching.cached_hash(first, out) not in ("cached", digest)
    with pytest.raises(InputError, match="is not a folder"):
        watching.list_acquisitions(str(tmp_path / "missing"))


def test_a_remote_landing_location_is_staged_locally(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/landing-{uuid.uuid4().hex[:6]}"
    fs.pipe(f"{root}/x.mat", b"mat bytes")
    fs.pipe(f"{root}/cube.zarr/zarr.json", b"{}")
    acquisitions = watching.list_acquisitions(f"memory://{root}")
    assert [a.name for a in acquisitions] == ["cube.zarr", "x.mat"]
    for acq in acquisitions:
        local = watching.fetch(acq, tmp_path)
        assert local.exists() and str(local).startswith(str(tmp_path / ".staging"))
        watching.cleanup(acq, local)
        assert not local.exists()
    assert acquisitions[1].url == f"memory://{root}/x.mat"


def test_the_ledger_records_atomically_and_retries_internal_errors(tmp_path):
    acq = watching.Acquisition("a.mat", "/x/a.mat", "/x/a.mat", ("/x/a.mat",), "file")
    out = tmp_path / "out"
    watching.prepare_output(out)
    watching.record(out, watching.outcome(acq, "h1", out, RuntimeError("worker lost")))
    watching.record(out, watching.outcome(acq, "h2", out, InputError("not a scene")))
    ledger = watching.Ledger(out)
    assert ledger.status("h1") is None  # internal error: retried on the next run
    assert ledger.status("h2")["error"] == "not a scene"
    watching.record(out, watching.outcome(acq, "h1", out))
    data = ledger.read()
    assert set(data["processed"]) == {"h1"} and set(data["failed"]) == {"h2"}
    assert [p.name for p in out.iterdir() if p.name.startswith(".ledger.json.tmp")] == []
    (out / "ledger.json").write_text("{broken")
    with pytest.raises(InputError, match="unreadable"):
        watching.prepare_output(out)


def test_serve_deployments():
    from flows.watch import deployments

    watch_dep, detect_dep, sweep_dep = deployments("/data/landing", "/data/out", interval=120, method="ae",
                                                   settings=["epochs=2"])
    assert [d.name for d in (watch_dep, detect_dep, sweep_dep)] == ["watch-landing", "detect", "sweep"]
    assert watch_dep.schedules[0].schedule.interval.total_seconds() == 120
    assert watch_dep.parameters == {"landing": "/data/landing", "out": "/data/out", "method": "ae",
                                    "settings": ["epochs=2"], "device": "auto"}
    assert watch_dep.concurrency_limit == 1
    assert watch_dep.entrypoint == "flows.watch.watch" and detect_dep.entrypoint == "flows.detect.detect"


def test_serve_reuses_a_prefect_server_already_answering_on_its_port():
    """``hsad serve``'s API (flows.PrefectStart with a port): a server answering there is used,
    none is started, and stopping leaves it running."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows import PrefectStart

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/api/health" else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/api"
    try:
        with temporary_settings(restore_defaults={PREFECT_API_URL}):
            api = PrefectStart(port=server.server_port, ui=True)
            assert api.wait() == url
            assert not api.temporary and api.process is None
            api.stop(timeout=20)
        assert httpx.get(f"{url}/health").status_code == 200
    finally:
        server.shutdown()
        server.server_close()


def test_hsad_serve_processes_the_landing_folder_on_its_schedule(had_dir, manifest, client, tmp_path):
    """One command: a local Prefect server, the deployments served, the watch run on its
    interval in its own process, the acquisition processed; Ctrl-C stops it all."""
    import socket

    landing, out = tmp_path / "landing", tmp_path / "out"
    landing.mkdir()
    shutil.copy(_scene(had_dir, manifest, "hydice"), landing / "hydice.mat")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    log = open(tmp_path / "serve.log", "wb")
    serve = subprocess.Popen([sys.executable, "-m", "hsad_scale.cli", "serve", str(landing), "--out", str(out),
                              "--interval", "5", "--port", str(port), "--dask-address", client.scheduler.address],
                             env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        ledger = out / "ledger.json"
        while not (ledger.is_file() and json.loads(ledger.read_text())["processed"]):
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
    finally:
        serve.send_signal(signal.SIGINT)
        try:
            serve.wait(60)
        except subprocess.TimeoutExpired:
            serve.kill()
        log.close()
    entry = next(iter(json.loads((out / "ledger.json").read_text())["processed"].values()))
    assert entry["acquisition"] == "hydice.mat"
    run = json.loads((out / f"hydice-{entry['hash'][:12]}" / "run.json").read_text())
    assert run["prefect"]["api_url"] == f"http://127.0.0.1:{port}/api"
    assert run["dask"]["scheduler"] == client.scheduler.address
    with socket.socket() as sock:  # the local Prefect server stopped with it
        assert sock.connect_ex(("127.0.0.1", port)) != 0
