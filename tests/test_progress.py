"""Progress of long stages: a line redrawn on a terminal, and with stderr piped (a log) one
line per HSAD_PROGRESS_INTERVAL seconds with stage, fraction and rate (training: steps and loss)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import time

import pytest

from hsad_scale import progress
from hsad_scale.synth import SceneSpec, synth

LINE = re.compile(r"^\[hsad\] progress: (?P<stage>.+?) (?P<pct>\d+)% \((?P<done>\d+)/(?P<total>\d+) (?P<unit>\w+)\), "
                  r"(?P<rate>[\d.e+]+) (?P=unit)/s(?P<extra>.*), (?P<elapsed>\d+) s elapsed$")

RUNNING = re.compile(r"^\[hsad\] progress: .+ running, \d+ s elapsed$")  # before anything is counted


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_interval_with_fraction_and_rate(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.2")
    stream = io.StringIO()
    counts = iter(range(100))
    with progress.Reporter("rx-stats", poll=lambda: (next(counts), 40), stream=stream):
        time.sleep(0.9)
    lines = stream.getvalue().splitlines()
    assert 3 <= len(lines) <= 5, lines
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    assert [int(m["done"]) for m in parsed] == list(range(len(lines)))
    assert {m["stage"] for m in parsed} == {"rx-stats"} and {m["total"] for m in parsed} == {"40"}
    assert "\r" not in stream.getvalue()


def test_a_terminal_gets_one_line_redrawn_and_cleared():
    stream = _Terminal()
    with progress.Reporter("score", poll=lambda: (3, 4), stream=stream):
        time.sleep(0.35)
    text = stream.getvalue()
    assert text.count("\r\x1b[K[hsad] score 75% (3/4 tasks)") >= 2 and "\n" not in text
    assert text.endswith("\r\x1b[K")  # the stage's "done" line takes its place


def test_training_reports_show_steps_and_loss():
    reporter = progress.Reporter("train-ae", stream=io.StringIO())
    reporter.training({"run": 0, "step": 30, "total": 100, "loss": 0.5})
    reporter.training({"run": 1, "step": 50, "total": 100, "loss": 0.25})
    line = reporter.line()
    assert line.startswith("train-ae 40% (80/200 steps)") and "loss 0.375" in line


def test_a_training_report_after_the_last_line_is_written_when_the_stage_ends(monkeypatch):
    """A training shorter than the interval (its only report, the last step, arrives
    between two lines) still leaves one line with its steps and loss in a log."""
    monkeypatch.setenv(progress.INTERVAL_ENV, "30")
    stream = io.StringIO()
    with progress.Reporter("train-ae", stream=stream) as reporter:
        reporter.training({"run": 0, "step": 1000, "total": 1000, "loss": 0.0125})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and LINE.match(lines[0]), lines
    assert LINE.match(lines[0])["unit"] == "steps" and lines[0].endswith(", loss 0.0125, 0 s elapsed"), lines
    stream = io.StringIO()
    with progress.Reporter("rx-stats", poll=lambda: (1, 2), stream=stream):
        pass  # no training report: nothing more than the lines of each interval
    assert stream.getvalue() == ""


def _hsad(args, cwd, interval="0.1"):
    env = {**os.environ, progress.INTERVAL_ENV: interval}
    env.pop("HSAD_DASK_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "hsad_scale.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_stages_report_progress_with_stderr_piped(tmp_path):
    result = _hsad(["synth", "scene.zarr", "--size", "512x512", "--bands", "64", "--chunk", "64"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[hsad] progress:")]
    assert all(LINE.match(line) or RUNNING.match(line) for line in lines), result.stderr
    writing = [LINE.match(line) for line in lines if LINE.match(line)]
    assert writing and all(m["stage"] == "writing scene.zarr" and m["unit"] == "tasks" for m in writing), \
        result.stderr

    result = _hsad(["detect", "scene.zarr", "--method", "ae", "--out", "runs/ae", "--set", "max_steps=1000",
                    "--set", "members=2"], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("[hsad] progress:")]
    stages = {}
    for line in lines:
        match = LINE.match(line)
        if match:
            stages.setdefault(match["stage"], []).append(match)
    assert {"scaling-stats", "ae-feature-stats"} <= set(stages), result.stderr
    training = stages.get("train-ae", [])
    steps = [m for m in training if m["unit"] == "steps"]
    assert steps and all(re.match(r", loss [\d.e+-]+$", m["extra"]) for m in steps), result.stderr
    assert all(int(m["total"]) == 1000 for m in steps)  # one training run of max_steps (members train together)
    for matches in stages.values():
        done = [int(m["done"]) for m in matches]
        assert done == sorted(done) and all(0 <= int(m["pct"]) <= 100 for m in matches)
    assert "\r" not in result.stderr  # no terminal: no redraws
