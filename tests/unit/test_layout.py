"""The house rules of the package, read from its source: no import cycles, short modules, quick apps."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from mindgap.paths import PROJECT_ROOT
from tests.conftest import APP_MODULES

PACKAGE = PROJECT_ROOT / "src" / "mindgap"
MAX_LINES = 500
LONG_MODULE_REASON = "One module past the usual size:"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path) -> set[str]:
    """Every mindgap module ``path`` imports, at the top or inside a function (a lazy import is still an edge)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mindgap"):
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                found.add(submodule if submodule in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mindgap"))
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = {name: _imports(path) - {name} for name, path in MODULES.items()}
    assert _cycles(graph) == []


def test_every_module_imports() -> None:
    """Also the ones no test reaches through an app (the vLLM backend only where vLLM is installed)."""
    for name in MODULES:
        if name != "mindgap.generation.vllm" or importlib.util.find_spec("vllm") is not None:
            importlib.import_module(name)


def test_long_modules_say_why() -> None:
    long = {
        name: len(path.read_text().splitlines())
        for name, path in MODULES.items()
        if len(path.read_text().splitlines()) > MAX_LINES
        and LONG_MODULE_REASON not in (ast.get_docstring(ast.parse(path.read_text())) or "")
    }
    assert long == {}


@pytest.mark.parametrize("app", sorted(APP_MODULES.values()))
def test_an_app_validates_its_config_before_it_imports_torch(app: str) -> None:
    """A misspelt key is reported by an app that has not loaded torch, transformers or Lightning (15-20 s)."""
    probe = (
        f"import sys, {app}; "
        "print(sorted(m for m in ('torch', 'transformers', 'lightning', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
