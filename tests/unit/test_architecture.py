"""Imports go one way: the compute layer and the data plane know no HTTP or gRPC, the HTTP and gRPC layers know
no torch, the data plane's modules import downwards only, and the modules shared by every request hold no state of
their own at module level."""

from __future__ import annotations

import ast
import dataclasses
import enum
import importlib
import re
import types
import typing
from pathlib import Path
from typing import Any

import pytest
import torch

SERVICE = Path(__file__).resolve().parents[2] / "service"
PURE = [
    *sorted((SERVICE / "losses").glob("*.py")),
    *sorted((SERVICE / "sessions").glob("*.py")),
    SERVICE / "compute.py",
    SERVICE / "errors.py",
    SERVICE / "isolation.py",
]
"""The compute layer: tensors in, results out."""
DATA_PLANE = [SERVICE / f"{name}.py" for name in ("limits", "codec", "schemas", "dataplane", "oip")]
"""What every protocol shares: body and tensor codecs, request schemas, limits, validation and planning
(`DataPlane`), the v2 inference protocol's core (HTTP's /v2 and gRPC both call `oip`)."""
HTTP = sorted((SERVICE / "api").glob("*.py"))
RPC = [p for p in sorted((SERVICE / "rpc").glob("*.py")) if not p.name.startswith("grpc_service_pb2")]
"""The gRPC adapter, less the stubs generated from the proto."""

PROTOCOL_LIBRARIES = {"fastapi", "starlette", "uvicorn", "uvicorn_worker", "gunicorn", "httptools", "httpx", "grpc"}
PROTOCOL_LIBRARIES |= {"grpc_health", "grpc_reflection", "google"}  # google.protobuf: gRPC's messages
PROTOCOL_LAYERS = ("service.api", "service.rpc", "service.server", "service.app", "service.__main__")

LAYERS = ("errors", "limits", "losses", "compute", "codec", "schemas", "dataplane", "oip")
"""The data plane from the bottom up: a module imports from its own layer and those below, never from above."""
_FEATURE = type(annotations)
"""`from __future__ import annotations` binds a compiler flag: a constant."""
STATELESS = ["service.limits", "service.errors", "service.dataplane"]
"""Modules whose every module-level value is immutable: constants, classes and functions only."""


def _imports(path: Path) -> set[str]:
    """The top-level packages `path` imports (anywhere in it, functions included)."""
    return {name.split(".")[0] for name in _modules(path)}


def _modules(path: Path) -> set[str]:
    """The modules `path` imports, by their full names (`from service import codec`: service.codec)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(SERVICE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@pytest.mark.parametrize("path", HTTP + RPC, ids=lambda p: p.relative_to(SERVICE).as_posix())
def test_protocol_layers_import_no_torch(path: Path) -> None:
    assert "torch" not in _imports(path)


@pytest.mark.parametrize("path", PURE + DATA_PLANE, ids=lambda p: _module_name(p))
def test_compute_layer_and_data_plane_know_no_protocol(path: Path) -> None:
    """No HTTP or gRPC library, and none of lossd's own protocol layers (the HTTP API, the gRPC servicer, the
    server, the app): each protocol calls the data plane, never the other way round."""
    assert not _imports(path) & PROTOCOL_LIBRARIES
    assert not [m for m in _modules(path) if any(_within(m, layer) for layer in PROTOCOL_LAYERS)]


@pytest.mark.parametrize("path", [SERVICE / "schemas.py", SERVICE / "limits.py"], ids=lambda p: p.name)
def test_schemas_and_limits_know_no_torch(path: Path) -> None:
    """Request shapes and size limits are worked out from the JSON and the declared shapes, before any tensor."""
    assert not _imports(path) & {"torch", "numpy"}


def _layer(module: str) -> int | None:
    return next((i for i, layer in enumerate(LAYERS) if _within(module, f"service.{layer}")), None)


@pytest.mark.parametrize(
    "path",
    [path for path in sorted(SERVICE.rglob("*.py")) if _layer(_module_name(path)) is not None],
    ids=lambda p: _module_name(p),
)
def test_data_plane_imports_go_down(path: Path) -> None:
    own = _layer(_module_name(path))
    assert own is not None
    above = [m for m in _modules(path) if (layer := _layer(m)) is not None and layer > own]
    assert not above, f"{_module_name(path)} imports from a layer above its own: {above}"


def _immutable(value: Any) -> bool:
    """Whether `value` cannot change: a scalar, string, class, function, module, typing construct, or a tuple,
    frozenset or frozen dataclass of such."""
    constant = (bool, int, float, complex, str, bytes, range, type, types.FunctionType, types.BuiltinFunctionType)
    handles = (types.ModuleType, enum.Enum, re.Pattern, typing.TypeVar, types.GenericAlias, types.UnionType)
    if value is None or isinstance(value, constant + handles + (torch.dtype, _FEATURE)):
        return True
    if type(value).__module__ == "typing":  # Literal[...], Annotated[...], unions written with Union
        return True
    if isinstance(value, tuple | frozenset):
        return all(_immutable(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        frozen = type(value).__dataclass_params__.frozen  # type: ignore[attr-defined]
        return bool(frozen) and all(_immutable(getattr(value, f.name)) for f in dataclasses.fields(value))
    return False


@pytest.mark.parametrize("name", STATELESS)
def test_no_module_level_mutable_state(name: str) -> None:
    """Nothing at module level that a request could change for the next one (or another worker thread)."""
    module = importlib.import_module(name)
    mutable = {k: type(v).__name__ for k, v in vars(module).items() if not k.startswith("__") and not _immutable(v)}
    assert not mutable, f"{name} holds mutable values at module level: {mutable}"


MUTATORS = {"append", "extend", "insert", "update", "setdefault", "add", "pop", "popitem", "remove", "discard"}
MUTATORS |= {"clear", "sort", "reverse", "__setitem__", "__delitem__"}


def _tables(path: Path) -> set[str]:
    """The names `path` binds at module level to a dict, list or set (display, comprehension or constructor)."""
    containers = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
    names = set()
    for node in ast.parse(path.read_text()).body:
        targets, value = [], None
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign):
            targets, value = [node.target], node.value
        built = isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
        if isinstance(value, containers) or (built and value.func.id in {"dict", "list", "set"}):  # type: ignore[union-attr]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def _mutations(path: Path, module: str, tables: set[str]) -> list[str]:
    """Where `path` changes one of the module-level `tables` of `module`: by name in `module` itself or where
    imported from it, as `codec.NAME` where `module` is imported whole; and, in `module` itself, any `global`."""
    tree = ast.parse(path.read_text())
    package, short = module.rsplit(".", 1)
    own = _module_name(path) == module
    bare = set(tables) if own else set()
    whole = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == module:
            bare |= {a.asname or a.name for a in node.names if a.name in tables}
        elif isinstance(node, ast.ImportFrom) and node.module == package:
            whole |= {a.asname or a.name for a in node.names if a.name == short}

    def named(node: ast.expr) -> str | None:
        if isinstance(node, ast.Name) and node.id in bare:
            return node.id
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in whole:
            return node.attr if node.attr in tables else None
        return None

    found = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(SERVICE.parent)}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Global) and own:
            found.append(f"{where} global {', '.join(node.names)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATORS:
            if name := named(node.func.value):
                found.append(f"{where} {name}.{node.func.attr}(...)")
        elif isinstance(node, ast.Assign | ast.AugAssign | ast.Delete):
            targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and (name := named(target.value)):
                    found.append(f"{where} {name}[...] changed")
                elif isinstance(node, ast.AugAssign) and (name := named(target)):
                    found.append(f"{where} {name} changed in place")
    return found


@pytest.mark.parametrize(
    "path", [p for p in PURE + DATA_PLANE if _module_name(p) not in STATELESS], ids=lambda p: _module_name(p)
)
def test_module_level_tables_are_constants(path: Path) -> None:
    """The dicts, lists and sets of the compute layer and the data plane are lookup tables: no code of the
    service changes them after import, and none declares a `global`."""
    module, tables = _module_name(path), _tables(path)
    everywhere = [p for p in sorted(SERVICE.rglob("*.py")) if "grpc_service_pb2" not in p.name]
    found = [m for p in everywhere for m in _mutations(p, module, tables)]
    assert not found, f"module-level state of {module}: {found}"
