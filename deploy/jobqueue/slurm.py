"""A Dask cluster for hsad on an HPC system with SLURM (dask-jobqueue): CPU worker jobs and
a GPU worker job, all attached to one scheduler that this script runs.

    pip install dask-jobqueue
    python deploy/jobqueue/slurm.py --jobs 2 --gpu-jobs 1       # on a login node (or in a job)
    # it prints the scheduler address; from another shell on the same file system:
    hsad detect /scratch/scene.zarr --out /scratch/runs/scene --dask-address tcp://HOST:PORT
    hsad sweep /scratch/scene.zarr --grid grid.yaml --out /scratch/sweep --dask-address tcp://HOST:PORT

Settings (partitions, cores, memory, walltime) come from ``jobqueue.yaml`` next to this file;
the scheduler here and every worker job use hsad's Dask configuration
(``hsad_scale/config/dask.yaml``: worker environment, no task queueing, the workers preload
``hsad_scale.tiles`` and ``hsad_scale.learned``), the jobs through ``DASK_CONFIG``. Paths given
to hsad must be visible from the compute nodes (a shared file system, the same Python
environment).
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import dask
import yaml

CONFIG = Path(__file__).with_name("jobqueue.yaml")


def load_config(path: Path = CONFIG) -> None:
    """Make ``jobqueue.yaml`` the defaults of dask's configuration, over dask-jobqueue's own
    (a user's ~/.config/dask settings still win), and hsad's Dask configuration those of the
    scheduler started here (the worker jobs read it through ``DASK_CONFIG``, :func:`prologue`)."""
    import dask_jobqueue  # noqa: F401  (registers its defaults first)

    from hsad_scale.cluster import cluster_config

    dask.config.update_defaults(yaml.safe_load(Path(path).read_text()))
    dask.config.set(cluster_config())


def prologue() -> list[str]:
    """Batch script lines before the worker starts: hsad's Dask configuration for it."""
    from hsad_scale.cluster import CONFIG_FILE

    return [f"export DASK_CONFIG={CONFIG_FILE.parent}"]


def cpu_cluster(**overrides):
    """The SLURMCluster: a scheduler here, CPU worker jobs submitted with ``.scale(jobs=N)``."""
    from dask_jobqueue import SLURMCluster

    return SLURMCluster(**{"job_script_prologue": prologue(), **overrides})


def gpu_job_script(scheduler_address: str, **overrides) -> str:
    """The batch script of a GPU worker job attached to ``scheduler_address``."""
    from dask_jobqueue.slurm import SLURMJob

    options = {key.replace("-", "_"): value for key, value in dask.config.get("hsad.gpu-job").items()}
    options.update(job_script_prologue=prologue(), **overrides)
    return SLURMJob(scheduler=scheduler_address, name="hsad-gpu", **options).job_script()


def submit(script: str) -> str:
    """``sbatch`` a job script; returns sbatch's answer (the job id line)."""
    return subprocess.run(["sbatch"], input=script, text=True, capture_output=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1, help="CPU worker jobs (default 1)")
    parser.add_argument("--gpu-jobs", type=int, default=0, help="GPU worker jobs (default 0)")
    parser.add_argument("--print-scripts", action="store_true", help="print the job scripts and exit")
    args = parser.parse_args()
    load_config()
    with cpu_cluster() as cluster:
        address = cluster.scheduler_address
        if args.print_scripts:
            print(cluster.job_script())
            print(gpu_job_script(address))
            return
        cluster.scale(jobs=args.jobs)
        for _ in range(args.gpu_jobs):
            print("[hsad] GPU worker job:", submit(gpu_job_script(address)))
        print(f"[hsad] Dask scheduler: {address}  dashboard: {cluster.dashboard_link}")
        print("[hsad] use it with --dask-address (or HSAD_DASK_ADDRESS); Ctrl-C ends the cluster")
        try:
            while True:
                time.sleep(60)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
