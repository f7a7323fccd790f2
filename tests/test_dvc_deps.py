"""Every dvc.yaml stage depends on the code it runs: the sasan modules its command can import
(statically, function-level imports included) each lie under one of the stage's deps, so
editing any of them makes `dvc status` report the stage changed.

What a command runs: the ``sasan`` CLI (the package, every command module's top level, and
the stage's handler function) or ``python -m MODULE``; from there every sasan module the
reached modules import, anywhere in their body (``if TYPE_CHECKING:`` blocks excepted: they
never run)."""

import ast
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "sasan"

# `sasan <words>` -> (CLI module, handler function)
HANDLERS = {
    ("data", "phantom"): ("sasan.cli.data_cmds", "_phantom"),
    ("ingest",): ("sasan.cli.data_cmds", "_ingest"),
    ("validate",): ("sasan.cli.prep_cmds", "_validate"),
    ("preprocess",): ("sasan.cli.prep_cmds", "_preprocess"),
    ("train",): ("sasan.cli.model_cmds", "_train"),
    ("evaluate",): ("sasan.cli.model_cmds", "_evaluate"),
    ("register",): ("sasan.cli.registry_cmds", "_register"),
    ("summary",): ("sasan.cli.model_cmds", "_summary"),
}


def module_file(name: str) -> Path | None:
    path = REPO / Path(*name.split("."))
    for candidate in (path.with_suffix(".py"), path / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(module: str, nodes) -> set[str]:
    """sasan modules imported by ``nodes`` (statements of ``module``), nested bodies included."""
    found = set()
    package = module if module_file(module).name == "__init__.py" else module.rpartition(".")[0]
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sasan"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] == "sasan":
                found.add(base)
                # `from sasan.stages import phantom` imports the module sasan.stages.phantom
                found |= {f"{base}.{a.name}" for a in node.names if module_file(f"{base}.{a.name}")}
        stack.extend(ast.iter_child_nodes(node))
    # a module import runs its parent packages' __init__ too
    return {".".join(m.split(".")[:i]) for m in found for i in range(1, len(m.split(".")) + 1)
            if module_file(".".join(m.split(".")[:i]))}


def closure(start: set[str]) -> set[str]:
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        if name in seen or module_file(name) is None:
            continue
        seen.add(name)
        todo.extend(imported(name, ast.parse(module_file(name).read_text()).body))
    return seen


def cli_entry(words: tuple[str, ...]) -> set[str]:
    """What `sasan WORDS ...` imports: the CLI package and every command module at top level
    (build_parser imports them all), and the body of the stage's handler."""
    cli = ast.parse(module_file("sasan.cli").read_text())
    modules = {"sasan", "sasan.cli"} | imported("sasan.cli", cli.body)
    command_modules = next(ast.literal_eval(n.value) for n in cli.body if isinstance(n, ast.AnnAssign)
                           and getattr(n.target, "id", "") == "COMMAND_MODULES")
    for name in command_modules:
        tree = ast.parse(module_file(name).read_text())
        top = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        modules |= {name} | imported(name, top)
        # register() runs at parser build time
        modules |= imported(name, [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "register"])
    module, handler = next(v for k, v in HANDLERS.items() if words[:len(k)] == k)
    tree = ast.parse(module_file(module).read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    # the handler and the module's own helpers it calls (by name)
    todo, done = [handler], set()
    while todo:
        fn = todo.pop()
        if fn in done:
            continue
        done.add(fn)
        modules |= imported(module, [functions[fn]])
        todo += [c.func.id for c in ast.walk(functions[fn]) if isinstance(c, ast.Call)
                 and isinstance(c.func, ast.Name) and c.func.id in functions]
    # every other module is followed whole: a library function may call anything it imports
    return closure(modules - {m for m in command_modules}) | modules


def stage_modules(cmd: str) -> set[str]:
    words = shlex.split(cmd.replace("\n", " "))
    if words[0] == "sasan":
        return cli_entry(tuple(w for w in words[1:] if not w.startswith("-")))
    if words[:2] == ["python", "-m"]:
        return closure({words[2]}) | {".".join(words[2].split(".")[:i]) for i in range(1, 3)}
    raise AssertionError(f"unknown command form: {cmd}")


def stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def covered(path: Path, deps: list[str]) -> bool:
    rel = path.relative_to(REPO).as_posix()
    return any(rel == d.rstrip("/") or rel.startswith(d.rstrip("/") + "/") for d in deps)


@pytest.mark.parametrize("stage", sorted(stages()))
def test_every_stage_depends_on_the_code_it_imports(stage):
    spec = stages()[stage]
    deps = [d for d in spec.get("deps", []) if isinstance(d, str)]
    missing = sorted(module_file(m).relative_to(REPO).as_posix() for m in stage_modules(spec["cmd"])
                     if not covered(module_file(m), deps))
    assert not missing, f"stage {stage} runs code it does not depend on: {missing}"


def test_the_analysis_sees_lazy_imports():
    """Guards the test itself: a stage's function-level imports are followed."""
    ingest = stage_modules("sasan ingest data/phantom data/raw")
    assert {"sasan.stages.ingest", "sasan.stages.phantom", "sasan.data.phantom", "sasan.data.ingest"} <= ingest
    assert "sasan.train.loop" not in ingest and "sasan.cli.model_cmds" in ingest
    train = stage_modules("sasan train data/shards outputs/train --params params.yaml")
    assert {"sasan.stages.train", "sasan.data.dataset"} <= train
    assert "sasan.inference" in stage_modules("sasan evaluate data/raw outputs/train")


def test_the_phantom_stage_passes_every_phantom_param(tmp_path):
    """dvc.yaml tracks params.yaml's whole ``phantom`` section; the command DVC renders from it
    gives `sasan data phantom` each of those values (a key the command ignored would make
    `dvc repro` re-run the stage with no effect). Every value differs from the CLI defaults."""
    from dvc.repo import Repo

    from sasan.cli import build_parser
    from sasan.config import config_from_dict

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["phantom"] = {"cases": 3, "seed": 5, "domains": ["ct"], "mr_contrast": "black_blood"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text((REPO / "dvc.yaml").read_text())
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc" / "config").write_text("[core]\n    no_scm = true\n")
    with Repo(str(tmp_path)) as repo:
        cmd = next(s for s in repo.index.stages if s.name == "phantom").cmd
    args = build_parser().parse_args(shlex.split(cmd)[1:])
    got = {"cases": args.cases, "seed": args.seed, "domains": tuple(args.domains), "mr_contrast": args.mr_contrast}
    assert got == config_from_dict(params).phantom.model_dump()
