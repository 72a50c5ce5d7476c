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


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """{module of mnist/: every name it imports}, from every import statement, at module
    level or inside a function. `from mnist.a import b` names the module mnist.a.b when
    there is one."""
    paths = {_module_name(p): p for p in (REPO_ROOT / "mnist").rglob("*.py")}
    found: dict[str, set[str]] = {}
    for module, path in paths.items():
        imported = found[module] = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    imported.add(submodule if submodule in paths else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    """{module: the mnist modules it imports}: a cycle of lazy imports still ties the
    modules in it together."""
    found = imports()
    return {module: {name for name in names if name in found and name != module}
            for module, names in found.items()}  # fmt: skip


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a]; None when the graph has none."""
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> list[str] | None:
        if module in stack:
            return [*stack[stack.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph[module]):
            if cycle := visit(imported, [*stack, module]):
                return cycle
        done.add(module)
        return None

    return next(filter(None, (visit(module, []) for module in sorted(graph))), None)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_entry_points_exit():
    """Library code raises; mnist/cli.py turns what it raises into an exit status."""
    found = [
        f"{path.relative_to(REPO_ROOT)}:{node.lineno}"
        for path in sorted((REPO_ROOT / "mnist").rglob("*.py"))
        if path != REPO_ROOT / "mnist" / "cli.py"
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "exit", "os._exit")
    ]
    assert not found, "sys.exit outside mnist/cli.py:\n" + "\n".join(found)


# The training core (data, models, the loop, checkpoints, exact resume) and what it may not
# reach, even lazily or through another module of the package: a tracker, Hydra and its
# configs (the core takes plain typed settings), and the adapters and commands built on it.
CORE = ("mnist.data", "mnist.models", "mnist.training")
NOT_IN_THE_CORE = (
    "mlflow", "hydra", "omegaconf", "mnist.tracking", "mnist.sweeps", "mnist.tuning",
)  # fmt: skip


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == package or name.startswith(f"{package}.") for package in packages)


def test_the_training_core_imports_no_tracker_config_or_adapter():
    found, graph = imports(), import_graph()
    reached = {module for module in found if _within(module, CORE)}
    assert reached
    frontier = set(reached)
    while frontier:
        frontier = set().union(*(graph[module] for module in frontier)) - reached
        reached |= frontier
    wrong = sorted(
        f"{module} imports {name}"
        for module in reached
        for name in found[module]
        if _within(name, NOT_IN_THE_CORE)
    )
    assert not wrong, "the core (with what it imports) reaches:\n" + "\n".join(wrong)


# Only the MLflow adapter speaks to MLflow.
MLFLOW_ADAPTER = ("mnist.tracking",)


def test_only_the_mlflow_adapter_imports_mlflow():
    wrong = sorted(
        f"{module} imports {name}"
        for module, names in imports().items()
        if not _within(module, MLFLOW_ADAPTER)
        for name in names
        if _within(name, ("mlflow",))
    )
    assert not wrong, "MLflow outside mnist/tracking/:\n" + "\n".join(wrong)
