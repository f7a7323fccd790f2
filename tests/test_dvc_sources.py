"""`dvc status` and `dvc repro ingest` of the real dvc.yaml for every documented kind of
`ingest.source`: a local folder, an archive, s3://BUCKET/PREFIX (a real S3 server) and
dvc://REPO@REV/PATH (a DVC repository made here). Each runs in a scratch git repository with
the project's dvc.yaml and a copy of params.yaml whose ingest.source is changed."""

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from sasan.data.source_lock import source_lock
from tests.data.test_ingest_s3 import s3_env, s3_server  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]

pytestmark = pytest.mark.slow


def run(cmd, cwd, env=None, ok=True):
    res = subprocess.run(cmd, cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=600)
    if ok:
        assert res.returncode == 0, f"{cmd}:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


def _env():
    return {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1"}


def make_repo(path: Path, source: str, cases: int = 3) -> Path:
    """A scratch copy of the project's DVC pipeline with ingest.source = ``source``."""
    path.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    shutil.copytree(ROOT / ".dvc", path / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    (path / "sasan").symlink_to(ROOT / "sasan")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["ingest"]["source"] = source
    params["phantom"]["cases"] = cases
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q"], path)
    run([*GIT, "add", "-A"], path)
    run([*GIT, "commit", "-qm", "init"], path)
    return path


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> Path:
    """A tiny phantom data set (nnU-Net layout) to serve from every kind of source."""
    out = tmp_path_factory.mktemp("phantom") / "phantom"
    run([str(BIN / "sasan"), "data", "phantom", str(out), "--cases", "3", "--size", "32"], out.parent)
    return out


def dvc_repo_with(data: Path, where: Path) -> str:
    """A git+DVC repository tracking ``data`` at data/heart, tagged v1; returns its path."""
    where.mkdir()
    run(["git", "init", "-q"], where)
    run([str(BIN / "dvc"), "init", "-q"], where)
    run([str(BIN / "dvc"), "remote", "add", "-d", "store", str(where.parent / "dvc-store")], where)
    shutil.copytree(data, where / "data" / "heart")
    run([str(BIN / "dvc"), "add", "-q", "data/heart"], where)
    run([str(BIN / "dvc"), "push", "-q"], where)
    run([*GIT, "add", "-A"], where)
    run([*GIT, "commit", "-qm", "data v1"], where)
    run([*GIT, "tag", "v1"], where)
    return str(where)


def check_status_and_repro(repo: Path) -> None:
    status = run([str(BIN / "dvc"), "status"], repo)
    assert "Unsupported URL" not in status.stdout + status.stderr
    run([str(BIN / "dvc"), "repro", "ingest"], repo)
    assert (repo / "data" / "raw" / "manifest.json").is_file()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    assert "data/source.json" in [d["path"] for d in lock["ingest"]["deps"]]
    # nothing changed up to ingest: only the source stage (always run, cheap) is listed
    changed = [line for line in run([str(BIN / "dvc"), "status", "ingest"], repo).stdout.splitlines()
               if line and not line.startswith(("\t", " "))]
    assert set(changed) <= {"source:", "Data and pipelines are up to date."}, changed


def test_local_folder_and_archive(phantom, tmp_path):
    repo = make_repo(tmp_path / "folder", str(phantom))
    check_status_and_repro(repo)
    # a changed file in the source folder reruns ingest
    before = source_lock(str(phantom))
    victim = next(p for p in sorted(phantom.rglob("*.json")))
    victim.write_text(victim.read_text() + " ")
    try:
        assert source_lock(str(phantom)) != before
        run([str(BIN / "dvc"), "repro", "source"], repo)
        assert "ingest:" in run([str(BIN / "dvc"), "status", "ingest"], repo).stdout
    finally:
        victim.write_text(victim.read_text()[:-1])

    archive = tmp_path / "heart.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(phantom, arcname="heart")
    check_status_and_repro(make_repo(tmp_path / "archive", str(archive)))


def test_dvc_repository_source(phantom, tmp_path):
    source = f"dvc://{dvc_repo_with(phantom, tmp_path / 'data-repo')}@v1/data/heart"
    lock = source_lock(source)
    assert lock["kind"] == "dvc" and lock["md5"].endswith(".dir") and len(lock["commit"]) == 40
    check_status_and_repro(make_repo(tmp_path / "repo", source))


def test_s3_source(phantom, s3_env, tmp_path):
    s3_env.create_bucket(Bucket="dvc-source-test")
    for path in sorted(p for p in phantom.rglob("*") if p.is_file()):
        s3_env.upload_file(str(path), "dvc-source-test", f"heart/{path.relative_to(phantom).as_posix()}")
    lock = source_lock("s3://dvc-source-test/heart")
    assert lock["kind"] == "s3" and all(o["etag"] for o in lock["objects"].values())
    check_status_and_repro(make_repo(tmp_path / "repo", "s3://dvc-source-test/heart"))


def test_dvc_repository_on_s3_remote_takes_the_endpoint_from_the_environment(phantom, s3_env, tmp_path,
                                                                            monkeypatch):
    """docs/cluster.md section 9: the remote's bucket is committed, its endpoint only in
    .dvc/config.local. A dvc:// source read elsewhere (a pipeline pod) has neither that file
    nor the data repository's cache and reaches the store through AWS_ENDPOINT_URL_S3."""
    from sasan.data.sources import download_dvc
    from sasan.errors import DataError

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    s3_env.create_bucket(Bucket="dvc-remote-test")
    where = tmp_path / "data-repo"
    where.mkdir()
    dvc = str(BIN / "dvc")
    run(["git", "init", "-q"], where)
    run([dvc, "init", "-q"], where)
    run([dvc, "remote", "add", "-d", "s3remote", "s3://dvc-remote-test/store"], where)
    run([dvc, "remote", "modify", "--local", "s3remote", "endpointurl", endpoint], where)
    shutil.copytree(phantom, where / "data" / "heart")
    run([dvc, "add", "-q", "data/heart"], where)
    run([dvc, "push", "-q"], where)
    run([*GIT, "add", "-A"], where)
    run([*GIT, "commit", "-qm", "data v1"], where)
    run([*GIT, "tag", "v1"], where)
    assert "endpointurl" not in (where / ".dvc" / "config").read_text()
    (where / ".dvc" / "config.local").unlink()
    shutil.rmtree(where / ".dvc" / "cache")

    monkeypatch.delenv("AWS_ENDPOINT_URL")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")     # nothing listens: the data is not local
    with pytest.raises(DataError, match="DVC download failed"):
        download_dvc(str(where), "v1", "data/heart", tmp_path / "nowhere")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)     # what the cluster ConfigMap sets
    got = download_dvc(str(where), "v1", "data/heart", tmp_path / "download")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(phantom).as_posix() for p in phantom.rglob("*") if p.is_file())
