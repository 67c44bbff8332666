"""`python -m service.docs`: regenerate the generated tables of the documentation.

README.md's loss table is written from the registry's declarations, and docs/configuration.md's settings table
from `Settings` (each field's name, default and docstring). Each sits between two markers; a test fails when a
committed file differs from what this module would write.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from pydantic.fields import FieldInfo

from service.config import Settings
from service.losses import REGISTRY
from service.losses.registry import LossSpec

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CONFIGURATION = ROOT / "docs" / "configuration.md"


def _tensors(spec: LossSpec) -> str:
    return ", ".join(f"`{t.name}`{'' if t.required else '?'}{' (∂)' if t.grad else ''}" for t in spec.tensors)


def _params(spec: LossSpec) -> str:
    fields = spec.params.model_fields
    return ", ".join(f"`{name}`={fields[name].default!r}" for name in fields if name != "reduction") or "-"


def _reductions(spec: LossSpec) -> str:
    default = spec.params.model_fields["reduction"].default
    return ", ".join(f"**{r}**" if r == default else r for r in spec.reductions)


def _aliases(spec: LossSpec) -> str:
    return ", ".join(f"`{a}`" for a in spec.aliases)


def loss_table() -> str:
    """The markdown table of every registered loss."""
    rows = [
        "| loss | tensors (`?` optional, ∂ differentiable) | parameters (default) | reductions (**default**) "
        "| same as | aliases |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| `{s.name}` | {_tensors(s)} | {_params(s)} | {_reductions(s)} | `{s.torch_ref}` | {_aliases(s)} |"
        for s in REGISTRY
    ]
    return "\n".join(rows)


def _default(name: str, field: FieldInfo) -> str:
    value = field.default
    if value is None:
        return "unset"
    if value == "":
        return "empty"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if name.endswith("_bytes") and isinstance(value, int) and value >= 1 << 20 and value % (1 << 20) == 0:
        size = f"{value >> 30} GiB" if value % (1 << 30) == 0 else f"{value >> 20} MiB"
        return f"`{value}` ({size})"
    return f"`{value:g}`" if isinstance(value, float) else f"`{value}`"


def config_table() -> str:
    """The markdown table of every setting: its variable, default and meaning (the field's docstring)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split())
        assert meaning, f"Settings.{name} has no docstring"
        rows.append(f"| `LOSSD_{name.upper()}` | {_default(name, field)} | {meaning} |")
    return "\n".join(rows)


TABLES = {README: ("losses", loss_table), CONFIGURATION: ("settings", config_table)}
"""Each generated file: its markers' name and what writes the table between them."""


def render(path: Path, text: str) -> str:
    """`text` (the content of `path`) with its generated table replaced by the current one."""
    marker, table = TABLES[path]
    start, end = f"<!-- {marker}:start -->", f"<!-- {marker}:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    assert pattern.search(text), f"{path} has no {start} ... {end} markers"
    return pattern.sub(lambda _: f"{start}\n{table()}\n{end}", text)


if __name__ == "__main__":
    for path in TABLES:
        path.write_text(render(path, path.read_text()))
        sys.stdout.write(f"wrote {path.relative_to(ROOT)}\n")
