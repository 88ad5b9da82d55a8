"""The dependency direction: the hosted (`services/`) never imports the assembly.

`gateway.app`, `gateway.runtime` and `gateway.config` know every part; if a service module
imported them, the two halves would depend on each other again. Only the reference's
standalone launchers on `BaseService` may reach the host, and only lazily, inside the call.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ASSEMBLY = ("gateway.app", "gateway.runtime", "gateway.config", "gateway.__main__")
# (file, function) pairs allowed a lazy import of the host: BaseService's reference launchers.
LAZY_DELEGATES = {("services/base.py", "processing_loop"), ("services/base.py", "launch_server")}


def _imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
    found: list[tuple[str, ast.AST]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.append((node.module, node))
    return found


def _enclosing_functions(tree: ast.AST) -> dict[ast.AST, str]:
    owner: dict[ast.AST, str] = {}
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(func):
                owner.setdefault(inner, func.name)
    return owner


def test_services_never_import_the_assembly() -> None:
    offenders = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text())
        owner = _enclosing_functions(tree)
        for module, node in _imports(tree):
            if not module.startswith(ASSEMBLY):
                continue
            if (rel, owner.get(node)) in LAZY_DELEGATES:
                continue
            offenders.append(f"{rel}:{node.lineno} imports {module}")
    assert offenders == [], "services/ must not import the assembly:\n" + "\n".join(offenders)


def test_importing_every_service_module_loads_no_assembly_module() -> None:
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for p in (ROOT / "services").rglob("*.py")
    )
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({ASSEMBLY!r}))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_config_finds_service_types_through_one_table() -> None:
    from gateway import config
    from services import TYPES

    imported = {
        module for module, _ in _imports(ast.parse((ROOT / "gateway/config.py").read_text()))
    }
    type_modules = {kind.class_path.partition(":")[0] for kind in TYPES.values()}
    assert imported.isdisjoint(type_modules), "config.py must find types through services.TYPES"
    assert set(TYPES) <= config.ENTRY_TAGS
