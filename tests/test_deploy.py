"""The deploy/ files are valid for their tools: prefect.yaml (Prefect's own model of it, the
flows its entrypoints name, their parameters), the compose file (the compose specification),
the Kubernetes manifests (Kubernetes schemas; the Dask operator's resources) and the
dask-jobqueue example (its batch scripts)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import yaml

DEPLOY = Path(__file__).parents[1] / "deploy"
ROOT = DEPLOY.parent


def _load(name):
    return yaml.safe_load((DEPLOY / name).read_text())


# --------------------------------------------------------------------------------------
# prefect.yaml


def test_prefect_yaml_deployments_name_real_flows_and_parameters(monkeypatch):
    from prefect.flows import load_flow_from_entrypoint

    config = _load("prefect.yaml")
    try:
        from prefect.cli.deploy._models import PrefectYamlModel
    except ImportError:  # the model moved: the structural checks below still apply
        PrefectYamlModel = None
    if PrefectYamlModel is not None:
        model = PrefectYamlModel.model_validate(config)
        assert [d.name for d in model.deployments] == ["detect", "sweep", "watch-landing"]
    monkeypatch.chdir(ROOT)  # entrypoints are relative to the repository root
    flows = {}
    for deployment in config["deployments"]:
        flow = load_flow_from_entrypoint(deployment["entrypoint"])
        flows[deployment["name"]] = flow
        accepted = set(flow.parameters.properties)
        assert set(deployment.get("parameters", {})) <= accepted, deployment["name"]
        pool = deployment["work_pool"]
        assert pool["name"] == "hsad" and pool["job_variables"]["env"]["HSAD_DASK_ADDRESS"]
    assert {f.name for f in flows.values()} == {"detect", "sweep", "watch"}
    watch = next(d for d in config["deployments"] if d["name"] == "watch-landing")
    flows["watch-landing"].validate_parameters(watch["parameters"])  # complete, typed
    assert watch["schedules"] == [{"interval": 300}] and watch["concurrency_limit"] == 1
    try:
        from prefect.cli.deploy._models import RawScheduleConfig

        RawScheduleConfig.model_validate(watch["schedules"][0])
    except ImportError:
        pass
    steps = config["pull"]
    assert list(steps[0]) == ["prefect.deployments.steps.set_working_directory"]


# --------------------------------------------------------------------------------------
# docker compose


def _interpolate(text: str) -> str:
    """``${NAME:-default}`` and ``${NAME}`` replaced as docker compose does (environment unset)."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", text)


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


def test_compose_file_is_a_valid_compose_project():
    text = _interpolate((DEPLOY / "docker-compose.yml").read_text())
    compose = yaml.safe_load(text)  # YAML merge keys (<<) resolved, as docker compose does
    services = compose["services"]
    assert {"scheduler", "worker", "gpu-worker", "prefect-server", "serve"} <= set(services)
    gpu = services["gpu-worker"]
    command = gpu["command"]
    assert command[:2] == ["dask", "worker"] and command[command.index("--resources") + 1] == "GPU=1"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "--resources" not in services["worker"]["command"]
    for name, service in services.items():
        assert service["image"] and "/data" in service["volumes"][0], name
        if name not in ("scheduler", "prefect-server"):
            assert service["environment"]["HSAD_DASK_ADDRESS"] == "tcp://scheduler:8786", name
    assert services["serve"]["command"][:2] == ["hsad", "serve"]
    build = services["scheduler"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()
    import compose_spec as spec  # validates against the compose specification
    project = spec.PyCompose.from_yaml(yaml.dump(compose, Dumper=_NoAliases))
    assert set(project.service_names()) == set(services)


def test_dockerfile_installs_the_package():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    assert lines[[i for i, l in enumerate(lines) if l and not l.startswith("#")][0]].startswith("FROM python:3.11")
    assert any(l.startswith("COPY flows") for l in lines) and any("pip install ." in l for l in lines)


# --------------------------------------------------------------------------------------
# Kubernetes


def _manifests():
    docs = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _validate(resource: dict) -> None:
    import kubernetes_validate as kv  # checks against Kubernetes schemas
    kv.validate(resource, kv.latest_version(), strict=True)


def _pod(name: str, spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def test_kubernetes_manifests_are_valid():
    docs = _manifests()
    kinds = [d["kind"] for _, d in docs]
    assert {"DaskCluster", "DaskWorkerGroup", "PersistentVolumeClaim", "Deployment"} <= set(kinds)
    for name, doc in docs:
        assert doc["metadata"]["name"], name
        if doc["apiVersion"].startswith("kubernetes.dask.org/"):
            continue
        _validate(doc)


def test_dask_operator_resources_hold_valid_pod_and_service_specs():
    docs = dict((d["kind"], d) for _, d in _manifests())
    cluster, gpu = docs["DaskCluster"], docs["DaskWorkerGroup"]
    for doc in (cluster, gpu):
        assert doc["apiVersion"] == "kubernetes.dask.org/v1"
    # the operator's schema: scheduler {spec: PodSpec, service: ServiceSpec}, worker {replicas, spec: PodSpec}
    assert set(cluster["spec"]) <= {"idleTimeout", "scheduler", "worker"}
    assert set(cluster["spec"]["scheduler"]) == {"spec", "service"}
    assert isinstance(cluster["spec"]["worker"]["replicas"], int)
    assert gpu["spec"]["cluster"] == cluster["metadata"]["name"] and set(gpu["spec"]) == {"cluster", "worker"}
    _validate(_pod("scheduler", cluster["spec"]["scheduler"]["spec"]))
    _validate({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "hsad-scheduler"},
               "spec": cluster["spec"]["scheduler"]["service"]})
    _validate(_pod("worker", cluster["spec"]["worker"]["spec"]))
    _validate(_pod("gpu-worker", gpu["spec"]["worker"]["spec"]))
    gpu_container = gpu["spec"]["worker"]["spec"]["containers"][0]
    args = gpu_container["args"]
    assert args[args.index("--resources") + 1] == "GPU=1" and gpu_container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "--resources" not in cluster["spec"]["worker"]["spec"]["containers"][0]["args"]
    serve = next(d for _, d in _manifests() if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in serve["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HSAD_DASK_ADDRESS"] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"


# --------------------------------------------------------------------------------------
# dask-jobqueue


def _slurm_module():
    spec = importlib.util.spec_from_file_location("hsad_slurm_example", DEPLOY / "jobqueue" / "slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_jobqueue_example_writes_cpu_and_gpu_batch_scripts():
    config = _load("jobqueue/jobqueue.yaml")
    assert config["jobqueue"]["slurm"]["cores"] == config["jobqueue"]["slurm"]["processes"]  # 1 thread per worker
    slurm = _slurm_module()
    slurm.load_config()  # adds jobqueue/hsad defaults to dask's config (nothing else reads them)
    with slurm.cpu_cluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
        cpu_script = cluster.job_script()
        gpu_script = slurm.gpu_job_script(cluster.scheduler_address)
    assert "#SBATCH -p compute" in cpu_script and "--nthreads 1" in cpu_script and "GPU=1" not in cpu_script
    assert "#SBATCH -p gpu" in gpu_script and "#SBATCH --gres=gpu:1" in gpu_script
    worker_line = next(line for line in gpu_script.splitlines() if "dask_worker" in line or "dask worker" in line)
    words = shlex.split(worker_line)
    assert words[words.index("--resources") + 1] == "GPU=1"
