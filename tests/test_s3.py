"""Object storage through fsspec URLs, against a real S3 server process (moto's standalone
server on 127.0.0.1, started here) and the real client stack (s3fs, botocore): a cube read from
``s3://``, a run written to ``s3://`` (staged, then published with run.json last: nothing under
the destination when a run fails, no temporary prefix left), ``--overwrite`` kept, and a watch
over an ``s3://`` landing prefix."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from hsad_scale.synth import SceneSpec, synth

pytestmark = pytest.mark.slow
s3fs = pytest.importorskip("s3fs")
pytest.importorskip("moto")

BUCKET = "hsad-test"


@pytest.fixture(scope="module")
def s3_env(tmp_path_factory):
    """The environment of a client of the S3 server started here (credentials are moto's dummies)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                  stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def fs(s3_env):
    filesystem = s3fs.S3FileSystem(key=s3_env["AWS_ACCESS_KEY_ID"], secret=s3_env["AWS_SECRET_ACCESS_KEY"],
                                   endpoint_url=s3_env["AWS_ENDPOINT_URL"], skip_instance_cache=True)
    filesystem.mkdir(BUCKET)
    return filesystem


def _hsad(args, cwd, env):
    full = {**{k: v for k, v in os.environ.items() if k != "HSAD_DASK_ADDRESS"}, **env}
    return subprocess.run([sys.executable, "-m", "hsad_scale.cli", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=600)


def test_a_cube_on_s3_scored_into_a_run_on_s3(s3_env, fs, tmp_path):
    cube = synth(tmp_path / "scene.zarr", SceneSpec(48, 48, 16, seed=2), chunk=24)
    fs.put(str(cube), f"{BUCKET}/scenes/scene.zarr", recursive=True)
    out = f"s3://{BUCKET}/runs/scene-rx"
    result = _hsad(["detect", f"s3://{BUCKET}/scenes/scene.zarr", "--out", out], tmp_path, s3_env)
    assert result.returncode == 0, result.stderr
    names = {p.rsplit("/", 1)[-1] for p in fs.ls(f"{BUCKET}/runs/scene-rx")}
    assert {"run.json", "metrics.json", "scores.zarr", "map.png", "report.html", "model"} <= names
    assert [p for p in fs.ls(f"{BUCKET}/runs") if "/." in p] == []  # no temporary prefix left
    record = json.loads(fs.cat(f"{BUCKET}/runs/scene-rx/run.json"))
    assert record["source"] == f"s3://{BUCKET}/scenes/scene.zarr" and record["cube"] == record["source"]
    scores = xr.open_zarr(f"{out}/scores.zarr", consolidated=False,
                          storage_options={"client_kwargs": {"endpoint_url": s3_env["AWS_ENDPOINT_URL"]},
                                           "key": "testing", "secret": "testing"})["score"].values
    local = _hsad(["detect", str(cube), "--out", "local-rx"], tmp_path, s3_env)
    assert local.returncode == 0, local.stderr
    np.testing.assert_array_equal(scores, xr.open_zarr(tmp_path / "local-rx" / "scores.zarr",
                                                       consolidated=False)["score"].values)

    # an existing run is kept without --overwrite: exit 2, one line
    again = _hsad(["detect", f"s3://{BUCKET}/scenes/scene.zarr", "--out", out], tmp_path, s3_env)
    assert again.returncode == 2 and again.stderr.strip().splitlines() == [
        f"hsad: error: {out} already exists (pass --overwrite to replace it)"]


def test_a_failed_run_leaves_nothing_on_s3(s3_env, fs, tmp_path):
    fs.pipe(f"{BUCKET}/scenes/broken.mat", b"MATLAB 5.0 MAT-file, truncated" + bytes(200))
    result = _hsad(["detect", f"s3://{BUCKET}/scenes/broken.mat", "--out", f"s3://{BUCKET}/runs/broken"],
                   tmp_path, s3_env)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("hsad: error:")]
    assert errors == [result.stderr.strip().splitlines()[-1]] and f"s3://{BUCKET}/scenes/broken.mat" in errors[0]
    fs.invalidate_cache()
    assert not fs.exists(f"{BUCKET}/runs/broken")
    assert not [p for p in fs.find(f"{BUCKET}/runs", withdirs=True) if "broken" in p]


def test_watch_an_s3_landing_prefix(s3_env, fs, tmp_path, monkeypatch, had_dir, client, capsys):
    """``hsad watch s3://.../landing/``: the acquisition is fetched and processed once; a second
    pass finds it in the ledger and runs nothing."""
    from hsad_scale.cli import main

    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    fs.put(str(had_dir / "hydice.mat"), f"{BUCKET}/landing/hydice.mat")
    out = tmp_path / "out"
    command = ["watch", f"s3://{BUCKET}/landing/", "--out", str(out), "--dask-address", client.scheduler.address]
    assert main(command) == 0, capsys.readouterr().err
    ledger = json.loads((out / "ledger.json").read_text())
    assert [e["acquisition"] for e in ledger["processed"].values()] == ["hydice.mat"] and not ledger["failed"]
    runs = [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")]
    assert [p.name.split("-")[0] for p in runs] == ["hydice"]
    assert json.loads((runs[0] / "metrics.json").read_text())["auc"] > 0.9
    stamp = (runs[0] / "run.json").stat().st_mtime_ns

    assert main(command) == 0, capsys.readouterr().err
    assert json.loads((out / "ledger.json").read_text())["processed"] == ledger["processed"]
    assert [p for p in out.iterdir() if p.is_dir() and not p.name.startswith(".")] == runs
    assert (runs[0] / "run.json").stat().st_mtime_ns == stamp
