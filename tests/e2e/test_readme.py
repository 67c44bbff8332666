"""Every curl command of the README, run verbatim against the service; documented answers must match."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests import wire

README = Path(__file__).resolve().parents[2] / "README.md"
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)


def readme_examples() -> list[tuple[str, str | None]]:
    """(curl command, the JSON answer printed right after it, if any) for each curl block of the README."""
    blocks = [(m.group(1), m.group(2), m.end()) for m in FENCE.finditer(README.read_text())]
    text = README.read_text()
    examples = []
    for i, (lang, body, end) in enumerate(blocks):
        if lang == "sh" and body.lstrip().startswith(("curl", "ID=$(curl")):
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            adjacent = following is not None and following[0] == "json" and not text[end : end + 2].strip("\n")
            examples.append((body.strip(), following[1].strip() if following and adjacent else None))
    return examples


def _close(got: Any, want: Any, path: str = "") -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict), (path, got, want)
        assert set(got) == set(want), (path, got, want)
        for key in want:
            # the service under test may run on another device than the README's CPU; ids and times differ
            if key not in ("device", "id", "expires_at"):
                _close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list), (path, got, want)
        assert len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _close(g, w, f"{path}[{i}]")
    elif isinstance(want, float) and wire.DEVICE != "cpu":
        assert math.isclose(got, want, rel_tol=1e-5, abs_tol=1e-6), (path, got, want)
    else:
        assert got == want, (path, got, want)


EXAMPLES = readme_examples()


def test_readme_has_v1_and_v2_examples() -> None:
    commands = " ".join(command for command, _ in EXAMPLES)
    assert "/v1/losses/" in commands
    assert "/v1/evaluate" in commands
    assert "/v2/models/" in commands


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not on PATH")
@pytest.mark.parametrize(("command", "expected"), EXAMPLES, ids=[f"example-{i}" for i in range(len(EXAMPLES))])
def test_example(server: str, command: str, expected: str | None) -> None:
    run = subprocess.run(
        ["bash", "-c", command.replace("localhost:8000", server.removeprefix("http://"))],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert "error" not in answer
    assert "type" not in answer  # not a problem document
    if expected is not None:
        _close(answer, json.loads(expected))
