"""The README's commands run as written, from a fresh working directory: the quick start (the
Makefile's demo recipe on a smaller scene), the real-scene commands, the AE/VAE commands (with
small training settings added), the xarray snippet, and the one-machine flow commands of
deploy/README.md. ``../shared/data/had`` is the real scenes' folder, linked next to the
fresh directory as it sits next to the repository."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
HSAD = [sys.executable, "-m", "hsad_scale.cli"]
#: Training kept short; nothing else of a command changes.
SMALL_TRAINING = ["--set", "max_steps=20", "--set", "epochs=1", "--set", "members=1"]


def _blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def _command_lines(text: str) -> list[str]:
    """``hsad ...`` / ``make ...`` lines of the bash blocks, comments removed; synopses
    (``[--option]``, upper-case placeholders) left out."""
    lines = []
    for block in _blocks(text, "bash"):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if not line.startswith(("hsad ", "make ")) or "[" in line or re.search(r"\b[A-Z]{3,}\b", line):
                continue
            lines.append(line)
    return lines


def _small(words: list[str]) -> list[str]:
    """AE/VAE commands with short training (and 2 repeats instead of 5)."""
    if words[:2] != ["hsad", "detect"] or not ({"ae", "vae"} & set(words) or "--preset" in words):
        return words
    words = ["2" if w == "5" and words[i - 1] == "--repeats" else w for i, w in enumerate(words)]
    return words + SMALL_TRAINING


def _demo_recipe() -> list[str]:
    """``make demo``'s hsad commands (Makefile), on a 64 x 64 x 20 scene instead of 512 x 512 x 200."""
    text = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^demo:.*?\n((?:\t.*\n)+)", text, flags=re.M).group(1)
    lines = [line.strip().replace("$(VENV)/bin/hsad", "hsad") for line in recipe.splitlines()]
    lines = [line.replace("--size 512x512 --bands 200", "--size 64x64 --bands 20") for line in lines]
    return [line for line in lines if line.startswith(("hsad ", "mkdir "))]


def _run(words: list[str], cwd: Path, env: dict) -> None:
    command = HSAD + words[1:] if words[0] == "hsad" else words
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{shlex.join(words)} failed ({result.returncode}):\n{result.stderr[-3000:]}"


@pytest.fixture
def fresh_cwd(tmp_path, had_dir):
    """A new working directory with ``../shared/data/had`` next to it, as beside the repository."""
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "data" / "had").symlink_to(had_dir.resolve())
    cwd = tmp_path / "work"
    cwd.mkdir()
    return cwd


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("HSAD_DASK_ADDRESS",)}
    env.update(MPLBACKEND="Agg", **extra)
    return env


def test_version():
    result = subprocess.run([*HSAD, "--version"], capture_output=True, text=True)
    from hsad_scale.cli import _version

    assert result.returncode == 0 and result.stdout.strip() == f"hsad {_version()}"


@pytest.mark.slow
def test_the_readme_commands_run_as_written(fresh_cwd):
    readme = (ROOT / "README.md").read_text()
    lines = _command_lines(readme)
    assert lines[:2] == ["make demo", "make test"], lines
    env = _env()
    for line in _demo_recipe():  # make demo, smaller (make test is this suite)
        _run(shlex.split(line), fresh_cwd, env)
    assert (fresh_cwd / "demo" / "run-rx" / "metrics.json").is_file()
    commands = [shlex.split(line) for line in lines[2:]]
    assert any("--model" in c for c in commands) and any("vae" in c for c in commands)
    for words in commands:
        if "other-acquisition.zarr" in words:  # "another acquisition": the same scene, ingested
            _run(["hsad", "ingest", "../shared/data/had/hydice.mat", "other-acquisition.zarr"], fresh_cwd, env)
        _run(_small(words), fresh_cwd, env)
    for run in ("hydice-rx", "hydice-ae", "hydice-study-vae", "other-ae"):
        assert (fresh_cwd / "runs" / run / "run.json").is_file(), run
    for snippet in _blocks(readme, "python"):  # the accessor on demo/scene.zarr
        result = subprocess.run([sys.executable, "-c", snippet], cwd=fresh_cwd, env=env, capture_output=True,
                                text=True, timeout=300)
        assert result.returncode == 0, f"{snippet}\n{result.stderr[-3000:]}"


@pytest.mark.slow
def test_the_deploy_readme_one_machine_commands_run_as_written(fresh_cwd, had_dir):
    """deploy/README.md, section 1 (all but ``hsad serve``, which runs until stopped), with
    ``scene.mat`` a real scene, its grid file, and short training; runs recorded by one
    Prefect API (the test harness's) instead of a temporary one per command."""
    import shutil

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    import yaml

    text = (ROOT / "deploy" / "README.md").read_text()
    section = text.split("## 1.")[1].split("## 2.")[0]
    commands = [shlex.split(line) for line in _command_lines(section)]
    assert [c[1] for c in commands] == ["detect", "sweep", "watch", "serve"], commands
    grid = yaml.safe_load(_blocks(section, "yaml")[0])
    grid["fixed"].update(max_steps=20, members=1, holdout=0.0, patience=0)
    (fresh_cwd / "grid.yaml").write_text(yaml.safe_dump(grid))
    shutil.copy(had_dir / "hydice.mat", fresh_cwd / "scene.mat")
    (fresh_cwd / "landing").mkdir()
    shutil.copy(had_dir / "abu-beach-3.mat", fresh_cwd / "landing" / "beach.mat")
    with prefect_test_harness(server_startup_timeout=180):
        env = _env(PREFECT_API_URL=PREFECT_API_URL.value())
        for words in commands[:-1]:
            if words[1] == "sweep":
                _run(["hsad", "ingest", "scene.mat", "scene.zarr"], fresh_cwd, env)
                words = ["1" if w == "5" and words[i - 1] == "--repeats" else w for i, w in enumerate(words)]
            _run(words, fresh_cwd, env)
    assert (fresh_cwd / "runs" / "scene" / "run.json").is_file()
    assert (fresh_cwd / "sweeps" / "ae" / "results.csv").is_file()
    assert (fresh_cwd / "runs" / "ledger.json").is_file()


def test_missing_parent_folders_of_an_output_are_made_and_removed_again_on_failure(tmp_path):
    from hsad_scale.atomic import atomic_path
    from hsad_scale.errors import InputError

    with pytest.raises(RuntimeError), atomic_path(tmp_path / "runs" / "a" / "out") as tmp:
        tmp.mkdir()
        raise RuntimeError("the run failed")
    assert list(tmp_path.iterdir()) == []  # nothing left behind, not even the parents
    with atomic_path(tmp_path / "runs" / "a" / "out") as tmp:
        tmp.mkdir()
    assert (tmp_path / "runs" / "a" / "out").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"), atomic_path(tmp_path / "file" / "out"):
        pass
