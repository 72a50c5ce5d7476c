"""Checks of the source itself that ruff does not make: a function or class defined twice in
one module or class body. The later copy silently wins, and ruff's F811 says nothing when
the first copy was used before the redefinition (`make lint` runs this file)."""

import ast
from collections.abc import Iterator
from pathlib import Path

from mnist.paths import REPO_ROOT

SOURCES = ("mnist", "scripts", "tests")
DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _redefines_on_purpose(node: ast.AST) -> bool:
    """@overload stubs and a property's @<name>.setter/.deleter reuse the name by design."""
    for decorator in getattr(node, "decorator_list", []):
        name = ast.unparse(decorator)
        if name.endswith(("overload", ".setter", ".deleter")):
            return True
    return False


def redefinitions(path: Path) -> Iterator[str]:
    """`file:line: name` for each def/class that repeats a name of its module or class body."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bodies = [tree.body, *(n.body for n in ast.walk(tree) if isinstance(n, ast.ClassDef))]
    for body in bodies:
        first: dict[str, int] = {}
        for node in body:
            if not isinstance(node, DEFINITIONS) or _redefines_on_purpose(node):
                continue
            if node.name in first:
                where = f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
                yield f"{where}: {node.name} (first defined on line {first[node.name]})"
            first.setdefault(node.name, node.lineno)


def test_no_function_or_class_is_defined_twice_in_one_scope():
    files = sorted(p for source in SOURCES for p in (REPO_ROOT / source).rglob("*.py"))
    assert files
    found = [line for path in files for line in redefinitions(path)]
    assert not found, "defined twice (the later copy wins):\n" + "\n".join(found)
