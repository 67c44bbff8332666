"""A pytest plugin (`-p scripts.container_report`, as `make pytest` loads it): prints what tests recorded with
record_property("container image size", ...) at the end of the run, where xdist's controller can show it (a
conftest below tests/ is not loaded there, and a passing test's output is not shown)."""

from __future__ import annotations

from typing import Any

NAME = "container image size"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    sizes = {
        (report.nodeid, value)
        for report in terminalreporter.stats.get("passed", [])
        for name, value in report.user_properties
        if name == NAME
    }
    for nodeid, value in sorted(sizes):
        terminalreporter.write_line(f"{NAME}: {value} ({nodeid.split('::')[0]})")
