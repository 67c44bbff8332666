"""The documentation: README.md as a manual (its length, its contents list, its links), docs/ with the
configuration table generated from `Settings`, and the start-up message of a setting the service cannot use."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from service.config import Settings
from service.docs import CONFIGURATION, README, render

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["configuration", "limits", "security", "monitoring", "deployment", "gpu", "losses", "sessions", "development"]


def test_configuration_table_is_current() -> None:
    text = CONFIGURATION.read_text()
    assert render(CONFIGURATION, text) == text, "docs/configuration.md's table is stale: run `make docs`"
    documented = re.findall(r"^\| `LOSSD_(\w+)` \|", text, flags=re.MULTILINE)
    assert [name.lower() for name in documented] == list(Settings.model_fields)


def test_readme_is_a_manual_of_at_most_300_lines() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, len(lines)
    first_screen = "\n".join(lines[:20])
    assert "make serve" in first_screen
    assert "make test" in first_screen


def test_readme_contents_lists_every_section() -> None:
    text = README.read_text()
    contents = text[text.index("## Contents") : text.index("\n## ", text.index("## Contents") + 1)]
    listed = set(re.findall(r"\]\(#([^)]+)\)", contents))
    for heading in re.findall(r"^##+ (.+)$", text, flags=re.MULTILINE):
        if heading == "Contents":
            continue
        anchor = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        assert anchor in listed, f"the Contents list leaves out {heading!r}"


@pytest.mark.parametrize("path", [README, *(ROOT / "docs" / f"{name}.md" for name in DOCS)], ids=lambda p: p.name)
def test_relative_links_resolve(path: Path) -> None:
    text = path.read_text()
    for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)(?:#[^)]*)?\)", text):
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"


def test_readme_links_every_operations_document() -> None:
    text = README.read_text()
    for name in DOCS:
        assert f"(docs/{name}.md" in text, f"README.md does not link docs/{name}.md"


@pytest.mark.parametrize(
    ("env", "lines"),
    [
        (
            {"LOSSD_LOG_LEVEL": "loud", "LOSSD_PORT": "99999"},
            [
                "lossd: invalid LOSSD_LOG_LEVEL: Input should be 'critical', 'error', 'warning', 'info', 'debug' or "
                "'trace'",
                "lossd: invalid LOSSD_PORT: Input should be less than or equal to 65535",
            ],
        ),
        (
            {"LOSSD_API_KEYS": "/nonexistent/keys"},
            ["lossd: invalid LOSSD_API_KEYS: /nonexistent/keys is not a readable file (No such file or directory)"],
        ),
        ({"LOSSD_API_KEYS": " , "}, ["lossd: invalid LOSSD_API_KEYS: set, but holds no key"]),
        ({"LOSSD_DEVICE": "cuda:99"}, None),
    ],
    ids=["values", "key-file", "no-key", "device"],
)
def test_a_setting_the_service_cannot_use_stops_it_with_one_line_naming_it(
    env: dict[str, str], lines: list[str] | None
) -> None:
    if lines is None:  # no such CUDA device, whether CUDA is there or not
        import torch

        found = f"only {torch.cuda.device_count()} CUDA device(s) exist" if torch.cuda.is_available() else None
        lines = [f"lossd: invalid LOSSD_DEVICE: cuda:99, but {found or 'CUDA is not available'}"]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LOSSD_")}
    run = subprocess.run([sys.executable, "-m", "service"], env=clean | env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert sorted(run.stderr.strip().splitlines()) == lines


def test_log_level_is_read_in_any_case() -> None:
    assert Settings(log_level="WARNING").log_level == "warning"
