"""Debian's headless Chromium for the browser tests: load a page, let its scripts run, return the DOM."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, profile: Path, *, offline: bool = False) -> str:
    """The DOM of `url` after up to 20 s of the page's (virtual) time. `offline`: every host name but 127.0.0.1
    fails to resolve, so that a page needing anything from the internet shows it."""
    if CHROMIUM is None:
        pytest.fail("chromium is not on PATH: run `make install-dev` (as root it installs Debian's chromium)")
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=20000",
        "--dump-dom",
    ]
    if offline:
        command.append("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    run = subprocess.run([*command, url], capture_output=True, text=True, timeout=90)
    assert run.returncode == 0, f"chromium exited with {run.returncode}: {run.stderr[-2000:]}"
    return run.stdout
