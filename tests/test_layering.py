"""The layout's rules (docs/architecture.md), checked on the source: no module past 400 lines, no import cycle
(imports inside functions and under TYPE_CHECKING count), the core imports no stage, the child processes
never reach the registry, and the core never imports gradio: the CLI, the training and the endpoint
processes stay light."""

import ast
import subprocess
import sys
from pathlib import Path

STUDIO = Path(__file__).resolve().parents[1] / "studio"
MAX_LINES = 400
STAGES = ("studio.models", "studio.data", "studio.training", "studio.serving", "studio.evaluation",
          "studio.publishing", "studio.ui", "studio.cli")
# the entry points of the processes the studio starts: they read and write their own folder, never SQLite
CHILD_PROCESSES = ("studio.training.__main__", "studio.serving.server.__main__", "studio.publishing.export_worker",
                   "studio.core.shepherd", "studio.training.relay")
REGISTRY = ("studio.core.db", "studio.core.workspace", "studio.core.states", "sqlite_utils", "sqlite3", "gradio")


def modules() -> dict[str, Path]:
    found = {}
    for path in STUDIO.rglob("*.py"):
        name = ".".join(path.relative_to(STUDIO.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports(name: str, path: Path) -> set[str]:
    """Every module `name` imports, wherever the import statement is (top level, function, TYPE_CHECKING)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the studio modules it imports (a name imported from a package counts as that module)."""
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for target in imports(name, path):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            # a package's own submodules and its ancestors are not edges: importing a.b runs a/__init__ first
            if target and target != name and not name.startswith(target + ".") and not target.startswith(name + "."):
                targets.add(target)
        edges[name] = targets
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_module_is_longer_than_400_lines():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (see docs/architecture.md): {long}"


def test_no_import_cycles_lazy_imports_included():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_core_imports_no_stage():
    offenders = {name: sorted(t for t in targets if t.startswith(STAGES))
                 for name, targets in graph().items() if name.startswith("studio.core")}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_child_processes_never_reach_the_registry():
    mods, edges = modules(), graph()
    for entry in CHILD_PROCESSES:
        seen, todo = set(), [entry]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            todo += edges.get(current, ())
        reached = {t for name in seen for t in imports(name, mods[name]) if t.startswith(REGISTRY)}
        assert reached == set(), f"{entry} reaches {sorted(reached)} (through {sorted(seen)})"


def test_no_core_module_imports_gradio():
    offenders = [name for name, path in modules().items() if not name.startswith("studio.ui")
                 and any(t == "gradio" or t.startswith("gradio.") for t in imports(name, path))]
    assert offenders == []


def test_cli_import_leaves_gradio_and_torch_unloaded():
    code = "import sys, studio.cli, studio.core.workspace; studio.cli.build_parser(); " \
           "print('gradio' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
