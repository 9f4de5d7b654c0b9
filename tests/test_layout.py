"""The package's shape: the import graph has no cycle, no upward and no private cross-package import, and no
file is longer than ~300 lines without saying why.

Layers, bottom to top (a module may import its own layer and the layers below):

    common, testing (neutral helpers) → reference, kernels, csrc (_extension) → ops, metrics → modules
    → theory → studies, training, hf → the package facade (lambdaskip/__init__) → cli, __main__

Imports inside functions count too: a lazy import is still a dependency.
"""
import ast
import importlib.util
from pathlib import Path

import pytest

import lambdaskip

LAYERS = [
    ("lambdaskip.common", "lambdaskip.testing"),
    ("lambdaskip.reference", "lambdaskip.kernels", "lambdaskip._extension"),
    ("lambdaskip.ops", "lambdaskip.metrics"),
    ("lambdaskip.modules",),
    ("lambdaskip.theory",),
    ("lambdaskip.studies", "lambdaskip.training", "lambdaskip.hf"),
    ("lambdaskip",),
    ("lambdaskip.cli", "lambdaskip.__main__"),
]
MAX_LINES = 300
LONG_FILE_MARK = "Long file:"  # a module over MAX_LINES says why after this mark in its docstring


def _roots() -> dict[str, Path]:
    """Package name -> directory: lambdaskip, and lambdaskip.kernels (installed from the top-level kernels/)."""
    kernels = importlib.util.find_spec("lambdaskip.kernels")
    return {"lambdaskip": Path(lambdaskip.__file__).parent,
            "lambdaskip.kernels": Path(next(iter(kernels.submodule_search_locations)))}


def _modules() -> dict[str, Path]:
    found = {}
    for package, root in _roots().items():
        for path in sorted(root.rglob("*.py")):
            relative = path.relative_to(root).with_suffix("")
            parts = list(relative.parts)
            if package == "lambdaskip" and parts[0] == "kernels":
                continue
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]


def _imports(module: str) -> set[str]:
    """The lambdaskip modules that ``module`` imports anywhere in its file."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = _package_of(module).split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in MODULES else base)
    return {t for t in targets if t == "lambdaskip" or t.startswith("lambdaskip.")}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int:
    best, layer = "", None
    for index, names in enumerate(LAYERS):
        for name in names:
            if (module == name or module.startswith(name + ".")) and len(name) > len(best):
                best, layer = name, index
    assert layer is not None, f"{module} is in no layer; add it to LAYERS"
    return layer


def _private_owner(module: str) -> str | None:
    """The package owning the first private (``_name``) component of ``module``, or None if it has none."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def test_every_module_is_found_and_placed():
    assert {"lambdaskip.theory", "lambdaskip.kernels.lambda_norm", "lambdaskip.cli", "lambdaskip.common",
            "lambdaskip.studies.collapse.run", "lambdaskip.training.loop"} <= set(MODULES)
    for module in MODULES:
        _layer(module)


def test_no_upward_import():
    upward = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
              for m, targets in GRAPH.items() for t in sorted(targets) if t in MODULES and _layer(t) > _layer(m)]
    assert not upward, "\n".join(upward)


def test_no_private_cross_package_import():
    private = []
    for module, targets in GRAPH.items():
        for target in targets:
            owner = _private_owner(target)
            if owner is not None and not (module == owner or module.startswith(owner + ".")):
                private.append(f"{module} imports {target}, private to {owner}")
    assert not private, "\n".join(private)


def test_no_import_cycle():
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(module):  # Tarjan's strongly connected components
        index[module] = low[module] = counter[0]
        counter[0] += 1
        stack.append(module)
        on_stack.add(module)
        for target in GRAPH[module]:
            if target not in MODULES:
                continue
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == module:
                    break
            if len(component) > 1 or module in GRAPH[module]:
                cycles.append(sorted(component))

    for module in sorted(MODULES):
        if module not in index:
            visit(module)
    assert not cycles, cycles


@pytest.mark.parametrize("module", sorted(MODULES))
def test_long_files_say_why(module):
    path = MODULES[module]
    lines = len(path.read_text(encoding="utf-8").splitlines())
    if lines > MAX_LINES:
        docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
        assert LONG_FILE_MARK in docstring, (f"{path} has {lines} lines (> {MAX_LINES}): split it, or say why after "
                                             f"'{LONG_FILE_MARK}' in its docstring")


def test_checker_is_not_vacuous():
    """The checks see what they check: layers ordered as documented, private modules owned, imports parsed."""
    assert _layer("lambdaskip.ops.ssd") < _layer("lambdaskip.theory") < _layer("lambdaskip.cli")
    assert _private_owner("lambdaskip.ops._checks") == "lambdaskip.ops" and _private_owner("lambdaskip.theory") is None
    assert "lambdaskip.modules" in GRAPH["lambdaskip.theory"]
