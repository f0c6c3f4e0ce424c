"""The command line's promises (docs/promises.md): refused input is exit 2 with one line and
nothing written; incomplete stores are refused; concurrent runs, signals and stale
temporaries leave no half-written output; listeners stay on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hsad_scale.synth import SceneSpec, synth

CLI = [sys.executable, "-m", "hsad_scale.cli"]


@pytest.fixture(scope="module")
def cube(tmp_path_factory):
    """A small synthetic cube store (64 x 48 pixels, 12 bands, 16-pixel tiles)."""
    return synth(tmp_path_factory.mktemp("rel") / "scene.zarr", SceneSpec(64, 48, 12, seed=3), chunk=16)


def hsad(*args, env: dict | None = None, cwd=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``hsad`` command line in a fresh process (its own TMPDIR when ``env`` sets one)."""
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=cwd)


def error_lines(stderr: str) -> list[str]:
    """stderr less the progress lines (``[hsad] ...``)."""
    return [line for line in stderr.strip().splitlines() if not line.startswith("[hsad]")]


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, one ``hsad: error:`` line (the last line of stderr), no traceback."""
    errors = error_lines(proc.stderr)
    assert proc.returncode == 2, proc.stderr
    assert len(errors) == 1 and errors[0].startswith("hsad: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` with its bytes (names starting with '.' included)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_store(src: Path, dest: Path) -> Path:
    import shutil

    shutil.copytree(src, dest)
    return dest


# --- 1. data that disappears -------------------------------------------------------------

@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_store_with_a_damaged_chunk_is_refused_naming_it(cube, tmp_path, damage):
    store = copy_store(cube, tmp_path / "scene.zarr")
    chunk = store / "cube" / "c" / "0" / "2" / "1"
    if damage == "deleted":
        chunk.unlink()
    else:
        chunk.write_bytes(chunk.read_bytes()[:1000])
    before = snapshot(tmp_path)
    proc = hsad("detect", store, "--out", tmp_path / "run")
    assert_refused(proc, "cube/c/0/2/1")
    assert snapshot(tmp_path) == before


def test_undecodable_chunk_of_a_compressed_store_is_refused(tmp_path, client):
    store = synth(tmp_path / "z.zarr", SceneSpec(32, 32, 6, seed=1), chunk=16, compression="zstd")
    (store / "cube" / "c" / "0" / "1" / "0").write_bytes(b"garbage" * 50)
    proc = hsad("detect", store, "--out", tmp_path / "run", "--dask-address", client.scheduler.address)  # found on a worker
    assert_refused(proc, "cube/c/0/1/0", "cannot be decoded")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


# --- 2. concurrent runs, existing results --------------------------------------------------

def test_two_runs_into_one_destination_give_exactly_one_success(cube, tmp_path, client):
    out = tmp_path / "run"
    args = ["detect", str(cube), "--out", str(out), "--dask-address", client.scheduler.address]
    procs = [subprocess.Popen([*CLI, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=180), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    line = error_lines(refused)
    assert len(line) == 1 and ("is writing" in line[0] or "already exists" in line[0]), refused
    assert (out / "run.json").is_file() and (out / "scores.zarr").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary, no lock file left


def test_lock_held_by_a_live_run_refuses_and_keeps_the_destination(cube, tmp_path):
    from hsad_scale.atomic import destination_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("old results")
    before = snapshot(tmp_path)
    with destination_lock(out):  # as a run writing it now would
        before = snapshot(tmp_path)
        proc = hsad("detect", cube, "--out", out, "--overwrite")
        assert_refused(proc, "is writing", str(out))
        assert snapshot(tmp_path) == before


def test_final_rename_never_replaces_a_destination_that_appeared(tmp_path):
    from hsad_scale.atomic import atomic_path
    from hsad_scale.errors import InputError

    dest = tmp_path / "result.json"
    with pytest.raises(InputError, match="appeared"):
        with atomic_path(dest) as tmp:
            tmp.write_text("new")
            dest.write_text("written by someone else meanwhile")
    assert dest.read_text() == "written by someone else meanwhile"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.json"]


def test_replace_file_replaces_whole_or_keeps_the_old_file(tmp_path):
    from hsad_scale.atomic import replace_file

    dest = tmp_path / "report.html"
    replace_file(dest, "first é")
    replace_file(dest, "second é")
    assert dest.read_text(encoding="utf-8") == "second é"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html"]
    folder = tmp_path / "taken"
    (folder / "inside").mkdir(parents=True)
    with pytest.raises(OSError):  # written, but the rename fails: the temporary is removed
        replace_file(folder, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "taken"]


def test_evaluate_json_keeps_an_existing_file_without_overwrite(cube, tmp_path):
    import json

    scores = tmp_path / "scores.npy"
    np.save(scores, np.random.default_rng(0).random((64, 48)).astype(np.float32))
    target = tmp_path / "m.json"
    target.write_text("precious")
    assert_refused(hsad("evaluate", scores, cube, "--json", target), "already exists")
    assert target.read_text() == "precious"
    proc = hsad("evaluate", scores, cube, "--json", target, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert 0.0 <= json.loads(target.read_text())["auc"] <= 1.0


# --- 3. every user-caused failure: exit 2, one line, before any cluster starts -------------

def _model_folder(folder: Path, bands: int, weights: bool = True, **config) -> Path:
    """A saved AE model folder as ``hsad detect`` writes it (model.json + model.safetensors
    with as many float32 values as the settings give), written without PyTorch."""
    import json

    from safetensors.numpy import save_file

    from hsad_scale.checks import network_parameters
    from hsad_scale.detectors.ae_config import FORMAT_VERSION, PRESETS

    settings = {**PRESETS["default-ae"].to_dict(), "members": 1, **config}
    folder.mkdir(parents=True)
    meta = {"format_version": FORMAT_VERSION, "bands": bands, "config": settings,
            "scaling": {"mode": "standardise", "offset": [0.0] * bands, "scale": [1.0] * bands}}
    (folder / "model.json").write_text(json.dumps(meta))
    if weights:
        from hsad_scale.detectors.ae_config import config_from_dict

        n = network_parameters(config_from_dict(settings), bands)
        save_file({"w": np.zeros(n, np.float32)}, str(folder / "model.safetensors"))
    return folder


def _corrupt_model(tmp_path: Path) -> Path:
    folder = _model_folder(tmp_path / "corrupt-model", 12)
    (folder / "model.json").write_text('{"format_version": 1, "bands": ')
    return folder


def _huge_model(tmp_path: Path) -> Path:
    folder = _model_folder(tmp_path / "huge-model", 12, weights=False, width=2**31, latent=2**30)
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    return folder


def _truncated_weights(tmp_path: Path) -> Path:
    folder = _model_folder(tmp_path / "truncated-weights", 12)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    return folder


def _read_only_folder(tmp_path: Path) -> Path:
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    readonly.chmod(0o555)
    return readonly


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _refusal(case: str, tmp_path: Path) -> tuple[list, str]:
    """Options of a refused detect command line (each writes its own input) and a word of its error."""
    cases = {
        "unknown metric": lambda: (["--method", "ae", "--metric", "resid-mahal,bogus"], "bogus"),
        "metric for rx": lambda: (["--metric", "mse"], "--metric"),
        "absurd widths": lambda: (["--method", "ae", "--set", "width=1000000000000", "--set", "latent=1000000000"],
                                  "GiB"),
        "config not a mapping": lambda: (["--method", "ae", "--config", _file(tmp_path / "l.yaml", b"- epochs: 3\n")],
                                         "mapping"),
        "config not UTF-8": lambda: (["--method", "vae", "--config",
                                      _file(tmp_path / "latin1.yaml", "epochs: 3  # caf\xe9\n".encode("latin-1"))],
                                     "UTF-8"),
        "out in a read-only folder": lambda: (["--out", _read_only_folder(tmp_path) / "run"], "cannot write"),
        "out under a file": lambda: (["--out", _file(tmp_path / "plain", b"x") / "run"], "not a folder"),
        "garbage dask address": lambda: (["--dask-address", "not an address"], "scheduler address"),
        "garbage dashboard address": lambda: (["--dashboard-address", "everywhere"], "HOST:PORT"),
        "model without weights": lambda: (["--model", _model_folder(tmp_path / "nw", 12, weights=False)], "weights"),
        "corrupt model.json": lambda: (["--model", _corrupt_model(tmp_path)], "not a saved hsad model"),
        "model.json sizes beyond memory": lambda: (["--model", _huge_model(tmp_path)], "GiB"),
        "model for another band count": lambda: (["--model", _model_folder(tmp_path / "b7", 7)], "7 bands"),
        "truncated weights": lambda: (["--model", _truncated_weights(tmp_path)], "truncated"),
        "bad choice": lambda: (["--method", "svm"], "invalid choice"),
        "zero repeats": lambda: (["--method", "ae", "--repeats", "0"], "--repeats"),
    }
    return cases[case]()


def _one_pixel_scene(tmp_path: Path, cube: Path) -> Path:
    import xarray as xr

    from hsad_scale.cube import write_cube

    single = xr.open_zarr(cube, consolidated=False).isel(y=slice(0, 1), x=slice(0, 1)).chunk({"y": 1, "x": 1})
    return write_cube(single, tmp_path / "one-pixel.zarr")


REFUSALS = ["unknown metric", "metric for rx", "absurd widths", "config not a mapping", "config not UTF-8",
            "out in a read-only folder", "out under a file", "garbage dask address", "garbage dashboard address",
            "model without weights", "corrupt model.json", "model.json sizes beyond memory",
            "model for another band count", "truncated weights", "1 x 1 scene", "bad choice", "zero repeats"]


@pytest.mark.parametrize("case", REFUSALS)
def test_refused_input_exits_2_at_once_and_writes_nothing(case, cube, tmp_path):
    if case == "out in a read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes in read-only folders")
    if case == "1 x 1 scene":
        src, (extra, needle) = _one_pixel_scene(tmp_path, cube), ([], "1 x 1")
    else:
        src, (extra, needle) = cube, _refusal(case, tmp_path)
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("old results")
    if "--out" not in extra:
        extra = [*extra, "--out", out, "--overwrite"]
    before = snapshot(tmp_path)
    proc = hsad("detect", src, *extra, env={"TMPDIR": str(tmp_path / "existing")})
    assert_refused(proc, needle)
    assert "Dask dashboard" not in proc.stderr and "[hsad] " not in proc.stderr  # before any cluster or stage
    assert snapshot(tmp_path) == before  # existing destination byte-identical, nothing else written


def test_all_invalid_cube_exits_2(tmp_path, client):
    import dask.array as da
    import xarray as xr

    from hsad_scale.cube import write_cube

    nan = da.full((6, 24, 24), np.nan, dtype=np.float32, chunks=(6, 16, 16))
    write_cube(xr.Dataset({"cube": (("band", "y", "x"), nan)}, coords={"y": np.arange(24), "x": np.arange(24)}),
               tmp_path / "nan.zarr")
    proc = hsad("detect", tmp_path / "nan.zarr", "--out", tmp_path / "run", "--dask-address", client.scheduler.address)
    assert_refused(proc, "valid pixel")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nan.zarr"]


@pytest.mark.parametrize("preset", ["default-ae", "default-vae", "study-ae", "study-ae-4l", "study-vae"])
def test_network_size_check_counts_the_real_networks_parameters(preset):
    """The memory check (made without PyTorch) counts what PyTorch builds."""
    from hsad_scale.checks import network_parameters
    from hsad_scale.detectors.ae_config import PRESETS
    from hsad_scale.detectors.autoencoder import AENet

    config = PRESETS[preset]
    net = AENet(config, 23)
    assert network_parameters(config, 23) == sum(p.numel() for p in net.parameters())


# --- 4. interruptions ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def larger_cube(tmp_path_factory):
    """A cube large enough for a run to be mid-pass when signalled (384 x 384 x 48, 64-pixel tiles)."""
    return synth(tmp_path_factory.mktemp("rel-large") / "large.zarr", SceneSpec(384, 384, 48, seed=2), chunk=64)


def _start_and_wait_for_stage(src: Path, out: Path, tmpdir: Path, *extra, stage: str = "rx-stats ...") -> tuple:
    """``hsad detect`` started in its own session (as from a terminal), read until ``stage``."""
    proc = subprocess.Popen([*CLI, "detect", str(src), "--out", str(out), *extra], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TMPDIR": str(tmpdir)}, start_new_session=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if stage in line:
            return proc, seen
    raise AssertionError(f"the run ended before {stage!r}: {''.join(seen)}")


def _session_processes(sid: int) -> list:
    import psutil

    alive = []
    for process in psutil.process_iter():
        try:
            if process.pid != os.getpid() and os.getsid(process.pid) == sid and process.status() != "zombie":
                alive.append(process.pid)
        except (OSError, psutil.Error):
            pass
    return alive


@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_signal_stops_the_run_and_leaves_nothing(larger_cube, tmp_path, signum):
    """SIGINT to the whole process group (a terminal's Ctrl-C) or SIGTERM to the command (what
    kill and batch schedulers send): exit 130 / 143 with one line, no traceback, no run folder,
    no temporary or lock file, no process left, nothing left in TMPDIR."""
    import signal
    import time

    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    proc, _ = _start_and_wait_for_stage(larger_cube, out, tmpdir)
    if signum == "SIGINT":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        os.kill(proc.pid, signal.SIGTERM)
    rest = proc.stderr.read()
    code = proc.wait(timeout=60)
    assert code == {"SIGINT": 130, "SIGTERM": 143}[signum], rest
    errors = error_lines(rest)
    assert errors == [f"hsad: interrupted by {signum}: stopped, temporary output removed"], rest
    assert list(out.parent.iterdir()) == []  # no run folder, no .run.tmp-*, no .run.lock
    deadline = time.monotonic() + 15
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_processes(proc.pid) == []  # workers and forkserver gone too
    assert list(tmpdir.iterdir()) == []  # no pymp-*, no dask-scratch-space


def test_next_run_removes_temporaries_of_a_killed_run(larger_cube, tmp_path, client):
    """After SIGKILL (nothing can run) the next run into the same destination removes the
    dead run's temporary output, says so in one line, and succeeds."""
    import signal

    out = tmp_path / "runs" / "run"
    out.parent.mkdir()
    address = ["--dask-address", client.scheduler.address]
    proc, _ = _start_and_wait_for_stage(larger_cube, out, tmp_path, *address)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    left = [p.name for p in out.parent.iterdir()]
    assert any(name.startswith(f".run.tmp-{proc.pid}-") for name in left), left
    again = hsad("detect", larger_cube, "--out", out, *address)
    assert again.returncode == 0, again.stderr
    warnings = [line for line in again.stderr.splitlines() if line.startswith("[hsad] warning:")]
    assert len(warnings) == 1 and f"pid {proc.pid}" in warnings[0] and "interrupted" in warnings[0], again.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == ["run"]
    assert (out / "run.json").is_file()


def test_runs_leave_no_temporary_folders_in_tmpdir(cube, tmp_path):
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    env = {"TMPDIR": str(tmpdir)}
    assert hsad("detect", cube, "--out", tmp_path / "run", env=env).returncode == 0
    assert list(tmpdir.iterdir()) == []
    assert_refused(hsad("detect", cube, "--out", tmp_path / "run", env=env), "already exists")
    assert_refused(hsad("detect", cube, "--out", tmp_path / "run2", "--method", "ae", "--metric", "x", env=env))
    assert list(tmpdir.iterdir()) == []


# --- 5. network: every listener on loopback --------------------------------------------------

LOOPBACK = {"127.0.0.1", "::1"}


def _listeners(sid: int) -> set:
    """(address, port) of every listening TCP socket of the processes of session ``sid``."""
    import psutil

    found = set()
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) != sid:
                continue
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port))
        except (OSError, psutil.Error):
            pass
    return found


def test_detect_listens_on_loopback_only_and_moves_off_a_taken_dashboard_port(larger_cube, tmp_path):
    import socket

    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 8787))
        holder.listen()
    except OSError:  # taken already (another run on this machine): taken either way
        holder.close()
        holder = None
    try:
        proc, seen = _start_and_wait_for_stage(larger_cube, tmp_path / "run", tmp_path)
        listening = _listeners(proc.pid)
        rest = proc.stderr.read()
        assert proc.wait(timeout=180) == 0, rest
    finally:
        if holder is not None:
            holder.close()
    stderr = "".join(seen) + rest
    assert listening and {ip for ip, _ in listening} <= LOOPBACK, listening  # scheduler, workers, nannies, dashboard
    link = next(line for line in stderr.splitlines() if "Dask dashboard:" in line)
    assert link.startswith("[hsad] Dask dashboard: http://127.0.0.1:") and ":8787/" not in link, stderr
    assert "already in use" not in stderr and "warn" not in stderr.lower(), stderr


def test_serve_listens_on_loopback_only(tmp_path):
    import signal
    import socket
    import time

    (tmp_path / "landing").mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen([*CLI, "serve", str(tmp_path / "landing"), "--out", str(tmp_path / "out"),
                             "--interval", "3600", "--port", str(port)], stderr=subprocess.PIPE, text=True,
                            env=env, start_new_session=True)
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "[hsad] serving" in line:
                break
        else:
            raise AssertionError("".join(seen))
        deadline = time.monotonic() + 20
        listening = _listeners(proc.pid)
        while ("127.0.0.1", port) not in listening and time.monotonic() < deadline:
            time.sleep(0.5)
            listening = _listeners(proc.pid)
        assert ("127.0.0.1", port) in listening, (listening, "".join(seen))  # the Prefect server it started
        assert {ip for ip, _ in listening} <= LOOPBACK, listening
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


# --- 6. a finished run is never thrown away by a side product ------------------------------

def _strip_store(tmp_path: Path, cube: Path, name: str, rows: slice, cols: slice, no_anomalies: bool = False) -> Path:
    import xarray as xr

    from hsad_scale.cube import write_cube

    ds = xr.open_zarr(cube, consolidated=False).isel(y=rows, x=cols)
    if no_anomalies:
        ds["ground_truth"] = ds["ground_truth"] * 0
    ds = ds.chunk({"y": 16, "x": 16})
    for var in ds.variables.values():
        var.encoding.pop("chunks", None)
        var.encoding.pop("preferred_chunks", None)
    return write_cube(ds, tmp_path / name)


@pytest.mark.parametrize("shape", ["one row", "one column"])
def test_single_line_scene_lands_with_every_product(cube, tmp_path, shape, client):
    import json

    import xarray as xr

    truth = xr.open_zarr(cube, consolidated=False)["ground_truth"].values
    y, x = (int(i[0]) for i in np.nonzero(truth))  # a line through an anomaly
    rows, cols = (slice(y, y + 1), slice(None)) if shape == "one row" else (slice(None), slice(x, x + 1))
    store = _strip_store(tmp_path, cube, "line.zarr", rows, cols)
    proc = hsad("detect", store, "--out", tmp_path / "run", "--dask-address", client.scheduler.address)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    for name in ("scores.zarr", "metrics.json", "map.png", "roc.png", "report.html"):
        assert (run / name).exists(), name
    assert json.loads((run / "run.json").read_text())["skipped"] == {}
    assert "warning" not in proc.stderr


def test_ground_truth_without_anomalies_lands_the_scores_and_says_why_metrics_are_missing(cube, tmp_path, client):
    import json

    store = _strip_store(tmp_path, cube, "clean.zarr", slice(None), slice(None), no_anomalies=True)
    proc = hsad("detect", store, "--out", tmp_path / "run", "--dask-address", client.scheduler.address)
    assert proc.returncode == 0, proc.stderr
    run = tmp_path / "run"
    assert (run / "scores.zarr").is_dir() and (run / "map.png").is_file() and (run / "report.html").is_file()
    assert not (run / "metrics.json").exists() and not (run / "roc.png").exists()
    record = json.loads((run / "run.json").read_text())
    assert "no anomaly pixels" in record["skipped"]["metrics"] and record["metrics"] is None
    assert "no anomaly pixels" in (run / "report.html").read_text()
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("[hsad] warning:")]
    assert len(warnings) == 1 and "metrics" in warnings[0], proc.stderr
    # evaluating against that ground truth is still refused
    assert_refused(hsad("evaluate", run / "scores.zarr", store), "no anomaly pixels")


def test_a_figure_that_fails_is_skipped_and_recorded(cube, tmp_path, client, monkeypatch, capsys):
    import json

    from hsad_scale import plots
    from hsad_scale.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("no display for this figure")

    monkeypatch.setattr(plots, "plot_roc", broken)
    assert main(["detect", str(cube), "--out", str(tmp_path / "run"), "--dask-address", client.scheduler.address]) == 0
    run = tmp_path / "run"
    assert (run / "metrics.json").is_file() and (run / "map.png").is_file() and not (run / "roc.png").exists()
    assert json.loads((run / "run.json").read_text())["skipped"] == {"roc.png": "RuntimeError: no display for this figure"}
    assert "roc.png" in (run / "report.html").read_text()
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if line.startswith("[hsad] warning:")]) == 1


# --- 7. watch: one line per failed acquisition -------------------------------------------------

def test_watch_prints_one_line_per_failed_acquisition(tmp_path, client):
    import json

    landing = tmp_path / "landing"
    landing.mkdir()
    (landing / "broken.mat").write_bytes(np.random.default_rng(0).bytes(4000))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([*CLI, "watch", str(landing), "--out", str(tmp_path / "out"), "--dask-address",
                           client.scheduler.address], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "|" not in proc.stderr, proc.stderr  # no Prefect/distributed log lines
    failed = [line for line in proc.stderr.splitlines() if line.startswith("[hsad] failed:")]
    assert [line.split(":")[1].strip() for line in failed] == ["broken.mat"], proc.stderr
    assert error_lines(proc.stderr) == [line for line in proc.stderr.splitlines() if line.startswith("hsad: error:")]
    assert len(error_lines(proc.stderr)) == 1 and "1 of 1" in error_lines(proc.stderr)[0]
    ledger = json.loads((tmp_path / "out" / "ledger.json").read_text())
    assert len(json.dumps(ledger)) > 0 and "broken.mat" in json.dumps(ledger)


# --- models load without running code --------------------------------------------------------

class _Payload:
    """Unpickling this writes a marker file: what a tampered model would try."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


@pytest.mark.parametrize("kind", ["ae weights", "rx statistics"])
def test_tampered_models_are_refused_without_running_their_code(cube, tmp_path, kind):
    import pickle

    marker = tmp_path / "pwned"
    if kind == "ae weights":
        model = _model_folder(tmp_path / "model", 12)
        (model / "model.safetensors").write_bytes(pickle.dumps(_Payload(str(marker))))
        needle = "safetensors"
    else:
        model = tmp_path / "rx_stats.npz"
        np.savez(model, count=np.array([_Payload(str(marker))], dtype=object), mean=np.zeros(12),
                 scatter=np.eye(12))
        needle = "no RX statistics"
    proc = hsad("detect", cube, "--model", model, "--out", tmp_path / "run")
    assert_refused(proc, needle)
    assert not marker.exists() and not (tmp_path / "run").exists()


def _session_processes(session: int) -> list:
    import psutil

    found = []
    for process in psutil.process_iter(["pid"]):
        try:
            if os.getsid(process.pid) == session and process.pid != session:
                found.append(process)
        except (ProcessLookupError, PermissionError):
            pass
    return found


def _cmdline(process) -> str:
    import psutil

    try:
        return " ".join(process.cmdline())
    except psutil.Error:  # ended meanwhile
        return ""


def test_flow_bad_input_found_after_the_prefect_api_was_launched_leaves_no_server(had_dir, tmp_path):
    """``detect --flow`` launches its temporary Prefect API right after the source and
    destination checks; an option refused after that (here ``--repeats 0``) is still exit 2
    with one line, writes nothing, and the server it launched is gone with the command."""
    import time

    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = tmp_path / "run"
    proc = subprocess.Popen([*CLI, "detect", str(had_dir / "abu-airport-1.mat"), "--out", str(out), "--flow",
                             "--repeats", "0"], stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    session = proc.pid
    proc.wait(timeout=120)
    stderr = proc.stderr.read()
    assert proc.returncode == 2, stderr
    assert stderr.strip().splitlines() == ["hsad: error: --repeats must be at least 1, got 0"], stderr
    # no process of the command's session (the server it launched) outlives it
    deadline = time.monotonic() + 30
    while _session_processes(session) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _session_processes(session), [_cmdline(p) for p in _session_processes(session)]
    assert not out.exists() and not list(tmp_path.iterdir())
