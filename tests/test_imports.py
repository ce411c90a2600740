"""The package's modules: each imports on its own, none imports another in a circle, and layers
point one way (DESIGN: tasks/jobs/errors <- db <- worker <- app <- cli). No database needed."""

from __future__ import annotations

import ast
import graphlib
import importlib.util
import pkgutil
import subprocess
import sys
from pathlib import Path

import jobmaster_async

PACKAGE = "jobmaster_async"
ROOT = Path(jobmaster_async.__file__).parent

# lowest first; a module may import only from its own layer and the ones before it
LAYERS: list[tuple[str, ...]] = [
    (
        "errors",
        "storable",
        "lifecycle",
        "events",
        "jobs",
        "tasks",
        "parameters",
        "definitions",  # a package: tasks, parameters, checks, schedules, registries
        "settings",
        "arguments",
        "schedules",
        "tracing",
        "times",
    ),
    ("db",),
    ("worker",),
    ("app", "sync", "enqueue", "ids", "inspection"),
    ("web",),
    ("cli",),
    ("", "__main__", "examples"),  # the package itself re-exports the API; examples import it
]


def _modules() -> list[str]:
    found = [info.name for info in pkgutil.walk_packages([str(ROOT)], f"{PACKAGE}.")]
    return [PACKAGE, *sorted(found)]


def _layer(module: str) -> int:
    name = module.removeprefix(PACKAGE).removeprefix(".")
    top = name.split(".", 1)[0]
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in {__name__}")


def _imports(module: str, known: set[str]) -> set[str]:
    """The package's modules that ``module`` imports, wherever in it (functions too, and under
    ``if TYPE_CHECKING:``: a circle hidden from the interpreter is still a circle)."""
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            for alias in node.names:  # `from . import x` imports the module x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {module: _imports(module, known) for module in modules}


def test_every_module_imports_on_its_own() -> None:
    """Each module imported first, in a process where none of the package is loaded yet: a cycle
    that only works in one import order fails here. (``__main__`` runs the command: left out.)"""
    modules = [module for module in _modules() if not module.endswith(".__main__")]
    script = (
        "import importlib, sys, traceback\n"
        f"failed = []\nfor name in {modules!r}:\n"
        f"    for loaded in [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE + '.'!r})]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception:\n"
        "        failed.append(name + ':\\n' + traceback.format_exc())\n"
        "print('\\n'.join(failed))\nsys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_no_module_imports_another_in_a_circle() -> None:
    try:
        graphlib.TopologicalSorter(_graph()).prepare()
    except graphlib.CycleError as exc:
        raise AssertionError("import cycle: " + " -> ".join(reversed(exc.args[1]))) from None


def test_layers_point_one_way() -> None:
    upward = [
        f"{module} imports {imported}"
        for module, imports in _graph().items()
        for imported in sorted(imports)
        if _layer(imported) > _layer(module)
    ]
    assert not upward, upward


def test_the_db_layer_does_not_know_tasks() -> None:
    """deploy() writes the rows the tasks side hands it; checking definitions is the tasks' job."""
    graph = _graph()
    db = [module for module in graph if module.startswith(f"{PACKAGE}.db")]
    definitions = {f"{PACKAGE}.tasks", *(module for module in graph if module.startswith(f"{PACKAGE}.definitions"))}
    assert db and all(not graph[module] & definitions for module in db)


def test_the_definitions_need_no_other_layer() -> None:
    """The definitions package imports only its own modules and the package's errors."""
    graph = _graph()
    package = [module for module in graph if module.startswith(f"{PACKAGE}.definitions")]
    assert len(package) > 5
    allowed = {*package, f"{PACKAGE}.errors"}
    assert {module: graph[module] - allowed for module in package if graph[module] - allowed} == {}
