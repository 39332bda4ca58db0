"""deploy/ cannot drift from the code: every manifest and the compose file parse and validate
against their schemas (offline: kubernetes-validate's and check-jsonschema's copies of the
Kubernetes and Compose schemas), every command line they pass goes through the real CLI, and
every probe and health check points at the port and path the node really serves."""

from __future__ import annotations

import functools
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from agentflow.addresses import advertised_address, parse_advertise
from agentflow.master import default_http_port
from protocols.tasks import parse_master_urls
from tests.cliparse import parse_node_command

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")  # the oldest still common, and the newest the schemas know
WORKLOADS = ("StatefulSet", "Deployment")


@functools.cache
def k8s_documents() -> list[tuple[str, dict]]:
    documents = []
    for path in sorted((DEPLOY / "k8s").rglob("*.yaml")):
        documents += [(path.relative_to(DEPLOY).as_posix(), doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def by_kind(kind: str) -> list[dict]:
    return [doc for _, doc in k8s_documents() if doc["kind"] == kind]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def dockerfile() -> dict[str, list[str]]:
    """The Dockerfile's instructions: name -> the argument text of each (continuations joined)."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    instructions: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, rest = line.strip().partition(" ")
            instructions.setdefault(name.upper(), []).append(rest.strip())
    return instructions


def image_environment() -> dict[str, str]:
    env = {}
    for text in dockerfile()["ENV"]:
        for item in shlex.split(text):
            key, _, value = item.partition("=")
            env[key] = value
    return env


def image_entrypoint() -> list[str]:
    return json.loads(dockerfile()["ENTRYPOINT"][0])


# --------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_manifest_is_valid_for_its_schema(version):
    import kubernetes_validate

    documents = k8s_documents()
    assert {doc["kind"] for _, doc in documents} >= {"Service", "StatefulSet", "Deployment", "PodDisruptionBudget"}
    for name, doc in documents:
        try:
            kubernetes_validate.validate(doc, version, strict=True)  # strict: an unknown field is an error
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message} at {list(exc.path)}")


def test_the_compose_file_is_valid_for_the_compose_spec():
    from importlib.resources import files

    import jsonschema

    schema = json.loads(files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    errors = sorted(jsonschema.validators.validator_for(schema)(schema).iter_errors(compose()), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]


# --------------------------------------------------------------------------- commands


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti)?$")
UNITS = {None: 1, "m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity(text) -> float:
    number, unit = QUANTITY.match(str(text)).groups()
    return float(number) * UNITS[unit]


def stand_in(value_from: dict, workload: dict, container: dict) -> str:
    """What Kubernetes would put in an env var taken from the pod (the first pod's values)."""
    if "fieldRef" in value_from:
        field = value_from["fieldRef"]["fieldPath"]
        pod_name = f"{workload['metadata']['name']}-0"
        return {"metadata.name": pod_name, "metadata.namespace": "default", "status.podIP": "192.0.2.10"}[field]
    ref = value_from["resourceFieldRef"]
    assert ref.get("containerName", container["name"]) == container["name"]
    kind, resource = ref["resource"].split(".")
    value = quantity(container["resources"][kind][resource]) / quantity(ref.get("divisor", "1"))
    return str(int(-(-value // 1)))  # Kubernetes rounds up


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in args and env values."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), text)


def k8s_containers() -> list[tuple[str, dict, dict, list[str], dict[str, str]]]:
    """(name, workload, container, argv after the entry point, environment) of every container."""
    found = []
    for name, doc in k8s_documents():
        if doc["kind"] not in WORKLOADS:
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            env = dict(image_environment())
            for item in container.get("env", []):
                env[item["name"]] = (expand(item["value"], env) if "value" in item
                                     else stand_in(item["valueFrom"], doc, container))
            argv = [expand(arg, env) for arg in (*container.get("command", image_entrypoint()),
                                                 *container.get("args", []))]
            assert "$(" not in " ".join(argv), (name, argv)  # every variable it names is defined
            found.append((f"{name}:{container['name']}", doc, container, argv, env))
    return found


def compose_services() -> list[tuple[str, dict, list[str], dict[str, str]]]:
    services = []
    for name, service in compose()["services"].items():
        env = {**image_environment(), **{key: str(value) for key, value in service.get("environment", {}).items()}}
        env = {key: re.sub(r"\$\{(\w+):-([^}]*)\}", r"\2", value) for key, value in env.items()}  # compose defaults
        argv = [*service.get("entrypoint", image_entrypoint()), *service.get("command", [])]
        services.append((name, service, argv, env))
    return services


def node_commands() -> list[tuple[str, list[str], dict[str, str]]]:
    """Every (where, argv, environment) that starts a master or a worker."""
    commands = [(where, argv, env) for where, _, _, argv, env in k8s_containers()]
    commands += [(f"docker-compose.yml:{name}", argv, env) for name, _, argv, env in compose_services()]
    return commands


def parse(argv: list[str], env: dict[str, str], monkeypatch) -> dict:
    assert argv[0] == "agentflow", argv
    code, seen, output = parse_node_command(argv[1:], env, monkeypatch)
    assert code == 0, (argv, output)
    return seen


def test_the_image_runs_the_agentflow_entry_point():
    import tomllib

    scripts = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]["scripts"]
    assert image_entrypoint() == ["agentflow"] and scripts["agentflow"] == "agentflow.cli:main"
    assert "USER agentflow" in [f"USER {user}" for user in dockerfile()["USER"]]
    assert json.loads(dockerfile()["VOLUME"][0]) == [image_environment()["AGENTFLOW_DATA_DIR"]]


def test_every_master_and_worker_command_goes_through_the_real_cli(monkeypatch):
    processes = {}
    for where, argv, env in node_commands():
        if argv[1] not in ("master", "worker"):
            continue
        seen = parse(argv, env, monkeypatch)
        processes.setdefault(seen["process"], []).append(where)
        if seen["process"] == "worker":
            parse_master_urls(seen["master_urls"])  # raises on a malformed list
            assert seen["host"] == "0.0.0.0"
        else:
            assert seen["data_dir"] == "/data" and seen["host"] == "0.0.0.0" and seen["node_id"]
        parse_advertise(seen["advertise"])
    assert len(processes["master"]) >= 4 and len(processes["worker"]) >= 3, processes


def test_every_agent_host_command_goes_through_the_real_cli(monkeypatch):
    agent_hosts = [(where, argv, env) for where, argv, env in node_commands() if argv[1] == "agent"]
    assert agent_hosts
    for where, argv, env in agent_hosts:
        seen = parse(argv, env, monkeypatch)
        assert seen["process"] == "agent host" and ":" in seen["spec"] and seen["agent_id"], where
        assert seen["host"] == "0.0.0.0" and parse_advertise(seen["advertise"]), where
        parse_master_urls(seen["master_urls"])


def test_the_masters_statefulset_names_its_peers_by_their_stable_dns_names(monkeypatch):
    [statefulset] = by_kind("StatefulSet")
    spec = statefulset["spec"]
    assert spec["podManagementPolicy"] == "Parallel"
    headless = next(s for s in by_kind("Service") if s["metadata"]["name"] == spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    where, _, container, argv, env = next(c for c in k8s_containers() if c[1] is statefulset)
    seen = parse(argv, env, monkeypatch)
    name = statefulset["metadata"]["name"]
    dns = f"{name}-{{}}.{spec['serviceName']}"
    # The first pod's advertised endpoint is the first of --leader-url: it bootstraps, the others join.
    host, port = advertised_address(seen["host"], parse_advertise(seen["advertise"]))
    assert (host, port) == (dns.format(0), seen["port"]) and seen["node_id"] == f"{name}-0"
    peers = parse_master_urls(seen["leader_url"])
    assert peers == [f"tcp://{dns.format(i)}:{seen['port']}" for i in range(spec["replicas"])]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["messages"] == seen["port"]
    for service in by_kind("Service"):
        assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
        assert service["spec"]["selector"] == spec["selector"]["matchLabels"]
    # Every worker and agent host knows the same masters.
    for where, _, _, argv, env in k8s_containers():
        if env.get("AGENTFLOW_MASTER_URL"):
            assert parse_master_urls(env["AGENTFLOW_MASTER_URL"]) == peers, where
    [claim] = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == seen["data_dir"]
    affinity = statefulset["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    [term] = affinity["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    [budget] = by_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"] == spec["selector"] and budget["spec"]["maxUnavailable"] == 1


def test_a_gpu_worker_variant_requests_and_advertises_a_gpu(monkeypatch):
    gpu = [c for c in k8s_containers() if "nvidia.com/gpu" in c[2]["resources"]["limits"]]
    assert gpu
    for where, _, container, argv, env in gpu:
        seen = parse(argv, env, monkeypatch)
        assert seen["gpu_count"] == container["resources"]["limits"]["nvidia.com/gpu"], where
    for where, _, container, argv, env in k8s_containers():
        assert container["resources"]["requests"] and container["resources"]["limits"], where
        if argv[1] == "worker":
            seen = parse(argv, env, monkeypatch)
            assert seen["cpu_cores"] == quantity(container["resources"]["limits"]["cpu"]), where
            assert seen["memory_mb"] * 2**20 == quantity(container["resources"]["limits"]["memory"]), where


# --------------------------------------------------------------------------- health


def served_paths() -> dict[str, int]:
    """The status code of each health path on a real HttpServer of a master that knows a leader."""
    import urllib.error
    import urllib.request

    from runtime.http import HttpServer

    server = HttpServer("127.0.0.1", 0, lambda: {"node_id": "m", "serving": True, "raft": {"leader": "m"}}).start()
    codes = {}
    try:
        for path in ("/health", "/health/live"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{server.port}{path}", timeout=5) as answer:
                    codes[path] = answer.status
            except urllib.error.HTTPError as exc:
                codes[path] = exc.code
    finally:
        server.stop()
    return codes


def test_every_probe_points_at_the_real_health_port_and_path(monkeypatch):
    codes = served_paths()
    masters = 0
    for where, _, container, argv, env in k8s_containers():
        if argv[1] not in ("master", "worker"):
            continue
        masters += argv[1] == "master"
        seen = parse(argv, env, monkeypatch)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        http_port = default_http_port(seen["port"], seen["http_port"])
        for probe, path in (("readinessProbe", "/health"), ("livenessProbe", "/health/live")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, (where, probe)
            assert ports.get(get["port"], get["port"]) == http_port, (where, probe)
    assert masters == 1

    url = re.compile(r"http://127\.0\.0\.1:(?:(\d+)|%s)(/[\w/]*)")
    for name, service, argv, env in compose_services():
        health = service.get("healthcheck", {})
        if health.get("disable"):
            assert argv[1] != "master", name  # every master is health-checked
            continue
        seen = parse(argv, env, monkeypatch)
        port, path = url.search(" ".join(health["test"])).groups()
        assert (int(port), path) == (default_http_port(seen["port"], seen["http_port"]), "/health"), name
        for dependency, other in service.get("depends_on", {}).items():
            # Nodes wait for healthy masters; the one-shot keys service only has to have finished.
            wanted = "service_completed_successfully" if dependency == "keys" else "service_healthy"
            assert other["condition"] == wanted, (name, dependency)
    # The image's own HEALTHCHECK: AGENTFLOW_HTTP_PORT when set, else a master's default.
    [check] = dockerfile()["HEALTHCHECK"]
    match = url.search(check)
    assert match.group(2) == "/health" and "AGENTFLOW_HTTP_PORT', '6777'" in check
    assert default_http_port(6767, None) == 6777
    exposed = {int(port) for text in dockerfile()["EXPOSE"] for port in text.split()}
    assert exposed == {6767, 6777, 6867}
    assert codes == {"/health": 200, "/health/live": 200}, codes
