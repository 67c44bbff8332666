"""lossd's image as users get it, with podman (`make install-podman`): the Dockerfile built with --format docker
(scripts/container.sh: on python:3.11-slim-bookworm where a registry serves it, else on a Debian stand-in; the
host's pip settings reach the build stage only), run with docker-compose.yml's restrictions (read-only root, a
tmpfs /tmp, no capabilities, no new privileges), and the compose file itself brought up with podman-compose.
Nothing here is skipped: without podman these tests fail. They run on one xdist worker (one group), which builds
the image (or waits for `make test`'s early build) while the other runs the rest."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import torch.nn.functional as F

from tests.e2e.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container.sh"
RESTRICTIONS = [
    "--read-only",
    "--read-only-tmpfs=false",  # podman would add tmpfs /run and /var/tmp; docker and the compose file do not
    "--tmpfs=/tmp:size=256m",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
    "--health-interval=disable",  # podman times health checks with systemd, absent here: run by hand below
]
DRAIN_S = 10
"""LOSSD_DRAIN_TIMEOUT_S of the SIGTERM test: an idle service must exit 0 well within it."""
pytestmark = pytest.mark.xdist_group("container")  # make's pytest: --dist loadgroup
HOST_PIP_PATHS = ["/etc/pip.conf", "/etc/xdg/pip", "/opt/wheels", "/root/.config/pip", "/root/.pip"]


def podman(env: dict[str, str], *args: str, timeout: float = 120, check: bool = True) -> str:
    run = subprocess.run(["podman", *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert run.returncode == 0, f"podman {' '.join(args)}: exit {run.returncode}\n{run.stdout}\n{run.stderr}"
    return run.stdout


@pytest.fixture(scope="module")
def engine() -> tuple[str, dict[str, str]]:
    """The image built from this tree, and the environment podman needs here. The build waits for one already
    under way (`make test` starts one early) and reuses its layers."""
    assert shutil.which("podman"), "podman is not installed: `make install-podman` (as root) installs it"
    env = os.environ | {"PIP_PYTHON": sys.executable}
    steps = {}
    for step in ("build", "conf"):
        run = subprocess.run([str(SCRIPT), step], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
        assert run.returncode == 0, f"scripts/container.sh {step} failed:\n{run.stderr}"
        steps[step] = run.stdout.strip()
    if steps["conf"]:
        env["CONTAINERS_CONF"] = steps["conf"]
    return steps["build"], env


def wait_ready(env: dict[str, str], name: str, url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        state = podman(env, "inspect", "--format", "{{.State.Status}}", name).strip()
        assert state == "running", f"{name} is {state}:\n{podman(env, 'logs', name, check=False)}"
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"not ready in {seconds} s:\n{podman(env, 'logs', name, check=False)}"
        time.sleep(0.5)


def start(engine: tuple[str, dict[str, str]], name: str, port: int = 8000, **settings: str) -> str:
    """The image run as the compose file runs it, HTTP published on a free loopback port; its URL once ready."""
    image, env = engine
    host_port = free_port()
    options = [f"--env={key}={value}" for key, value in {"LOSSD_DEVICE": "cpu", **settings}.items()]
    podman(env, "rm", "--force", "--time=0", name, check=False)
    publish = f"--publish=127.0.0.1:{host_port}:{port}"
    podman(env, "run", "--detach", f"--name={name}", *RESTRICTIONS, publish, *options, image)
    url = f"http://127.0.0.1:{host_port}"
    wait_ready(env, name, url)
    return url


@pytest.fixture(scope="module")
def container(engine: tuple[str, dict[str, str]]) -> Iterator[tuple[str, str]]:
    name = f"lossd-test-{os.getpid()}"
    try:
        yield name, start(engine, name)
    finally:
        podman(engine[1], "rm", "--force", "--time=0", name, check=False)


def test_image_is_cpu_only_with_its_health_check_and_no_host_pip_settings(
    engine: tuple[str, dict[str, str]], record_property: Any
) -> None:
    image, env = engine
    inspected = json.loads(podman(env, "image", "inspect", image))[0]
    config = inspected["Config"]
    assert inspected["ManifestType"] == "application/vnd.docker.distribution.manifest.v2+json"  # --format docker
    assert "LOSSD_PORT" in " ".join(inspected["Healthcheck"]["Test"])  # which the docker format keeps
    assert config["User"] == "10001"
    variables = dict(entry.split("=", 1) for entry in config["Env"])
    assert variables["HOME"] == "/tmp"
    assert not [key for key in variables if key.startswith("PIP_")], variables
    history = podman(env, "history", "--no-trunc", "--format={{.CreatedBy}}", image)
    assert "PIP_" not in history
    assert "/opt/wheels" not in history
    probe = (
        "import importlib.metadata as m, os, sys, torch; "
        "print(torch.__version__, torch.version.cuda, "
        "[d.metadata['Name'] for d in m.distributions() if d.metadata['Name'].startswith(('nvidia', 'triton'))], "
        "[p for p in sys.argv[1:] if os.path.exists(p)])"
    )
    out = podman(env, "run", "--rm", *RESTRICTIONS, image, "python", "-c", probe, *HOST_PIP_PATHS)
    assert out.strip().split(maxsplit=2) == ["2.13.0+cpu", "None", "[] []"], out
    assert podman(env, "run", "--rm", *RESTRICTIONS, image, "python", "-m", "pip", "config", "list").strip() == ""
    size = f"{inspected['Size'] / 1e9:.2f} GB ({inspected['Size']:,} bytes)"
    record_property("container image size", size)  # scripts/container_report.py prints it after the run
    print(f"\ncontainer image {image}: {size}")


def test_serves_a_loss_equal_to_torch(container: tuple[str, str]) -> None:
    _, url = container
    prediction, truth = [0.1, 0.2, 0.7, -1.3], [0.3, -0.5, 1.25, 2.0]
    response = httpx.post(f"{url}/v1/losses/mse", json={"input": prediction, "target": truth}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["loss"] == F.mse_loss(torch.tensor(prediction), torch.tensor(truth)).item()


def test_runs_as_uid_10001(engine: tuple[str, dict[str, str]], container: tuple[str, str]) -> None:
    pid = podman(engine[1], "inspect", "--format", "{{.State.Pid}}", container[0]).strip()
    status = Path(f"/proc/{pid}/status").read_text()
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uids == ["10001"] * 4, status


def test_health_check_passes(engine: tuple[str, dict[str, str]], container: tuple[str, str]) -> None:
    podman(engine[1], "healthcheck", "run", container[0])


def test_writes_nothing_outside_tmp(engine: tuple[str, dict[str, str]], container: tuple[str, str]) -> None:
    """After requests and health checks, the container's writable layer holds what podman itself puts there
    when it prepares a container (a twin created and initialized, never started): the service wrote nothing."""
    image, env = engine
    name, url = container
    assert httpx.post(f"{url}/v1/losses/l1", json={"input": [1.0], "target": [2.5]}, timeout=30).status_code == 200
    podman(env, "healthcheck", "run", name)
    denied = podman(env, "exec", name, "sh", "-c", "touch /app/x /opt/venv/x 2>&1; touch /tmp/x && echo tmp ok")
    assert denied.count("Read-only file system") == 2, denied
    assert denied.strip().endswith("tmp ok")
    twin = podman(env, "create", *RESTRICTIONS, image).strip()
    try:
        podman(env, "init", twin)
        assert podman(env, "diff", name) == podman(env, "diff", twin)
        assert _upper(env, name) == _upper(env, twin)
    finally:
        podman(env, "rm", "--force", "--time=0", twin, check=False)


def _upper(env: dict[str, str], name: str) -> list[str]:
    upper = Path(podman(env, "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", name).strip())
    return sorted(str(path.relative_to(upper)) for path in upper.rglob("*"))


def test_other_port_health_check_and_sigterm(engine: tuple[str, dict[str, str]]) -> None:
    """LOSSD_PORT=8300: the image's health check follows it; SIGTERM (podman stop) ends the service with status 0
    well within its drain time, not by the SIGKILL that follows the stop timeout."""
    _, env = engine
    name = f"lossd-test-port-{os.getpid()}"
    try:
        start(engine, name, port=8300, LOSSD_PORT="8300", LOSSD_DRAIN_TIMEOUT_S=str(DRAIN_S))
        podman(env, "healthcheck", "run", name)
        began = time.monotonic()
        podman(env, "stop", f"--time={DRAIN_S + 20}", name, timeout=DRAIN_S + 60)
        took = time.monotonic() - began
        assert podman(env, "inspect", "--format", "{{.State.ExitCode}}", name).strip() == "0"
        assert took < DRAIN_S, f"SIGTERM took {took:.1f} s"
    finally:
        podman(env, "rm", "--force", "--time=0", name, check=False)


def test_compose_file_comes_up_with_podman_compose(engine: tuple[str, dict[str, str]]) -> None:
    """docker-compose.yml's lossd service, unchanged but for the image (this build) and its published ports (free
    loopback ones): ready, its own health check passes, and `down` removes it."""
    image, env = engine
    compose = shutil.which("podman-compose", path=str(Path(sys.executable).parent)) or shutil.which("podman-compose")
    assert compose, "podman-compose is a development dependency"
    http, grpc = free_port(), free_port()
    project = f"lossd-test-{os.getpid()}"
    compose_env = env | {
        "LOSSD_IMAGE": image,
        "LOSSD_PUBLISH_HTTP": f"127.0.0.1:{http}",
        "LOSSD_PUBLISH_GRPC": f"127.0.0.1:{grpc}",
    }
    base = [compose, "--project-name", project, "--file", str(ROOT / "docker-compose.yml")]

    def run(*args: str) -> str:
        done = subprocess.run([*base, *args], cwd=ROOT, env=compose_env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"podman-compose {args}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    mine = f"--filter=label=io.podman.compose.project={project}"
    try:
        run("up", "--detach", "--no-build", "lossd")
        names = podman(env, "ps", mine, "--format={{.Names}}")
        assert len(names.split()) == 1, names
        name = names.split()[0]
        wait_ready(env, name, f"http://127.0.0.1:{http}")
        podman(env, "healthcheck", "run", name)
        inspected = json.loads(podman(env, "inspect", name))[0]["HostConfig"]
        assert inspected["ReadonlyRootfs"] is True
        assert inspected["SecurityOpt"] == ["no-new-privileges"]
    finally:
        run("down", "--timeout", "40")
    assert podman(env, "ps", "--all", mine, "--format={{.Names}}") == ""
