"""The subpackages form layers: a module imports only from its own subpackage or lower
layers, counting imports inside functions too. So there is no cycle among subpackages.

    core < data, tasks, models < compression, backends < measure < planner < serving
         < cluster < cli        (testing: helpers for tests, above the library)

Core's registries name the packages that fill them (core/plugins.py), as entry points do;
those names are data, checked here to be the only upward references."""
import ast
from collections import defaultdict
from pathlib import Path

import reactinfer
from reactinfer.core import plugins

ROOT = Path(reactinfer.__file__).parent
LAYERS = [{"core"}, {"data", "tasks", "models"}, {"compression", "backends"}, {"measure"},
          {"planner"}, {"serving"}, {"cluster"}, {"cli"}, {"testing"}]
LEVEL = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def subpackage(path: Path) -> str | None:
    parts = path.relative_to(ROOT).parts
    return parts[0] if len(parts) > 1 else None  # top-level modules are the facade


def imported_subpackages(path: Path, here: tuple[str, ...] | None = None) -> set[str]:
    """Subpackages of reactinfer that `path` imports, anywhere in the file. `here`: the
    module's package inside reactinfer (default: from the file's place in the tree)."""
    if here is None:
        here = path.relative_to(ROOT).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(here[:len(here) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                targets = [parts] if node.module else [base + [a.name] for a in node.names]
            elif node.module and node.module.split(".")[0] == "reactinfer":
                targets = [node.module.split(".")[1:]]
            else:
                continue
        elif isinstance(node, ast.Import):
            targets = [a.name.split(".")[1:] for a in node.names
                       if a.name.split(".")[0] == "reactinfer"]
        else:
            continue
        out |= {t[0] for t in targets if t and (ROOT / t[0]).is_dir()}
    return out


def edges() -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = defaultdict(set)
    for path in ROOT.rglob("*.py"):
        a = subpackage(path)
        for b in imported_subpackages(path):
            if a is not None and b != a:
                found[(a, b)].add(str(path.relative_to(ROOT)))
    return found


def test_every_subpackage_has_a_layer():
    pkgs = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert pkgs == set(LEVEL), f"place new subpackages in LAYERS: {pkgs ^ set(LEVEL)}"


def test_imports_go_only_downwards():
    upward = {f"{a} -> {b} ({', '.join(sorted(files))})"
              for (a, b), files in edges().items() if LEVEL[b] >= LEVEL[a]}
    assert not upward, "imports that break the layering:\n" + "\n".join(sorted(upward))


def test_no_cycle_among_subpackages():
    graph = defaultdict(set)
    for a, b in edges():
        graph[a].add(b)

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n}))
                   for n in graph[start])

    cyclic = sorted(a for a in list(graph) if reaches(a, a, {a}))
    assert not cyclic, f"subpackages on a cycle: {cyclic}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    probe = tmp_path / "probe.py"  # read as if it were a module of reactinfer.core
    probe.write_text("def f():\n    from ..serving import app\n    import reactinfer.cli\n")
    assert imported_subpackages(probe, here=("core",)) == {"serving", "cli"}


def test_core_names_only_the_plugin_packages_it_loads():
    for kind, modules in plugins.BUILTIN.items():
        for m in modules:
            assert m.split(".")[1] in LEVEL and LEVEL[m.split(".")[1]] > LEVEL["core"], kind


# -- inside a subpackage: files form no circle ------------------------------------------------
# Counted like the layers (imports inside functions too), except imports under
# `if TYPE_CHECKING:`, which annotations need and which never run. When two files need each
# other, the shared part goes to a third file below both (DESIGN.md).

def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks (not their `else`)."""
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for stmt in node.body:
                skip.update(id(n) for n in ast.walk(stmt))
    return skip


def _module_file(root: Path, parts: list[str]) -> Path | None:
    """The file of module `parts` under `root` (longest prefix that is a module), or None
    for the package itself."""
    while parts:
        base = root.joinpath(*parts)
        for f in (base.with_suffix(".py"), base / "__init__.py"):
            if f.is_file():
                return f
        parts = parts[:-1]
    return None


def imported_modules(path: Path, root: Path = ROOT) -> set[Path]:
    """Files of the package at `root` that `path` imports when it runs."""
    here = path.relative_to(root).with_suffix("").parts[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    targets: list[list[str]] = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 > len(here):
                    continue
                mod = list(here[:len(here) - node.level + 1])
            elif node.module and node.module.split(".")[0] == root.name:
                mod = []
            else:
                continue
            mod += node.module.split(".")[1 if not node.level else 0:] if node.module else []
            targets += [mod + [a.name] for a in node.names]  # a name or a submodule
        elif isinstance(node, ast.Import):
            targets += [a.name.split(".")[1:] for a in node.names
                        if a.name.split(".")[0] == root.name]
    found = {_module_file(root, t) for t in targets}
    return {f for f in found if f is not None and f != path}


def file_circles(root: Path = ROOT) -> list[list[str]]:
    """Sets of files of one subpackage that import each other round (each sorted)."""
    graph: dict[Path, set[Path]] = {}
    for path in root.rglob("*.py"):
        pkg = path.relative_to(root).parts
        if len(pkg) > 1:  # top-level modules are the facade
            graph[path] = {f for f in imported_modules(path, root)
                           if f.relative_to(root).parts[0] == pkg[0]}

    def reach(start: Path) -> set[Path]:
        seen: set[Path] = set()
        todo = list(graph.get(start, ()))
        while todo:
            n = todo.pop()
            if n not in seen:
                seen.add(n)
                todo += graph.get(n, ())
        return seen

    reaches = {p: reach(p) for p in graph}
    circles = {frozenset(q for q in reaches[p] if p in reaches[q])  # p's circle
               for p in graph if p in reaches[p]}
    return sorted(sorted(str(f.relative_to(root)) for f in c) for c in circles)


def test_no_circle_among_the_files_of_a_subpackage():
    circles = file_circles()
    assert not circles, "files that import each other round (move the shared part to a " \
        "file below them):\n" + "\n".join(", ".join(c) for c in circles)


def test_the_file_checker_sees_circles_through_functions_but_not_type_checking(tmp_path):
    sub = tmp_path / "reactinfer" / "sub"
    sub.mkdir(parents=True)
    (tmp_path / "reactinfer" / "__init__.py").write_text("")
    (sub / "__init__.py").write_text("")
    (sub / "a.py").write_text("from .b import f\nfrom . import c\n")
    (sub / "b.py").write_text("def f():\n    from reactinfer.sub.a import g\n")
    (sub / "c.py").write_text("from typing import TYPE_CHECKING\n"
                              "if TYPE_CHECKING:\n    from .a import g\n")
    (sub / "d.py").write_text("import reactinfer.sub.c\n")
    root = tmp_path / "reactinfer"
    assert imported_modules(sub / "a.py", root) == {sub / "b.py", sub / "c.py"}
    assert imported_modules(sub / "c.py", root) == set()
    assert imported_modules(sub / "d.py", root) == {sub / "c.py"}
    assert file_circles(root) == [["sub/a.py", "sub/b.py"]]
