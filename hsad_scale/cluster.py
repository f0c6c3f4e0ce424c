"""Dask clients: a LocalCluster of worker processes by default, or an existing scheduler."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from hsad_scale.errors import InputError

ADDRESS_ENV = "HSAD_DASK_ADDRESS"
#: The one Dask configuration file of hsad clusters (worker tuning, task placement, preloads):
#: read here for the LocalCluster; the deployment files (deploy/) use the same file.
CONFIG_FILE = Path(__file__).with_name("config") / "dask.yaml"


def cluster_config() -> dict:
    """:data:`CONFIG_FILE` as flat Dask settings (``{"distributed.scheduler.worker-saturation": inf, ...}``)."""
    import yaml

    data = yaml.safe_load(CONFIG_FILE.read_text())
    flat = {}

    def walk(prefix, node):
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict) and name != "distributed.nanny.pre-spawn-environ":
                walk(name, value)
            else:
                flat[name] = value

    walk("", data)
    return flat


#: Worker environment (from :data:`CONFIG_FILE`): malloc tuning for reused tile buffers, BLAS
#: single-threaded per worker process.
WORKER_ENV = cluster_config()["distributed.nanny.pre-spawn-environ"]
#: The LocalCluster's settings: :data:`CONFIG_FILE` less the workers' preloads (its workers
#: fork from :func:`start_worker_server`'s process, which has imported them already; a
#: preload would make every RX worker import PyTorch).
LOCAL_CLUSTER_CONFIG = {k: v for k, v in cluster_config().items() if k != "distributed.worker.preload"}

#: What every worker of a LocalCluster starts with: the modules its tile tasks import.
WORKER_MODULES = ("distributed", "hsad_scale.tiles", "hsad_scale.cube")
#: ... and what AE/VAE runs add: PyTorch (hsad_scale.learned imports it).
LEARNED_WORKER_MODULES = (*WORKER_MODULES, "hsad_scale.learned")


def start_worker_server(modules: tuple[str, ...] = WORKER_MODULES) -> bool:
    """Start the process that LocalCluster workers fork from (multiprocessing's forkserver),
    with :data:`WORKER_ENV` set and ``modules`` imported once. A spawned worker imports them
    itself (1-2.5 s each on 2 vCPUs, with PyTorch) and takes ~1 s to exit; a forked one starts
    and exits in well under 0.1 s. The CLI calls this first thing, so that the modules load
    while the command imports its own; :func:`dask_client` calls it too. Does nothing when the
    server runs already (its modules stay those it was started with); returns False where
    there is no forkserver (not POSIX, or it cannot start), and workers are then spawned."""
    import multiprocessing
    from multiprocessing import forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    before = {name: os.environ.get(name) for name in WORKER_ENV}
    os.environ.update({name: str(value) for name, value in WORKER_ENV.items()})
    try:
        # workers ignore SIGINT (a terminal's Ctrl-C): the command stops them (hsad_scale.worker_signals)
        multiprocessing.get_context("forkserver").set_forkserver_preload(["hsad_scale.worker_signals", *modules])
        forkserver.ensure_running()
    except OSError:  # no socket for the server here (e.g. a read-only temporary folder): spawn workers
        return False
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    return True


LOOPBACK = "127.0.0.1"
#: Where a LocalCluster's dashboard listens by default: this machine only.
DASHBOARD_ADDRESS = f"{LOOPBACK}:8787"


def free_dashboard_address(address: str | None = None) -> str:
    """``address`` (default :data:`DASHBOARD_ADDRESS`; a bare ``:PORT`` means loopback), or
    the same host on a free port when that port is taken (instead of distributed's warning)."""
    import socket

    host, _, port = (address or DASHBOARD_ADDRESS).rpartition(":")
    host = host or LOOPBACK
    if port in ("", "0"):
        return f"{host}:0"
    try:
        with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as sock:
            sock.bind((host.strip("[]"), int(port)))
    except OSError:
        return f"{host}:0"
    return f"{host}:{port}"


def remove_multiprocessing_tempdir() -> None:
    """Remove multiprocessing's ``pymp-*`` folder of this process (it holds the forkserver's
    socket), which its exit handler would remove: for processes that end with ``os._exit``."""
    import sys

    if "multiprocessing" not in sys.modules:
        return
    import multiprocessing

    tempdir = multiprocessing.current_process()._config.get("tempdir")
    if tempdir:
        shutil.rmtree(tempdir, ignore_errors=True)


def local_cluster_wanted(address: str | None) -> bool:
    """Whether :func:`dask_client` will start a LocalCluster for ``address``."""
    return not (address or os.environ.get(ADDRESS_ENV))


@contextlib.contextmanager
def dask_client(address: str | None = None, n_workers: int | None = None, threads_per_worker: int = 1,
                dashboard_address: str | None = None):
    """Yield a ``distributed.Client``: to ``address`` (or ``$HSAD_DASK_ADDRESS``) when given,
    else to a new LocalCluster with one single-threaded worker process per core, forked from
    :func:`start_worker_server`'s process where there is one. The LocalCluster's scheduler,
    workers and nannies listen on 127.0.0.1 only, and so does its dashboard unless
    ``dashboard_address`` (``HOST:PORT``, e.g. ``0.0.0.0:8787``) opens it; by default
    (:data:`DASHBOARD_ADDRESS`) on port 8787, or a free port when 8787 is taken."""
    from distributed import Client, LocalCluster

    if not local_cluster_wanted(address):
        address = address or os.environ[ADDRESS_ENV]
        try:
            client = Client(address, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
        with client:
            yield client
        return
    import dask

    workers = n_workers or max(1, os.cpu_count() or 1)
    config = dict(LOCAL_CLUSTER_CONFIG)
    if start_worker_server():
        config["distributed.worker.multiprocessing-method"] = "forkserver"
    # workers log a failed task ("Compute Failed", with its traceback) at ERROR: the error
    # itself reaches this process (bad input as InputError: one line), so workers stay quiet
    scratch = tempfile.mkdtemp(prefix="hsad-dask-")  # the workers' folders, removed with the cluster
    try:
        with dask.config.set({**config, "temporary-directory": scratch}), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Port .* is already in use")  # the link says where it is
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                   host=LOOPBACK, dashboard_address=free_dashboard_address(dashboard_address),
                                   silence_logs=logging.CRITICAL, local_directory=scratch)
        with cluster, Client(cluster) as client:
            try:
                yield client
            finally:
                quiet_worker_logs(client)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _silence_worker_logs() -> None:
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def quiet_worker_logs(client) -> None:
    """Silence the workers' ``distributed`` logs once their work is done, before their
    LocalCluster closes: a heartbeat in flight while the scheduler closes is otherwise logged
    as an ERROR with a traceback (dask/distributed#7105), after a run that succeeded."""
    with contextlib.suppress(Exception):  # workers already gone: nothing to silence
        client.run(_silence_worker_logs)


def dashboard_link(client) -> str | None:
    try:
        return client.dashboard_link
    except Exception:  # no dashboard (bokeh missing, or disabled)
        return None


def describe(client) -> dict:
    """Scheduler address, dashboard link and workers (name, threads, resources) for run.json."""
    if client is None:
        return {"scheduler": "local threads"}
    info = client.scheduler_info()
    workers = [
        {"address": addr, "name": str(w.get("name")), "nthreads": w.get("nthreads"), "resources": w.get("resources", {})}
        for addr, w in info.get("workers", {}).items()
    ]
    return {"scheduler": client.scheduler.address, "dashboard": dashboard_link(client), "workers": workers}


def _import_torch() -> None:
    import torch  # noqa: F401  (imported for its side effect)


def warm_up_scoring(client) -> list:
    """Make every worker import PyTorch (for scoring) as a low-priority task; returns the
    futures, which the caller keeps until the tasks have run."""
    return [client.submit(_import_torch, workers=[address], pure=False, priority=-10, key=f"import-torch-{address}")
            for address in client.scheduler_info()["workers"]]
