"""`python -m service.docs`: regenerate the generated parts of README.md from the registry.

The README's loss table sits between two markers; this module writes it from the declarations, and a
test fails when the committed README differs from what it would write.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from service.losses import REGISTRY
from service.losses.registry import LossSpec

START, END = "<!-- losses:start -->", "<!-- losses:end -->"
README = Path(__file__).resolve().parents[1] / "README.md"


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


def render(readme: str) -> str:
    """`readme` with its generated table replaced by the current one."""
    pattern = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    return pattern.sub(lambda _: f"{START}\n{loss_table()}\n{END}", readme)


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    sys.stdout.write(f"wrote the loss table of {len(REGISTRY)} losses to {README}\n")
