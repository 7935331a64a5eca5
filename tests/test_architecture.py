"""One-way layers: the import graph of jaxknow/, per file and per subpackage, has no cycle,
and every subpackage imports only from the layers below it (WORKSPACE.md, "Layers"); the
engine (every layer below `studies`) names no study, and no study imports another.

Every import statement counts, wherever it stands (module level, inside a function, under
``if TYPE_CHECKING``), absolute or relative.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jaxknow"

# Bottom to top: a layer may import from the layers before it, never from those after it.
LAYERS = (
    "errors",
    "formats",
    "parallel",
    "model",
    "config",
    "data",
    "io",
    "train",
    "eval",
    "experiments",
    "studies",
)

# The engine: every layer below the studies. It may not import a study nor name one in its
# code (names and strings; comments and docstrings may cite a study as an example).
ENGINE = LAYERS[: LAYERS.index("studies")]
STUDY_WORDS = re.compile(r"bios|countr|jaxknow\.studies", re.IGNORECASE)

Graph = Mapping[str, Iterable[str]]


def module_name(path: Path, root: Path = PACKAGE) -> str:
    """Returns the dotted module name of a file under `root` (a package's __init__.py is the
    package itself)."""
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str], root: Path = PACKAGE) -> set[str]:
    """Returns the modules of `known` that the file at `path` imports anywhere in its body.

    ``from X import Y`` names X.Y when X.Y is a module, else X; relative imports are resolved
    against the file's package.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for t in targets:
            # `import a.b.c` names a.b.c; the deepest known module on the dotted path counts.
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def file_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Returns module -> modules it imports, over every .py file under `root`."""
    files = sorted(root.rglob("*.py"))
    known = {module_name(f, root) for f in files}
    return {module_name(f, root): imported_modules(f, known, root) for f in files}


def layer_of(module: str) -> str:
    """Returns the layer of a module: its subpackage (``jaxknow.data.build`` -> "data") or,
    for a top-level module, its name (``jaxknow.config`` -> "config")."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_graph(files: Graph) -> dict[str, set[str]]:
    """Returns layer -> layers it imports from (imports inside one layer left out)."""
    out: dict[str, set[str]] = {}
    for src, targets in files.items():
        out.setdefault(layer_of(src), set()).update(
            layer_of(t) for t in targets if layer_of(t) != layer_of(src)
        )
    return out


def find_cycle(graph: Graph) -> list[str] | None:
    """Returns one cycle of `graph` as a path [a, b, ..., a], or None when it has none."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(graph):
        if start in state:
            continue
        path = [start]
        stack = [iter(sorted(graph.get(start, ())))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


def upward_imports(layers: Graph, order: tuple[str, ...] = LAYERS) -> list[str]:
    """Returns "a -> b" for every import of a layer from a layer above it (or one missing
    from `order`)."""
    rank = {name: i for i, name in enumerate(order)}
    bad = []
    for src in sorted(layers):
        for dst in sorted(layers[src]):
            if src not in rank or dst not in rank or rank[dst] > rank[src]:
                bad.append(f"{src} -> {dst}")
    return bad


def test_cycle_finder_finds_a_hand_made_cycle():
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"x": {"x"}}) == ["x", "x"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set(), "e": {"a", "c"}}) is None


def test_import_scanner_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "top.py").write_text("def f():\n    from pkg.sub import deep\n")
    (pkg / "sub" / "deep.py").write_text("from .. import top\nfrom .sib import x\n")
    (pkg / "sub" / "sib.py").write_text("import pkg.sub.deep as d\nimport os\n")
    graph = file_graph(pkg)
    assert graph["pkg.top"] == {"pkg.sub.deep"}
    assert graph["pkg.sub.deep"] == {"pkg.top", "pkg.sub.sib"}
    assert graph["pkg.sub.sib"] == {"pkg.sub.deep"}
    assert find_cycle(graph) == ["pkg.sub.deep", "pkg.sub.sib", "pkg.sub.deep"]
    assert layer_graph(graph) == {"pkg": set(), "top": {"sub"}, "sub": {"top"}}
    assert upward_imports({"sub": {"top"}, "top": set()}, ("sub", "top")) == ["sub -> top"]


def test_no_import_cycle_between_files():
    cycle = find_cycle(file_graph())
    assert cycle is None, "import cycle between files: " + " -> ".join(cycle)


def test_no_import_cycle_between_subpackages():
    cycle = find_cycle(layer_graph(file_graph()))
    assert cycle is None, "import cycle between subpackages: " + " -> ".join(cycle)


def test_subpackages_import_only_downward():
    layers = layer_graph(file_graph())
    layers.pop("jaxknow", None)  # jaxknow/__init__.py
    assert upward_imports(layers) == [], f"imports against the layer order {LAYERS}"


def _docstrings(tree: ast.AST) -> set[int]:
    """Returns the ids of the docstring nodes of a module, its classes and functions."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                out.add(id(body[0].value))
    return out


def _code_words(node: ast.AST) -> list[str]:
    """Returns the identifiers and module names a node spells in code."""
    if isinstance(node, ast.Name):
        return [node.id]
    if isinstance(node, ast.Attribute):
        return [node.attr]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return [node.name]
    if isinstance(node, ast.arg):
        return [node.arg]
    if isinstance(node, ast.keyword):
        return [node.arg or ""]
    if isinstance(node, ast.alias):
        return [node.name, node.asname or ""]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    return []


def study_mentions(path: Path, pattern: re.Pattern[str] = STUDY_WORDS) -> list[str]:
    """Returns "file:line: text" for every identifier, imported module or string constant of
    the file at `path` that matches `pattern` (a study's name); docstrings and comments are
    left out, so they may cite a study as an example."""
    tree = ast.parse(path.read_text(), str(path))
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        words = _code_words(node)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            words = [node.value]
        if isinstance(node, ast.ImportFrom) and node.module == "jaxknow":
            words += [f"jaxknow.{a.name}" for a in node.names]  # from jaxknow import studies
        found += [f"{path.name}:{node.lineno}: {w!r}" for w in words if pattern.search(w)]
    return found


def engine_files(root: Path = PACKAGE) -> list[Path]:
    """Returns every .py file of the engine's layers (`ENGINE`) under `root`."""
    return [f for f in sorted(root.rglob("*.py")) if layer_of(module_name(f, root)) in ENGINE]


def test_study_scanner_sees_code_and_skips_docstrings(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        '"""About the bioS study."""\n'
        "# countries: a comment\n"
        "def f(x):\n"
        '    """Docstring naming Countries."""\n'
        '    return {"kind": "bios"}\n'
        "class BiosThing:\n"
        "    pass\n"
        "def g():\n"
        "    from jaxknow.studies.x import y\n"
        "    from jaxknow import studies\n"
        '    return country_names(f"{x} countries")\n'
    )
    found = sorted(m.split(": ", 1)[1] for m in study_mentions(f))
    assert found == sorted(
        [
            "'BiosThing'",
            "'jaxknow.studies.x'",
            "'jaxknow.studies'",
            "'bios'",
            "'country_names'",
            "' countries'",
        ]
    )


def test_the_engine_names_no_study():
    files = engine_files()
    assert any(f.name == "world_builders.py" for f in files)  # the scan covers the engine
    found = [m for f in files for m in study_mentions(f)]
    assert found == [], (
        "engine modules name a study (move the code into jaxknow/studies/, or make it "
        "generic and let the study register it): " + "; ".join(found)
    )


def test_the_engine_imports_no_study():
    graph = file_graph()
    bad = [
        f"{src} -> {dst}"
        for src, targets in sorted(graph.items())
        if layer_of(src) in ENGINE
        for dst in sorted(targets)
        if layer_of(dst) == "studies"
    ]
    assert bad == []


def test_no_study_imports_another():
    graph = file_graph()

    def study_of(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and parts[1] == "studies" else None

    bad = [
        f"{src} -> {dst}"
        for src, targets in sorted(graph.items())
        for dst in sorted(targets)
        if study_of(src) and study_of(dst) and study_of(src) != study_of(dst)
    ]
    assert bad == [], "a study imports another (share code through the engine instead)"


# One parameter layout (layers stacked): the functions that convert between it and per-layer
# views live in `jaxknow.model.layout`. A function elsewhere whose name looks like a layout
# converter must be listed here with what it is.
LAYOUT_MODULE = "jaxknow.model.layout"
CONVERTER_NAME = re.compile(r"(^|_)(un)?stack(ed|s)?(_|$)|per_layer|to_layout", re.IGNORECASE)
NOT_CONVERTERS = {
    "jaxknow.model.params.per_layer_specs": "a spec tree's per-layer view: layout.unstack",
    "jaxknow.io.checkpoint._to_layout": "a restored item into the target's layout: "
    "layout.stack / unstack under jit",
    "jaxknow.eval.probing._stack_heads": "stacks probe heads, not layers",
    "jaxknow.eval.plots.plot_per_layer": "a plot of per-layer curves",
}


def layout_converters(root: Path = PACKAGE) -> list[str]:
    """Returns "module.function" for every function under `root`, outside the layout module,
    whose name looks like a layout converter (`CONVERTER_NAME`)."""
    found = []
    for f in sorted(root.rglob("*.py")):
        mod = module_name(f, root)
        if mod == LAYOUT_MODULE:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            is_def = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_def and CONVERTER_NAME.search(node.name):
                found.append(f"{mod}.{node.name}")
    return found


def test_layout_scanner_sees_converter_names(tmp_path):
    pkg = tmp_path / "jaxknow" / "train"
    pkg.mkdir(parents=True)
    (pkg / "state.py").write_text(
        "def stacks_layers(): ...\ndef f():\n    def _to_per_layer(x): ...\ndef restack(): ...\n"
    )
    assert layout_converters(tmp_path / "jaxknow") == [
        "jaxknow.train.state.stacks_layers",
        "jaxknow.train.state._to_per_layer",
    ]


def test_layout_converters_live_in_model_layout():
    found = layout_converters()
    assert set(found) <= set(NOT_CONVERTERS), sorted(set(found) - set(NOT_CONVERTERS))
    assert set(NOT_CONVERTERS) <= set(found), "stale entries in NOT_CONVERTERS"
