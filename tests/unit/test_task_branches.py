"""Task behaviour lives on the Task (tasks/): the rest of the library asks `get_task(name)`
(or `core.handle.takes_images`) instead of branching on a task's name, so adding a task
touches tasks/ only (issue 23, item 4).

The counting rule: a comparison (`==`, `!=`, `in`, `not in`, ...) where one side is a
built-in task's name as a string constant (or a tuple/list/set holding one), or
`IMAGE_TASK`, and another side mentions a name or attribute containing "task"
(`task`, `handle.task`, `self.task`, `first.get("task")`), anywhere under src/reactinfer
except tasks/."""
import ast
from pathlib import Path

import reactinfer

ROOT = Path(reactinfer.__file__).parent
TASK_NAMES = {"embedding", "causal-lm", "classification", "image-classification"}
# What may stay: the GGUF loader (a GGUF file holds a causal LM), the nn.Module loader's
# output check (classifiers), and the tiny test models built per task (testing/tiny.py).
MAX_BRANCHES = 8


def _is_task_name(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value in TASK_NAMES
    if isinstance(node, ast.Name):
        return node.id == "IMAGE_TASK"
    if isinstance(node, ast.Attribute):
        return node.attr == "IMAGE_TASK"
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_task_name(e) for e in node.elts)
    return False


def _mentions_task(node: ast.AST) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and "task" in sub.id.lower():
            return True
        if isinstance(sub, ast.Attribute) and "task" in sub.attr.lower():
            return True
        if isinstance(sub, ast.Constant) and sub.value == "task":  # d.get("task"), d["task"]
            return True
    return False


def task_name_branches(root: Path = ROOT) -> list[str]:
    """`file:line` of each comparison of a task with a task name, outside tasks/."""
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] == "tasks":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if any(_is_task_name(s) and any(_mentions_task(o) for o in sides if o is not s)
                   for s in sides):
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def test_the_rule_finds_task_name_branches(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "tasks" / "t.py").write_text('if task == "embedding":\n    pass\n')  # exempt
    (pkg / "m.py").write_text(
        'a = handle.task == "causal-lm"\n'
        'b = task in ("image-classification", "classification")\n'
        'c = g.task != IMAGE_TASK\n'
        'd = first.get("task") == "embedding"\n'
        'e = mode == "embedding"\n'  # no task on the other side: not a task branch
        'f = spec.generates\n'
        'g = {"embedding": 1}\n')  # a table, not a comparison
    assert task_name_branches(pkg) == ["m.py:1", "m.py:2", "m.py:3", "m.py:4"]


def test_few_task_name_branches_outside_tasks():
    found = task_name_branches()
    assert len(found) <= MAX_BRANCHES, (
        f"{len(found)} branches on a task's name outside tasks/ (at most {MAX_BRANCHES}): "
        f"{found}; give the Task an attribute (tasks/base.py) and ask get_task(name)")


def test_every_task_declares_its_behaviour():
    from reactinfer.core.handle import takes_images
    from reactinfer.tasks import eval_batch, get_task
    from reactinfer.tasks.base import Task

    declared = [k for k in Task.__annotations__ if k != "name"]
    for name in TASK_NAMES:
        task = get_task(name)
        assert all(hasattr(task, k) for k in declared), name
        assert takes_images(name) is task.takes_images
        assert task.item_noun == ("images" if task.takes_images else "texts")
    assert [n for n in sorted(TASK_NAMES) if get_task(n).generates] == ["causal-lm"]
    assert eval_batch("causal-lm", 32) == 8 and eval_batch("embedding", 32) == 32
    assert get_task("embedding").default_max_drop == 0.005
    assert takes_images(None) is False
