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


def test_undecodable_chunk_of_a_compressed_store_is_refused(tmp_path):
    store = synth(tmp_path / "z.zarr", SceneSpec(32, 32, 6, seed=1), chunk=16, compression="zstd")
    (store / "cube" / "c" / "0" / "1" / "0").write_bytes(b"garbage" * 50)
    proc = hsad("detect", store, "--out", tmp_path / "run")
    assert_refused(proc, "cube/c/0/1/0", "cannot be decoded")
    assert not (tmp_path / "run").exists() and not list(tmp_path.glob(".run.*"))


# --- 2. concurrent runs, existing results --------------------------------------------------

def test_two_runs_into_one_destination_give_exactly_one_success(cube, tmp_path):
    out = tmp_path / "run"
    procs = [subprocess.Popen([*CLI, "detect", str(cube), "--out", str(out)], stdout=subprocess.PIPE,
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
