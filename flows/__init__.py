"""Prefect flows around the hsad_scale library: ``detect``, ``sweep`` and ``watch``.

The flows are thin: every task runs one library function, so ``hsad detect`` and the
``detect`` flow write the same run folder. By default a flow runs on this machine: its Dask
work on a LocalCluster, its runs recorded by a local Prefect API (Prefect's ephemeral server
when a flow is called from Python; a temporary ``prefect server start`` that the command line
launches first thing, see :class:`PrefectStart`). ``dask_address`` (or ``HSAD_DASK_ADDRESS``)
points a flow at an existing Dask scheduler and ``PREFECT_API_URL`` at a Prefect server.
Only this package imports Prefect; this module imports it lazily, so the command line can
start Prefect's API before it loads anything heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def flow_run_record() -> dict:
    """The current flow run for run.json: id, name, flow, and where it is recorded
    (``api_url``: the configured Prefect API; None for this command's temporary API, which is
    gone once the command ends, with ``database``: where the run is kept)."""
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_API_URL

    record = {"flow": flow_run.flow_name, "flow_run_id": str(flow_run.id), "flow_run_name": flow_run.name}
    if _temporary_api["url"] is not None and PREFECT_API_URL.value() == _temporary_api["url"]:
        return {**record, "api_url": None, "database": history_database()}
    return {**record, "api_url": PREFECT_API_URL.value() or "ephemeral"}


#: The URL of the temporary API that :meth:`PrefectStart.settings` points Prefect at (None outside).
_temporary_api: dict = {"url": None}


def history_database() -> str:
    """Where a local Prefect API (this command's temporary one, Prefect's ephemeral server,
    a ``prefect server start`` on the same profile) keeps flow runs: the path of the active
    profile's SQLite file, else the database's URL without user or password
    (``PREFECT_SERVER_DATABASE_CONNECTION_URL``)."""
    from urllib.parse import urlsplit

    from prefect.settings import get_current_settings

    url = get_current_settings().server.database.connection_url.get_secret_value()
    if url.startswith("sqlite"):
        return url.split(":///", 1)[-1]
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def temporary_notice(database: str) -> str:
    """What ``--flow`` (and sweep, watch) says when no Prefect API is configured: one line."""
    return (f"[hsad] Prefect: no PREFECT_API_URL set: this run is recorded in Prefect's local database ({database}) "
            "through a temporary API that ends with the command (no link to follow). To browse the runs: "
            "`prefect server start` with the same Prefect home (its UI, also started by `hsad serve`, on "
            "http://127.0.0.1:4200 by default); to record on a running server: "
            "PREFECT_API_URL=http://127.0.0.1:4200/api")


class PrefectStart:
    """Prefect's API for a flow run from the command line, made ready while the rest loads
    and the Dask cluster starts: ``PREFECT_API_URL`` (environment, Prefect profile or settings)
    when set; else a temporary local API server (``prefect server start`` without UI,
    scheduler or telemetry, on Prefect's default database like its ephemeral server), which
    :meth:`stop` ends. The server process is launched first thing (before Prefect is even
    imported) so that its start-up overlaps ours, rather than after it as when a flow run
    starts Prefect's ephemeral server. Everything else happens in the calling thread, in
    :meth:`wait`: importing modules from a second thread while this one imports others can
    hand either a partially initialised module (Python's import-lock deadlock avoidance;
    it broke ``--flow`` once, in ``fsspec.compression``).

    ``port`` and ``ui`` are for ``hsad serve``: the server on that port (reused when one
    already answers there; else started when :meth:`wait` is called), with its UI and
    services (the scheduler that scheduled runs need), the default being a free port and
    neither."""

    def __init__(self, startup_timeout: float = 120, port: int | None = None, ui: bool = False):
        self.url: str | None = None
        self.process = None
        self._log = None
        self._port = port
        self.ui = ui
        self.error: BaseException | None = None
        self.startup_timeout = startup_timeout
        self._resolved = False
        if port is None and not os.environ.get("PREFECT_API_URL") and "prefect" not in sys.modules:
            self._launch()  # most likely needed: the profile is checked once Prefect is imported

    def _launch(self) -> None:
        import socket
        import subprocess
        import tempfile

        if self._port is None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self._port = sock.getsockname()[1]
        quiet = [] if self.ui else ["--no-ui", "--no-services", "--analytics-off", "--log-level", "ERROR"]
        self._log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(self._port),
             *quiet], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log)

    def _run(self):
        try:
            from prefect.settings import PREFECT_API_URL

            configured = PREFECT_API_URL.value()
            if configured:
                self._terminate()
                self.url = configured
                return
            if self.process is None:
                if self._port is not None and _healthy(_local_url(self._port)):
                    self.url = _local_url(self._port)  # a server already answers there: reused
                    return
                if self.ui:
                    print(f"[hsad] starting a Prefect server on http://127.0.0.1:{self._port} (UI and API)",
                          file=sys.stderr)
                self._launch()
            self.url = self._ready(_local_url(self._port))
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def _ready(self, url: str) -> str:
        import time

        deadline = time.monotonic() + self.startup_timeout
        while True:
            if _healthy(url):
                return url
            if self.process.poll() is not None:
                self._log.seek(0)
                raise RuntimeError("the local Prefect API server did not start: "
                                   + self._log.read().decode(errors="replace")[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError(f"the local Prefect API server did not answer within {self.startup_timeout:.0f} s")
            time.sleep(0.1)

    def wait(self) -> str:
        """The API URL, once it answers."""
        if not self._resolved:
            self._resolved = True
            self._run()
        if self.error is not None:
            self.stop()
            raise self.error
        return self.url

    @property
    def temporary(self) -> bool:
        """Whether the API is this command's own temporary server (it ends with the command; the runs stay in
        the profile's database, :func:`history_database`)."""
        return self.process is not None

    @contextlib.contextmanager
    def settings(self):
        """Prefect settings pointing at the API for the block. With a temporary API, one line
        says so and names the database that keeps the runs (no link to its UI: it would be
        dead once the command ends)."""
        from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

        url = self.wait()
        updates = {PREFECT_API_URL: url}
        if self.temporary:
            updates[PREFECT_UI_URL] = ""  # Prefect logs no "View at" link
            # no flow run heartbeats: only a server's services read them (to mark crashed
            # runs) and this one runs none; their thread, which sleeps in 1 s steps, also
            # held each flow run's end by 0-1 s (0.6 s measured on a 100 x 100 detect)
            updates["flows.heartbeat_frequency"] = None
            print(temporary_notice(history_database()), file=sys.stderr, flush=True)
        with temporary_settings(updates=updates):
            _temporary_api["url"] = url if self.temporary else None
            try:
                yield url
            finally:
                _temporary_api["url"] = None

    def stop(self, timeout: float = 0) -> None:
        """Send the API what Prefect still holds (logs, events), then stop the temporary
        server if this command started one. Sent to a temporary server too: otherwise, in a
        process that lives on after the command (``main([...])`` called from Python, a test
        session), Prefect's log and event workers keep retrying a server that is gone, and at
        interpreter exit wait on it. ``timeout``: seconds to wait for the server to end
        before it is killed (0: no waiting, it shuts down on its own)."""
        try:
            if "prefect" not in sys.modules:  # nothing was sent through it
                raise LookupError
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10, at_exit=False)
            EventsWorker.drain_all(timeout=10, at_exit=False)
        except Exception:  # best effort: the run itself is complete
            pass
        self._terminate(timeout)

    def _terminate(self, timeout: float = 0) -> None:
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            if timeout:
                try:
                    self.process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.process.kill()
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _local_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api"


def _healthy(url: str) -> bool:
    """Whether the Prefect API at ``url`` answers its health check."""
    import httpx

    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start_prefect() -> PrefectStart:
    """Launch Prefect's temporary API server if one will be needed (see :class:`PrefectStart`)."""
    return PrefectStart()


@contextlib.contextmanager
def local_run(dask_address: str | None = None, start_cluster: bool = True, prefect: PrefectStart | None = None):
    """For the command line: the Dask scheduler address a flow run should use, with the
    LocalCluster (when no address is given and ``start_cluster``; else None: the flow starts
    one when it needs it) started while Prefect's API gets ready (``prefect``, or started
    now), and Prefect's settings pointing at that API. Cluster and temporary API server live
    until the block ends."""
    from hsad_scale import cluster

    prefect = prefect or start_prefect()
    address = dask_address or os.environ.get(cluster.ADDRESS_ENV)
    # the in-process scheduler's INFO logs would reach Prefect's console handler (through the
    # root logger); distributed sets its level when imported, so import it first
    import distributed  # noqa: F401

    logging.getLogger("distributed").setLevel(logging.ERROR)
    with contextlib.ExitStack() as stack:
        stack.callback(prefect.stop)
        ours = address is None and start_cluster
        if ours:
            address = stack.enter_context(cluster.dask_client(None)).scheduler.address
        stack.enter_context(prefect.settings())
        if ours:  # its scheduler logs here: as quiet as in `hsad detect`
            logging.getLogger("distributed").setLevel(logging.ERROR)
        yield address
