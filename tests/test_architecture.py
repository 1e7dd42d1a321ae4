"""The import drawing of the library: no loop (function-local imports included), no private name imported from another
module. Read from the source with ``ast``, so nothing is imported to check it."""

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
LIBRARY = "trl_opd"


def modules(package: str) -> dict[str, tuple[Path, bool]]:
    """``{dotted name: (path, is a package __init__)}`` of every module of ``package``."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return out


def imports(name: str, path: Path, is_package: bool):
    """``(target module or name, imported name or None)`` of every import statement, wherever it stands."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name


def edges(package: str) -> dict[str, set[str]]:
    """Module -> the modules of ``package`` it imports (a package's own submodules count as modules). An import of an
    enclosing package (the lazy facades ``trl_opd``, ``trl_opd.cli``) is left out: it is a name lookup, not a layer."""
    known = modules(package)
    out = {name: set() for name in known}
    for name, (path, is_package) in known.items():
        for target, imported in imports(name, path, is_package):
            candidate = f"{target}.{imported}" if imported else target
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                out[name].add(candidate)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_checker_sees_a_loop_hidden_in_a_function(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import f\n")
    (package / "b.py").write_text("def f():\n    from .a import g\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert cycles(edges("pkg")) == [["pkg.a", "pkg.b"]]


def test_the_library_has_no_import_loop():
    assert cycles(edges(LIBRARY)) == []


def test_no_private_name_is_imported_from_another_module():
    found = [
        f"{name} imports {imported} from {target}"
        for name, (path, is_package) in modules(LIBRARY).items()
        for target, imported in imports(name, path, is_package)
        if imported and imported.startswith("_") and not imported.startswith("__")
    ]
    assert found == []


LAB = "trl_opd_lab"
#: The one library module that reaches the lab: ``trl-opd lab`` dispatches to it, inside its functions only.
LAB_DISPATCH = "trl_opd.cli.lab"


def imports_the_lab(target: str, imported: str | None) -> bool:
    return target == LAB or target.startswith(LAB + ".") or (target == "" and imported == LAB)


def test_the_library_does_not_import_the_lab():
    found = []
    for name, (path, is_package) in modules(LIBRARY).items():
        if name == LAB_DISPATCH:
            continue
        found += [f"{name} imports {target}" for target, imported in imports(name, path, is_package)
                  if imports_the_lab(target, imported)]  # fmt: skip
    assert found == []


def test_the_cli_reaches_the_lab_only_inside_its_functions():
    path, _ = modules(LIBRARY)[LAB_DISPATCH]
    top_level = [
        target
        for node in ast.parse(path.read_text()).body
        for target in (
            [alias.name for alias in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom)
            else []
        )
    ]  # fmt: skip
    assert not [target for target in top_level if imports_the_lab(target, None)]
    assert any(imports_the_lab(target, imported) for target, imported in imports(LAB_DISPATCH, path, False))


def test_the_lab_imports_only_public_library_names_and_has_no_loop():
    graph = edges(LAB)
    assert cycles(graph) == []
    private = [
        f"{name} imports {imported} from {target}"
        for name, (path, is_package) in modules(LAB).items()
        for target, imported in imports(name, path, is_package)
        if target.startswith(LIBRARY) and any(part.startswith("_") for part in [*target.split("."), imported or ""])
    ]
    assert private == []


#: The layers of docs/architecture.md, bottom first: a module imports only from its own layer or those under it.
LAYERS = (
    (
        "schedules",
        "tiling",
        "float_path",
        "divergences.registry",
        "memory",
        "measurement",
        "assets",
        "tiny",
        "atomic",
        "fingerprint",
        "ownership",
    ),  # fmt: skip
    ("divergences", "scoring", "data", "evaluation", "policy_gradient"),
    ("models", "compatibility", "sharding", "teachers", "hooks"),
    ("trainers",),
    ("pipeline", "cli"),
)


def layer_of(name: str) -> int:
    """The layer of a library module (the longest matching prefix wins: ``divergences.registry`` before
    ``divergences``); the facade ``trl_opd`` is above every layer."""
    best, found = "", len(LAYERS)
    for level, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            full = f"{LIBRARY}.{prefix}"
            if (name == full or name.startswith(full + ".")) and len(full) > len(best):
                best, found = full, level
    return found


def test_every_module_has_a_layer_and_imports_point_down():
    graph = edges(LIBRARY)
    assert [name for name in graph if name != LIBRARY and layer_of(name) == len(LAYERS)] == []
    upward = [f"{name} -> {target}" for name, targets in graph.items() for target in targets
              if layer_of(target) > layer_of(name)]  # fmt: skip
    assert upward == []


def tree_paths(text: str) -> set[str]:
    """The file paths the tree block of docs/architecture.md names (folders by indentation, several names a line)."""
    block = text.split("## The tree", 1)[1].split("```", 2)[1]
    folders: list[str] = []
    paths = set()
    for line in block.splitlines():
        if not line.strip():
            continue
        depth = (len(line) - len(line.lstrip())) // 2
        folders = folders[:depth]
        for token in line.split():
            if token.endswith("/"):
                folders.append(token.rstrip("/"))
                break
            if not token.endswith((".py", ".json")):
                break
            paths.add("/".join([*folders, token]))
    return paths


def test_the_architecture_page_lists_every_module():
    listed = tree_paths((ROOT / "docs" / "architecture.md").read_text())
    folded = {"trl_opd/trainers/spin"}  # one line for the SPIN package (its modules are named on it)
    missing = [
        str(path.relative_to(ROOT))
        for package in (LIBRARY, LAB)
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name != "__init__.py"  # a package's own line stands for it
        and str(path.relative_to(ROOT)) not in listed
        and str(path.parent.relative_to(ROOT)) not in folded
    ]
    assert missing == []
    stale = [path for path in listed if not (ROOT / path).exists()]
    assert stale == []
