"""Architecture rules checked on the source: no import cycles (function-level imports
count: a lazy import still ties two modules together), no private MLflow API, every module
importable on its own, and one stage contract."""

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("sasan", "components")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Project modules ``name`` imports anywhere in its body (``from a import b`` names the
    module ``a.b`` when that is a module, else ``a``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in MODULES:      # sasan.x.y.Name -> sasan.x.y
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, result, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                result.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return result


def test_the_import_graph_has_no_cycles():
    graph = {name: _imports(name, path) for name, path in MODULES.items()}
    assert graph["sasan.data.shards"] and "sasan.data.preprocess" not in graph["sasan.data.shards"]
    cycles = _cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_the_old_preprocess_shards_cycle():
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


IMPORT_EACH = """
import importlib, sys
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("sasan", "components")]:
        del sys.modules[loaded]          # each project module imported from scratch
    try:
        importlib.import_module(name)
    except Exception as err:
        failed.append(f"{name}: {type(err).__name__}: {err}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_on_its_own():
    """Every module imported alone (the project's modules unloaded before each): an import
    that only works after another module was loaded, the symptom of a hidden cycle, fails."""
    # pyfunc_entry is loaded by MLflow itself; __main__ runs the CLI when imported
    names = sorted(n for n in MODULES if n not in ("sasan.tracking.pyfunc_entry", "sasan.__main__"))
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH, *names], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]


PRIVATE_MLFLOW = re.compile(r"\bmlflow(\.\w+)*\._\w+")


def test_no_private_mlflow_api_is_used():
    """Neither ``import mlflow.x._y`` / ``from mlflow.x._y import`` nor ``mlflow.x._y``
    attribute access, in the package or the components (MLflow renames these freely)."""
    offenders = []
    for name, path in MODULES.items():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE_MLFLOW.search(code) or re.search(r"from\s+mlflow[\w.]*\s+import\s+.*\b_\w+", code):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_the_private_api_check_catches_the_old_pattern():
    assert PRIVATE_MLFLOW.search("from mlflow.tracking._tracking_service import utils")
    assert PRIVATE_MLFLOW.search("x = mlflow.tracking._tracking_service.utils._tracking_uri")
    assert not PRIVATE_MLFLOW.search("mlflow.set_tracking_uri(uri)")


STAGES = ("phantom", "ingest", "validate", "preprocess", "train", "evaluate", "register")


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_the_one_contract(stage):
    module = importlib.import_module(f"sasan.stages.{stage}")
    params = list(inspect.signature(module.run).parameters)
    expected = ["outputs", "cfg", "tracker"] if stage == "phantom" else ["inputs", "outputs", "cfg", "tracker"]
    assert params[:len(expected)] == expected


def test_components_call_stages_and_never_the_cli():
    for path in (ROOT / "components").glob("*.py"):
        text = path.read_text()
        assert "sasan.cli" not in text and "main([" not in text, path.name
