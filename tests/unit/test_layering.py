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
