"""The house itself: sdkit's layers (`sdkit.LAYERS`, described in the package docstring) hold, there is no import
circle, no module shadows a name of the package face, and `import sdkit` stays light.

Imports are read with `ast`, inside functions too: a lazy import is still a dependency, and so is
`importlib.import_module("sdkit.x")` with a literal name. Lazy *faces* (a name -> module table resolved by
`importlib`) are not imports and are not counted. Data flows down with no exception: no upward edge is allowed
(`sdkit.UPWARD` is empty) and no circle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sdkit

ROOT = Path(sdkit.__file__).parent
HEAVY = ("torch", "jax", "jaxlib", "flax", "ipywidgets", "matplotlib", "diffusers", "transformers")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, name: str, is_package: bool = False) -> set[str]:
    """The sdkit modules `source` (module `name`) imports; `from sdkit.x import y` is sdkit.x.y if that is one."""
    out = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            targets = [node.args[0].value]
        else:
            continue
        out.update(t for t in targets if t == "sdkit" or t.startswith("sdkit."))
    out.discard(name)
    return {t if t in MODULES else t.rpartition(".")[0] for t in out}


def layer_of(module: str) -> int:
    best = max(((len(p), i) for i, layer in enumerate(sdkit.LAYERS) for p in layer
                if module == p or module.startswith(p + ".")), default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer of sdkit.LAYERS; add it where it belongs")
    return best[1]


GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def test_every_module_has_a_layer():
    for m in MODULES:
        layer_of(m)


def test_upward_is_empty():
    """No declared exception: the layers hold for every import (generate no longer reaches up into search)."""
    assert sdkit.UPWARD == {}


def test_nothing_imports_a_layer_above_it():
    upward = [f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
              for m, targets in sorted(GRAPH.items()) for t in sorted(targets) if layer_of(t) > layer_of(m)]
    assert not upward, "\n".join(upward)


def test_no_import_circles():
    circles, state = [], {}

    def visit(m, stack):
        state[m] = "open"
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == "open":
                circles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert not circles, "\n".join(circles)


def test_the_checker_sees_upward_imports_and_circles():
    """The walk can fail: a lazy import of the explorer from save is upward, so is an `importlib.import_module`
    literal, and a pair importing each other (by importlib too) is a circle."""
    save = imports_in("import json\n\ndef f():\n    from sdkit.show.explorer import widgets\n", "sdkit.save")
    assert save == {"sdkit.show.explorer.widgets"} and layer_of("sdkit.show.explorer.widgets") > layer_of("sdkit.save")
    relative = imports_in("from ..results import Candidate\nfrom . import masks\n", "sdkit.edit.tasks")
    assert relative == {"sdkit.results", "sdkit.edit.masks"}
    hidden = imports_in("import importlib\n\ndef f():\n    importlib.import_module('sdkit.cli.main')\n", "sdkit.save")
    assert hidden == {"sdkit.cli.main"}
    # What c0504fc removed: generate reaching up into the strategies by importlib is an upward edge, and one.
    reach = imports_in("import importlib\n\ndef generate(search):\n    return importlib.import_module("
                       "'sdkit.search.baseline').best_of_n\n", "sdkit.generation")
    assert reach == {"sdkit.search.baseline"}
    global GRAPH
    real = GRAPH
    assert "sdkit.toy.previewer" in real["sdkit.load.previewer"]  # a real import inside a function is seen, not missed
    assert "sdkit.generation" in real["sdkit.search.family"]  # the search layer calls generate: the downward edge
    try:
        GRAPH = {**real, "sdkit.generation": real["sdkit.generation"] | reach}
        with pytest.raises(AssertionError, match=r"sdkit.generation \(layer 4\) imports sdkit.search.baseline \(layer 8\)"):
            test_nothing_imports_a_layer_above_it()
        with pytest.raises(AssertionError, match="sdkit.generation -> sdkit.search.baseline -> sdkit.search.family "
                                                 "-> sdkit.generation"):
            test_no_import_circles()
        GRAPH = {**real, "sdkit.results": real["sdkit.results"] | {"sdkit.checks"},
                 "sdkit.checks": real["sdkit.checks"] | {"sdkit.results"}}
        with pytest.raises(AssertionError, match="sdkit.checks -> sdkit.results -> sdkit.checks"):
            test_no_import_circles()
    finally:
        GRAPH = real


def test_no_module_shadows_a_name_of_the_face():
    """`sdkit.generate` is the function: no submodule `sdkit/generate.py` may rebind it on import."""
    shadowing = sorted(set(sdkit.__all__) & {m.split(".")[1] for m in MODULES if m.count(".") >= 1})
    assert not shadowing, f"modules named like functions of the face: {shadowing}"
    for name in sdkit.__all__:
        module = sdkit._EXPORTS[name]
        assert f"sdkit.{module}" in MODULES, f"sdkit.{name} points at a module that does not exist: {module}"


def _imported_by(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True, check=True)
    # importtime lines: "import time: self [us] | cumulative | imported package"
    return {line.rsplit("|", 1)[1].strip().split(".")[0] for line in out.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def test_import_sdkit_is_light():
    heavy = sorted(set(HEAVY) & _imported_by("import sdkit"))
    assert not heavy, f"`import sdkit` imported {heavy}"
    # The check itself can fail: touching a heavy name does import it.
    assert "torch" in _imported_by("import sdkit; sdkit.load_pipeline")


@pytest.mark.parametrize("module, absent", [
    ("sdkit.scoring.torch_clip", ("jax", "flax")),
    ("sdkit.ranking", HEAVY),
    ("sdkit.save", HEAVY),
    ("sdkit.toy.shapes", HEAVY),
    ("sdkit.models.builtin", HEAVY),
])
def test_light_modules_stay_light(module, absent):
    loaded = sorted(set(absent) & _imported_by(f"import {module}"))
    assert not loaded, f"`import {module}` imported {loaded}"


# Programs print their output; the library speaks through the `sdkit` logger and `warnings` only.
PRINTS_ALLOWED = ("sdkit.cli", "sdkit.toy.__main__", "sdkit.notebook")


def test_the_library_does_not_print():
    printing = sorted(f"{m}:{node.lineno}" for m, path in MODULES.items()
                      if not any(m == a or m.startswith(a + ".") for a in PRINTS_ALLOWED)
                      for node in ast.walk(ast.parse(path.read_text()))
                      if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print")
    assert not printing, f"print() in library modules (use logging.getLogger(__name__) or warnings): {printing}"


def test_library_messages_reach_stderr_with_no_logging_setup():
    code = "import logging; import sdkit; logging.getLogger('sdkit.generation').warning('out of memory; retrying')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr == "sdkit: out of memory; retrying\n" and out.stdout == ""
