"""The package's imports, read from its source: no circle, and no stage importing a later one.

Every `import` and `from ... import` of a labkit module counts, at module level or inside
a function (a function-level import is still a dependency; it only runs later). Nothing
is imported to find them: each file is parsed with `ast`.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "labkit"

# The stages, earliest first. A module may import its own stage or an earlier one, never a
# later one. The most specific prefix places a module ("labkit" itself: only the package's
# __init__); a new module must be given a place here.
STAGES = [
    ("base", ["labkit.errors", "labkit.config", "labkit.files", "labkit.system", "labkit.run_folder", "labkit.hardware", "labkit.lockfile"]),
    ("strategies", ["labkit.strategies"]),  # the contract and the methods
    ("run config", ["labkit.profiles", "labkit.datasets"]),  # a config checked against method and data
    ("training", ["labkit.training"]),  # what a rank runs under torchrun
    ("jobs", ["labkit.jobs", "labkit"]),  # starting and watching torchrun; labkit.run / launch / resume
    ("report", ["labkit.report"]),  # result files → frames, plots, text
    # programs that put the stages together
    ("programs", ["labkit.cli", "labkit.lab", "labkit.measure", "labkit.assignments", "labkit.notebook",
                  "labkit.datasets.prep"]),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str) -> set[str]:
    """The labkit modules `name` imports anywhere in its file. `from pkg import x` is an
    import of pkg.x when that is a module, else of pkg; `from .x import y` is resolved
    against the module's own package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: one dot is the module's own package
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH = {name: imported_modules(name) for name in MODULES}


def find_cycle(graph):
    """One import circle as a list of modules (first == last), or None."""
    state, path = {}, []  # state: 1 = on the current path, 2 = done

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def stage_of(name: str) -> int:
    matches = [(len(prefix), index) for index, (_, prefixes) in enumerate(STAGES) for prefix in prefixes
               if name == prefix or (prefix != "labkit" and name.startswith(prefix + "."))]
    assert matches, f"{name} has no stage: add it to STAGES in tests/test_imports.py"
    return max(matches)[1]


def test_the_walk_sees_imports_of_every_kind():
    # module level, inside a function, relative, and `from package import submodule`
    assert "labkit.errors" in GRAPH["labkit.config"]
    assert "labkit.strategies.base" in GRAPH["labkit.strategies"]  # inside load_strategy
    assert "labkit.strategies.base" in GRAPH["labkit.strategies.ddp"]  # from .base import ...
    assert "labkit.hardware" in GRAPH["labkit.profiles"]  # from labkit import hardware
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert stage_of("labkit.strategies.ddp") == stage_of("labkit.strategies") < stage_of("labkit.training.worker")
    with pytest.raises(AssertionError, match="has no stage"):
        stage_of("labkit.somewhere_new")  # the package's own stage is not a catch-all


def test_no_import_cycle():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_no_stage_imports_a_later_stage():
    wrong = [f"{name} ({STAGES[stage_of(name)][0]}) imports {other} ({STAGES[stage_of(other)][0]})"
             for name, others in sorted(GRAPH.items()) for other in sorted(others)
             if stage_of(other) > stage_of(name)]
    assert not wrong, "an earlier stage imports a later one:\n" + "\n".join(wrong)


def test_errors_needs_only_python():
    tree = ast.parse(MODULES["labkit.errors"].read_text())
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    tops = {(alias.name if isinstance(n, ast.Import) else n.module or ".").split(".")[0]
            for n in imports for alias in n.names}
    assert tops <= set(sys.stdlib_module_names), f"labkit/errors.py imports {sorted(tops)}"


def test_config_loads_without_the_strategies():
    # The config is read by every tool before any method is chosen: it must not pull them in.
    code = "import sys, labkit.config; print(sorted(m for m in sys.modules if m.startswith('labkit')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "labkit.strategies" not in loaded and "torch" not in loaded, loaded


def test_starting_processes_knows_nothing_of_the_job():
    # labkit.jobs.command starts any command (a run, the student check, the primer, a benchmark), and
    # labkit.jobs.cluster one per emulated node: the Job (labkit.jobs.job) uses them, never the reverse.
    assert "labkit.jobs.command" in GRAPH["labkit.jobs.job"]
    for name in ("labkit.jobs.command", "labkit.jobs.cluster"):
        assert "labkit.jobs.job" not in GRAPH[name], f"{name} imports labkit.jobs.job"
