"""The package layout: heavy dependencies stay in the one module that needs them, no module
imports another's private names, and every package is listed in pyproject.toml."""

import ast
import pathlib
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "nnfp"
# The one module allowed to import each heavy dependency.
OWNERS = {"faiss": "nnfp/store/faiss_index.py", "soxr": "nnfp/audio/io.py", "av": "nnfp/audio/io.py",
          "pyroomacoustics": "nnfp/corpus/rooms.py"}


def _modules_loaded_by(code):
    """The heavy modules (and nnfp.store.db) in `sys.modules` after running `code` in a fresh interpreter."""
    probe = (
        "import sys, contextlib, io\n" + code + "\n"
        "print(sorted(m for m in ('faiss', 'nnfp.store.db', 'pyroomacoustics') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize(
    "code",
    [
        "import nnfp.training",
        "import nnfp.callbacks",
        "from nnfp.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['--help'])",
        "from nnfp.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(['train', '--help'])",
    ],
    ids=["import nnfp.training", "import nnfp.callbacks", "nnfp --help", "nnfp train --help"],
)
def test_training_and_help_do_not_import_faiss(code):
    assert _modules_loaded_by(code) == "[]"


def _imports(path):
    """`(module, names)` of every import statement of a source file (relative imports resolved)."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield module, [alias.name for alias in node.names]


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_heavy_dependencies_are_imported_by_one_module_each():
    found = {}
    for path in SOURCES:
        for module, _ in _imports(path):
            top = module.split(".")[0]
            if top in OWNERS:
                found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    assert found.get("faiss") == {OWNERS["faiss"]}
    for name in ("soxr", "av"):
        assert found.get(name) == {OWNERS[name]}, name
    assert found.get("pyroomacoustics", {OWNERS["pyroomacoustics"]}) == {OWNERS["pyroomacoustics"]}


def test_no_private_name_is_imported_across_modules():
    offenders = [
        f"{path.relative_to(ROOT)}: from {module} import {name}"
        for path in SOURCES
        for module, names in _imports(path)
        if module.startswith("nnfp")
        for name in names
        if name.startswith("_")
    ]
    assert offenders == []


def test_pyproject_lists_every_package_and_ships_the_configs():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {
        ".".join(init.parent.relative_to(ROOT).parts) for init in PACKAGE.rglob("__init__.py")
    }
    assert set(config["packages"]) == folders | {"nnfp.configs"}
    assert config["package-dir"] == {"nnfp.configs": "configs"}
    assert not (PACKAGE / "configs").exists()  # one real configs folder, no link

    from nnfp.config import CONFIG_DIR

    assert CONFIG_DIR.resolve() == (ROOT / "configs").resolve()
    assert (CONFIG_DIR / "default.yaml").is_file()


def _module_name(path):
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in SOURCES}


def _import_graph(top_level_only):
    """`{module: {nnfp modules it imports}}`: at import time (`top_level_only`), or anywhere
    in the module (functions' lazy imports too). `from nnfp.x import y` is an edge to
    `nnfp.x.y` when that is a module, else to `nnfp.x`."""

    def owner(name):
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = set()
        for node in tree.body if top_level_only else ast.walk(tree):
            if isinstance(node, ast.Import):
                targets.update(owner(alias.name) for alias in node.names if alias.name.startswith("nnfp"))
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                if base.startswith("nnfp"):
                    targets.update(owner(f"{base}.{alias.name}") for alias in node.names)
        graph[module] = targets - {module, ""}
    return graph


def _cycles(graph):
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while not component or component[-1] != module:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(found)


# Lazy imports (inside functions) that close a cycle: none is left, and a new one fails.
KNOWN_LAZY_CYCLE_EDGES = set()


def test_no_import_cycle_inside_nnfp():
    assert _cycles(_import_graph(top_level_only=True)) == []  # nothing half-initialised at import
    graph = _import_graph(top_level_only=False)
    assert {(a, b) for a, b in KNOWN_LAZY_CYCLE_EDGES if b not in graph[a]} == set()  # stale entries
    for module, target in KNOWN_LAZY_CYCLE_EDGES:
        graph[module] = graph[module] - {target}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle_and_only_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
