"""A real external Dask cluster, as a team runs one: ``dask scheduler`` and ``dask worker``
processes started here on 127.0.0.1, each in its own working directory, and ``hsad``
commands given RELATIVE paths from a third one. The scheduler must never open anything
under the data folder (it may run where the data is not mounted): every open it makes is
recorded by an audit hook preloaded into it, and its open files are polled with psutil."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import xarray as xr
import yaml

from hsad_scale.synth import SceneSpec, synth

pytestmark = pytest.mark.slow

AE_FAST = ["epochs=1", "max_steps=20", "members=1", "holdout=0", "patience=0"]
#: A name no other path holds: any path the scheduler opens with it in is under the data folder.
DATA_NAME = "hsad-data-5c1e9"

#: Preloaded into the scheduler: logs every path it opens or lists that names the data folder
#: (absolute or relative: a relative one would be a bug too), through a descriptor opened
#: before the hook (os.write raises no audit event).
AUDIT_PRELOAD = f'''
import os, sys
_fd = os.open(os.environ["HSAD_TEST_OPEN_LOG"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
def _hook(event, args):
    if event in ("open", "os.listdir", "os.scandir") and args and isinstance(args[0], (str, bytes, os.PathLike)):
        path = os.fsdecode(args[0])
        if {DATA_NAME!r} in path:
            os.write(_fd, (event + " " + path + "\\n").encode())
sys.addaudithook(_hook)
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_workers(address: str, n: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=timeout)


@pytest.fixture(scope="module")
def external_cluster(tmp_path_factory):
    """(scheduler address, scheduler process, audit log): a scheduler and two single-threaded
    workers, each started in its own empty working directory."""
    base = tmp_path_factory.mktemp("external")
    scheduler_cwd, worker_cwd = base / "scheduler-cwd", base / "worker-cwd"
    scheduler_cwd.mkdir()
    worker_cwd.mkdir()
    preload = base / "audit_opens.py"
    preload.write_text(AUDIT_PRELOAD)
    log = base / "scheduler-opens.log"
    from hsad_scale.cluster import CONFIG_FILE

    # hsad's one Dask configuration file, as the SLURM jobs read it (the images: /etc/dask)
    env = {**os.environ, "HSAD_TEST_OPEN_LOG": str(log), "DASK_CONFIG": str(CONFIG_FILE.parent)}
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = subprocess.Popen([sys.executable, "-m", "dask", "scheduler", "--host", "127.0.0.1", "--port",
                                  str(port), "--dashboard-address", "127.0.0.1:0", "--preload", str(preload)],
                                 cwd=scheduler_cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers = subprocess.Popen([sys.executable, "-m", "dask", "worker", address, "--host", "127.0.0.1",
                                "--nworkers", "2", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0"],
                               cwd=worker_cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_workers(address, 2)
        yield address, psutil.Process(scheduler.pid), log
    finally:
        for process in (workers, scheduler):
            process.terminate()
        for process in (workers, scheduler):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture(scope="module")
def user_cwd(tmp_path_factory):
    """The user's working directory: ``hsad-data-.../scene.zarr`` (with ground truth)."""
    cwd = tmp_path_factory.mktemp("user")
    synth(cwd / DATA_NAME / "scene.zarr", SceneSpec(96, 96, 20, seed=5), chunk=32)
    return cwd


class OpenFilesWatch:
    """Polls a process's open files (psutil) while the block runs; ``seen``: those under ``folder``."""

    def __init__(self, process: psutil.Process, folder: Path):
        self.process, self.folder, self.seen = process, str(folder), set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self):
        while not self._stop.is_set():
            try:
                self.seen.update(f.path for f in self.process.open_files() if f.path.startswith(self.folder))
            except psutil.Error:
                pass
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _hsad(args: list[str], cwd: Path, timeout: float = 400) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HSAD_DASK_ADDRESS", "PREFECT_API_URL")}
    return subprocess.run([sys.executable, "-m", "hsad_scale.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _scheduler_opens(log: Path) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_dask_configuration_file_tunes_the_scheduler_and_workers(external_cluster):
    from distributed import Client

    from hsad_scale.cluster import WORKER_ENV

    def _worker_state():  # nested: sent by value (the workers cannot import this test module)
        import os
        import sys

        names = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "OMP_NUM_THREADS")
        return ({name: os.environ.get(name) for name in names},
                "hsad_scale.learned" in sys.modules and "torch" in sys.modules)

    address, _, _ = external_cluster
    with Client(address) as client:
        states = client.run(_worker_state)
        saturation = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.WORKER_SATURATION)
    assert len(states) == 2 and saturation == float("inf")
    for env, preloaded in states.values():
        assert preloaded and env == {k: str(WORKER_ENV[k]) for k in env}


def test_detect_rx_and_ae_with_relative_paths_on_an_external_cluster(external_cluster, user_cwd):
    address, scheduler, log = external_cluster
    (user_cwd / "runs").mkdir(exist_ok=True)
    for method, extra in (("rx", []), ("ae", [arg for s in AE_FAST for arg in ("--set", s)])):
        result = _hsad(["detect", f"{DATA_NAME}/scene.zarr", "--method", method, "--out", f"runs/{method}",
                        "--dask-address", address, *extra], user_cwd)
        assert result.returncode == 0, result.stderr
        run = user_cwd / "runs" / method
        record = json.loads((run / "run.json").read_text())
        assert record["dask"]["scheduler"] == address and len(record["dask"]["workers"]) == 2
        assert Path(record["source"]).is_absolute()
        scores = xr.open_zarr(run / "scores.zarr", consolidated=False)["score"].values
        assert scores.shape == (96, 96) and np.isfinite(scores).all()
        assert json.loads((run / "metrics.json").read_text())["auc"] > 0.8
    assert not list(user_cwd.glob("runs/.*tmp*"))  # no temporary left behind


def test_the_scheduler_opens_nothing_under_the_data_folder(external_cluster, user_cwd):
    address, scheduler, log = external_cluster
    with OpenFilesWatch(scheduler, user_cwd / DATA_NAME) as watch:
        result = _hsad(["detect", f"{DATA_NAME}/scene.zarr", "--out", "scheduler-check", "--dask-address", address],
                       user_cwd)
    assert result.returncode == 0, result.stderr
    assert not watch.seen, watch.seen
    assert _scheduler_opens(log) == []


def test_sweep_with_relative_paths_on_an_external_cluster(external_cluster, user_cwd):
    address, _, _ = external_cluster
    (user_cwd / "grid.yaml").write_text(yaml.safe_dump({"method": "ae", "fixed": {"max_steps": 20, "members": 1,
                                                                                 "holdout": 0.0, "patience": 0},
                                                        "grid": {"epochs": [1, 2]}}))
    result = _hsad(["sweep", f"{DATA_NAME}/scene.zarr", "--grid", "grid.yaml", "--out", "sweep",
                    "--dask-address", address], user_cwd)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(user_cwd / "sweep" / "results.csv")
    assert len(table) == 2 and table["error"].isna().all() and table["auc"].between(0.5, 1).all()


def test_a_sweep_whose_trials_fail_is_a_failed_flow_run(external_cluster, user_cwd, tmp_path):
    """A compressed cube whose chunk files hold garbage of the right size (no check before the
    trials can tell without decoding every chunk): every trial fails on the workers; the
    results are written with each reason, the flow run ends Failed with the count, the command
    exits 1."""
    address, _, _ = external_cluster
    broken = synth(tmp_path / "broken.zarr", SceneSpec(64, 64, 20, seed=6), chunk=32, compression="zstd")
    for chunk_file in [p for p in sorted((broken / "cube" / "c").rglob("*")) if p.is_file()][-2:]:
        size = chunk_file.stat().st_size
        chunk_file.write_bytes((bytes(range(256)) * (size // 256 + 1))[:size])
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"method": "ae", "fixed": {"max_steps": 5, "members": 1, "holdout": 0.0,
                                                              "patience": 0}, "grid": {"epochs": [1, 2]}}))
    result = _hsad(["sweep", str(broken), "--grid", str(grid), "--out", "failed-sweep", "--dask-address", address],
                   tmp_path)
    assert result.returncode == 1, result.stderr
    assert "every trial failed; results written to" in result.stderr.strip().splitlines()[-1]
    table = pd.read_csv(tmp_path / "failed-sweep" / "results.csv")
    assert len(table) == 2 and table["error"].notna().all()

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from flows.sweep import sweep

    with prefect_test_harness(server_startup_timeout=180):
        state = sweep(cube=str(broken), grid=str(grid), out=str(tmp_path / "flow-sweep"), dask_address=address,
                      return_state=True)
        assert state.is_failed() and state.message.startswith("every trial failed"), state
        from prefect import get_client
        from prefect.client.schemas.filters import FlowRunFilter

        deadline = time.monotonic() + 30  # task runs are recorded from events: poll a little
        with get_client(sync_client=True) as client:
            while True:
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
                    id={"any_": [state.state_details.flow_run_id]}))
                trials = [r for r in runs if r.name.startswith("trial-")]
                if (len(trials) == 2 and all(r.state.is_final() for r in trials)) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        assert len(trials) == 2 and all(r.state.is_failed() for r in trials), [(r.name, r.state) for r in trials]


def test_a_flow_without_a_prefect_api_names_where_its_history_is_kept(user_cwd, tmp_path):
    """``--flow`` with no PREFECT_API_URL: one line says the API is temporary and names the
    database that keeps the run, and that database does hold the completed flow run of
    run.json; no link to the temporary UI, no dead API URL in run.json, no distributed INFO
    logs on the terminal. Prefect's home is a fresh folder: its database is created there."""
    import sqlite3

    from flows import temporary_notice

    home = tmp_path / "prefect-home"
    result = subprocess.run([sys.executable, "-m", "hsad_scale.cli", "detect", f"{DATA_NAME}/scene.zarr",
                             "--out", "runs/flow", "--flow"], cwd=user_cwd, capture_output=True, text=True,
                            timeout=400, env={**{k: v for k, v in os.environ.items()
                                                 if k not in ("HSAD_DASK_ADDRESS", "PREFECT_API_URL")},
                                              "PREFECT_HOME": str(home)})
    assert result.returncode == 0, result.stderr
    database = home / "prefect.db"
    notice = temporary_notice(str(database))
    lines = result.stderr.splitlines()
    assert lines.count(notice) == 1 and "hsad serve" in notice and "prefect server start" in notice
    links = [line for line in lines if "http://" in line and "dashboard" not in line and line != notice]
    assert not links and not [line for line in lines if "View at" in line], result.stderr
    assert not [line for line in lines if "distributed." in line], result.stderr
    record = json.loads((user_cwd / "runs" / "flow" / "run.json").read_text())
    assert record["prefect"]["flow"] == "detect"
    assert record["prefect"]["api_url"] is None and record["prefect"]["database"] == str(database)
    with contextlib.closing(sqlite3.connect(database)) as db:
        kept = db.execute("SELECT state_type FROM flow_run WHERE id = ?",
                          (record["prefect"]["flow_run_id"],)).fetchall()
    assert kept == [("COMPLETED",)]
