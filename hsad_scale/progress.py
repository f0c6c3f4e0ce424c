"""Progress of long stages on stderr: where a run is, on a terminal and in a log.

On a terminal, one line redrawn in place (at most ten times a second) while a stage runs;
when stderr is not a terminal (scheduled runs, CI, ``2> log``), one plain line every
``HSAD_PROGRESS_INTERVAL`` seconds (default 10) with the stage, the fraction done, the rate
and, for training, the steps and the last loss::

    [hsad] progress: rx-stats 41% (26/64 tasks), 5.2 tasks/s, 10 s elapsed
    [hsad] progress: train-ae 63% (756/1200 steps), 240 steps/s, loss 0.0153, 10 s elapsed

What is counted: the tasks of the Dask graphs submitted while the stage runs (polled from
the scheduler's task groups), the tasks of a local-threads computation (a dask callback:
ingest, synth), and the training steps that AE/VAE trainings report from the workers
(Dask events on the topic :data:`TOPIC`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time

INTERVAL_ENV = "HSAD_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0
#: Dask event topic on which trainings report ``{"run", "step", "total", "loss"}``.
TOPIC = "hsad-progress"
#: Seconds between two training reports of one run.
TRAINING_REPORT_SECONDS = 0.5
_TTY_REDRAW = 0.1


def interval() -> float:
    """Seconds between two lines when stderr is not a terminal (``HSAD_PROGRESS_INTERVAL``)."""
    try:
        value = float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL))
    except ValueError:
        return DEFAULT_INTERVAL
    return value if value > 0 else DEFAULT_INTERVAL


class Reporter:
    """The progress of one stage: ``poll`` (a function returning ``(done, total)`` of the
    stage's tasks, or None) is asked from a background thread; :meth:`training` adds what
    trainings report. Use it as a context manager; nothing is written once it closes."""

    def __init__(self, stage: str, poll=None, stream=None, unit: str = "tasks"):
        self.stage, self.poll, self.unit = stage, poll, unit
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = _TTY_REDRAW if self.tty else interval()
        self.start = time.monotonic()
        self.done = self.total = 0
        self.runs: dict = {}  # training run -> (step, total, loss)
        self._unwritten = False  # a training report came after the last line
        self._drawn = False
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=f"progress-{stage}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if not self.tty and self._unwritten:
            # a training's last report came after the last line (a training shorter than the
            # interval, or its final step arriving just before the stage ends): a log still
            # gets its steps and loss once
            self._write()
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def tasks(self, done: int, total: int) -> None:
        with self._lock:
            # finished tasks never come back: counts that lag between polls, or task groups the
            # scheduler has forgotten, do not make the stage go backwards
            done = max(done, self.done)
            self.done, self.total = done, max(total, done)

    def training(self, event: dict) -> None:
        """One training report ``{"run", "step", "total", "loss"}``."""
        with self._lock:
            run, step = event.get("run", 0), int(event["step"])
            if step >= self.runs.get(run, (0,))[0]:  # events may arrive out of order
                self.runs[run] = (step, int(event["total"]), event.get("loss"))
                self._unwritten = True

    def line(self) -> str:
        """What the stage has done so far, in one line."""
        elapsed = time.monotonic() - self.start
        with self._lock:
            if self.runs:
                done = sum(s for s, _, _ in self.runs.values())
                total = sum(t for _, t, _ in self.runs.values())
                losses = [loss for _, _, loss in self.runs.values() if loss is not None]
                unit, extra = "steps", f", loss {sum(losses) / len(losses):.4g}" if losses else ""
            else:
                done, total, unit, extra = self.done, self.total, self.unit, ""
        if not total:  # nothing counted (work in this process): the time it has taken
            return f"{self.stage} running, {elapsed:.0f} s elapsed"
        rate = done / elapsed if elapsed > 0 else 0.0
        return (f"{self.stage} {100 * done / total:.0f}% ({done}/{total} {unit}), {rate:.3g} {unit}/s{extra}, "
                f"{elapsed:.0f} s elapsed")

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            if self.poll is not None:
                with contextlib.suppress(Exception):  # the cluster is closing: nothing to count
                    counts = self.poll()
                    if counts is not None:
                        self.tasks(*counts)
            if self._stop.is_set():
                return
            self._write()

    def _write(self) -> None:
        with self._lock:
            self._unwritten = False
        if self.tty:
            self.stream.write(f"\r\x1b[K[hsad] {self.line()}")
            self._drawn = True
        else:
            self.stream.write(f"[hsad] progress: {self.line()}\n")
        self.stream.flush()


def cluster_tasks(client):
    """A poll function for :class:`Reporter`: ``(done, total)`` of the tasks the scheduler
    has been given since this call (from its task groups; a group the scheduler has dropped
    since the last poll had finished: it counts as done)."""
    baseline = _group_counts(client)
    seen: dict = {}

    def poll():
        now = _group_counts(client)
        for name in seen.keys() - now.keys():
            seen[name] = (seen[name][0], seen[name][0])
        seen.update(now)
        done = total = 0
        for name, (n, finished) in seen.items():
            n0, finished0 = baseline.get(name, (0, 0))
            total += max(n - n0, 0)
            done += max(finished - finished0, 0)
        return done, total

    return poll


def _group_counts(client) -> dict:
    def counts(dask_scheduler):  # nested: sent by value, the scheduler needs no hsad_scale
        finished = ("memory", "erred", "released", "forgotten")
        return {name: (sum(group.states.values()), sum(group.states.get(s, 0) for s in finished))
                for name, group in dask_scheduler.task_groups.items()}

    return client.run_on_scheduler(counts)


@contextlib.contextmanager
def on_cluster(stage: str, client):
    """Progress of ``stage`` while the block runs: the cluster's new tasks and the training
    steps reported on :data:`TOPIC`."""
    try:
        poll = cluster_tasks(client)
    except Exception:  # an old or restricted scheduler: training reports only
        poll = None
    with Reporter(stage, poll) as reporter:
        client.subscribe_topic(TOPIC, lambda event: reporter.training(event[1]))
        try:
            yield reporter
        finally:
            with contextlib.suppress(Exception):
                client.unsubscribe_topic(TOPIC)


@contextlib.contextmanager
def local_tasks(stage: str):
    """Progress of a computation on local threads (``dask.compute(..., scheduler="threads")``)
    started in the block: a dask callback counts its tasks."""
    from dask.callbacks import Callback

    with Reporter(stage) as reporter:
        counts = {"done": 0, "total": 0}

        def start_state(dsk, state):
            counts["total"] += sum(len(state[k]) for k in ("ready", "waiting", "running")) + len(state["finished"])
            reporter.tasks(counts["done"], counts["total"])

        def posttask(key, result, dsk, state, worker_id):
            counts["done"] += 1
            reporter.tasks(counts["done"], counts["total"])

        with Callback(start_state=start_state, posttask=posttask):
            yield reporter


def report_training(run: int, step: int, total: int, loss) -> None:
    """Report a training's step (on a Dask worker: an event on :data:`TOPIC` that the client
    shows; elsewhere nothing). ``loss``: the mean loss of the recent steps, or None."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return
    worker.log_event(TOPIC, {"run": run, "step": step, "total": total,
                             "loss": None if loss is None else float(loss)})
