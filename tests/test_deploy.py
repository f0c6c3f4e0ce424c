"""The deploy/ files are valid for their tools: prefect.yaml (Prefect's own model of it, the
flows its entrypoints name, their parameters), the compose file (the compose specification),
the Kubernetes manifests (Kubernetes schemas; the Dask operator's resources) and the
dask-jobqueue example (its batch scripts)."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path

import dask
import pytest
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
        if name == "scheduler":  # the scheduler never opens the data
            assert service["image"] and service["volumes"] == [], name
        else:
            assert service["image"] and "/data" in service["volumes"][0], name
    for name in ("worker", "gpu-worker"):  # preloads come from the image's Dask configuration
        assert "--preload" not in services[name]["command"], name
    for port in (*services["scheduler"]["ports"], *services["prefect-server"]["ports"]):
        assert port.startswith("127.0.0.1:"), port  # published on the host's loopback
        if name not in ("scheduler", "prefect-server"):
            assert service["environment"]["HSAD_DASK_ADDRESS"] == "tcp://scheduler:8786", name
    assert services["serve"]["command"][:2] == ["hsad", "serve"]
    build = services["scheduler"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve().is_file()
    import compose_spec as spec  # validates against the compose specification
    project = spec.PyCompose.from_yaml(yaml.dump(compose, Dumper=_NoAliases))
    assert set(project.service_names()) == set(services)


def test_dockerfile_installs_the_package_and_the_dask_configuration():
    lines = (DEPLOY / "Dockerfile").read_text().splitlines()
    assert "COPY hsad_scale/config/dask.yaml /etc/dask/hsad.yaml" in lines
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
    serve = next(d for _, d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "hsad-serve")
    env = {e["name"]: e["value"] for e in serve["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HSAD_DASK_ADDRESS"] == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    # the Prefect server it names is one of the manifests
    service = next(d for _, d in _manifests() if d["kind"] == "Service" and d["metadata"]["name"] == "prefect-server")
    assert env["PREFECT_API_URL"] == f"http://prefect-server:{service['spec']['ports'][0]['port']}/api"
    server = next(d for _, d in _manifests() if d["kind"] == "Deployment" and d["metadata"]["name"] == "prefect-server")
    assert service["spec"]["selector"].items() <= server["spec"]["template"]["metadata"]["labels"].items()
    # the scheduler mounts no data; every worker does
    assert "volumes" not in cluster["spec"]["scheduler"]["spec"]
    for spec in (cluster["spec"]["worker"]["spec"], gpu["spec"]["worker"]["spec"]):
        assert spec["containers"][0]["volumeMounts"][0]["mountPath"] == "/data"


# --------------------------------------------------------------------------------------
# dask-jobqueue


def _slurm_module():
    spec = importlib.util.spec_from_file_location("hsad_slurm_example", DEPLOY / "jobqueue" / "slurm.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def restored_dask_config():
    """Dask's configuration put back after the test (the SLURM example sets hsad's for its scheduler)."""
    import copy

    saved = copy.deepcopy(dask.config.config)
    yield
    dask.config.config.clear()
    dask.config.config.update(saved)


def test_jobqueue_example_writes_cpu_and_gpu_batch_scripts(restored_dask_config):
    config = _load("jobqueue/jobqueue.yaml")
    assert config["jobqueue"]["slurm"]["cores"] == config["jobqueue"]["slurm"]["processes"]  # 1 thread per worker
    slurm = _slurm_module()
    slurm.load_config()  # adds jobqueue/hsad defaults to dask's config (nothing else reads them)
    with slurm.cpu_cluster(scheduler_options={"dashboard_address": ":0"}) as cluster:
        cpu_script = cluster.job_script()
        gpu_script = slurm.gpu_job_script(cluster.scheduler_address)
    assert "#SBATCH -p compute" in cpu_script and "--nthreads 1" in cpu_script and "GPU=1" not in cpu_script
    assert "#SBATCH -p gpu" in gpu_script and "#SBATCH --gres=gpu:1" in gpu_script
    from hsad_scale.cluster import CONFIG_FILE

    for script in (cpu_script, gpu_script):  # every worker job reads hsad's Dask configuration
        assert f"export DASK_CONFIG={CONFIG_FILE.parent}" in script.splitlines()
    assert dask.config.get("distributed.scheduler.worker-saturation") == float("inf")  # and the scheduler here
    worker_line = next(line for line in gpu_script.splitlines() if "dask_worker" in line or "dask worker" in line)
    words = shlex.split(worker_line)
    assert words[words.index("--resources") + 1] == "GPU=1"


# --------------------------------------------------------------------------------------
# the one Dask configuration file


def test_the_dask_configuration_file_is_what_the_local_cluster_uses():
    from hsad_scale import cluster

    config = yaml.safe_load(cluster.CONFIG_FILE.read_text())
    assert set(cluster.CONFIG_FILE.parent.iterdir()) == {cluster.CONFIG_FILE}  # DASK_CONFIG reads the whole folder
    assert config["distributed"]["worker"]["preload"] == ["hsad_scale.tiles", "hsad_scale.learned"]
    assert cluster.WORKER_ENV == config["distributed"]["nanny"]["pre-spawn-environ"]
    assert cluster.LOCAL_CLUSTER_CONFIG == {"distributed.scheduler.worker-saturation": float("inf"),
                                            "distributed.nanny.pre-spawn-environ": cluster.WORKER_ENV}


# --------------------------------------------------------------------------------------
# the deploy README's commands name files and options that exist


def _readme_commands() -> list[list[str]]:
    text = (DEPLOY / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line:
                words = shlex.split(line)
                while words and re.fullmatch(r"\w+=\S*", words[0]):  # VAR=value prefixes
                    words.pop(0)
                commands.append(words)
    return commands


def _option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_the_deploy_readme_commands_name_existing_files_and_valid_options():
    from hsad_scale.cli import build_parser

    commands = _readme_commands()
    seen = set()
    for words in commands:
        tool = words[0]
        seen.add(tool)
        if tool == "hsad":
            build_parser().parse_args(words[1:])  # exits (SystemExit) on an unknown option
        elif tool == "docker":
            assert words[1] == "compose" and (ROOT / _option(words, "-f")).is_file(), words
        elif tool == "kubectl" and words[1] == "apply":
            target = ROOT / _option(words, "-f")
            assert target.is_dir() and {p.name for p in target.glob("*.yaml")} >= {
                "dask-cluster.yaml", "gpu-workers.yaml", "hsad-serve.yaml", "prefect-server.yaml"}, words
        elif tool == "python":
            script = ROOT / words[1]
            assert script.is_file(), words
            source = script.read_text()
            for word in words[2:]:
                if word.startswith("--"):
                    assert f'"{word}"' in source, (word, script)
        elif tool == "prefect" and words[1] == "deploy":
            assert (ROOT / _option(words, "--prefect-file")).is_file(), words
        elif tool == "prefect" and words[1:3] == ["deployment", "run"]:  # FLOW/DEPLOYMENT -p name=value
            flow_name, deployment = words[3].split("/")
            entry = next(d for d in _load("prefect.yaml")["deployments"] if d["name"] == deployment)
            from prefect.flows import load_flow_from_entrypoint

            flow = load_flow_from_entrypoint(str(ROOT / entry["entrypoint"]))
            given = dict(words[i + 1].split("=", 1) for i, w in enumerate(words) if w == "-p")
            assert flow.name == flow_name and set(given) <= set(flow.parameters.properties), words
            flow.validate_parameters({**entry.get("parameters", {}), **given})  # complete and typed
        elif tool == "mkdir":
            assert words[-1].startswith("deploy/"), words
    assert {"hsad", "docker", "kubectl", "python", "prefect"} <= seen


def test_the_deploy_readme_grid_file_is_a_valid_sweep_grid(tmp_path):
    """The ``grid.yaml`` the deploy README shows for ``hsad sweep`` loads as a sweep grid."""
    from hsad_scale import sweep as sweeps

    blocks = re.findall(r"```yaml\n(.*?)```", (DEPLOY / "README.md").read_text(), flags=re.S)
    assert len(blocks) == 1
    (tmp_path / "grid.yaml").write_text(blocks[0])
    spec = sweeps.load_grid(tmp_path / "grid.yaml", 5)
    assert spec.method == "ae" and spec.fixed == {"latent": 4} and spec.grid == {"epochs": [1, 5], "layers": [2, 4]}
