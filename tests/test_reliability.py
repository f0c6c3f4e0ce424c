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
