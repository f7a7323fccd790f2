"""Provenance: git commit and DVC hashes read from real git and DVC repositories."""

import subprocess
import sys

import pytest

from sasan.tracking.lineage import RunContext
from sasan.tracking.provenance import dvc_data_hash, git_commit, git_dirty


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "a.txt").write_text("a\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_git_commit_and_dirty_state(repo, tmp_path_factory):
    assert git_commit(repo) == _git(repo, "rev-parse", "HEAD")
    assert git_dirty(repo) is False
    (repo / "a.txt").write_text("changed\n")
    assert git_dirty(repo) is True
    elsewhere = tmp_path_factory.mktemp("not-a-repo")
    assert git_commit(elsewhere) is None and git_dirty(elsewhere) is None


def test_hash_of_a_pipeline_output_comes_from_dvc_lock(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        "schema: '2.0'\nstages:\n  preprocess:\n    cmd: sasan preprocess\n"
        "    deps:\n    - path: data/raw\n      hash: md5\n      md5: 1111.dir\n"
        "    outs:\n    - path: data/shards\n      hash: md5\n      md5: 2222.dir\n      size: 10\n      nfiles: 3\n")
    assert dvc_data_hash(tmp_path, "data/shards") == "2222.dir"
    assert dvc_data_hash(tmp_path, "./data/shards/") == "2222.dir"
    assert dvc_data_hash(tmp_path, "data/raw") is None          # a dependency, not an output of a stage
    assert dvc_data_hash(tmp_path, "data/other") is None


def test_hash_of_a_dvc_added_folder_matches_dvc_itself(tmp_path):
    data = tmp_path / "data" / "raw"
    data.mkdir(parents=True)
    (data / "x.txt").write_text("x\n")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, capture_output=True)
    subprocess.run([*dvc, "add", "-q", "data/raw"], cwd=tmp_path, check=True, capture_output=True)
    digest = dvc_data_hash(tmp_path, "data/raw")
    assert digest is not None and digest.endswith(".dir")
    assert digest in (tmp_path / "data" / "raw.dvc").read_text()


def test_unreadable_lock_is_ignored_not_fatal(tmp_path):
    (tmp_path / "dvc.lock").write_text("stages: [unclosed\n")
    assert dvc_data_hash(tmp_path, "data/shards") is None


def test_a_checkout_gives_the_commit_before_the_image_revision(repo):
    tags = RunContext.from_environ({"SASAN_IMAGE_REVISION": "f" * 40}, "dvc", code_dir=repo).tags()
    assert tags["sasan.git_commit"] == tags["mlflow.source.git.commit"] == _git(repo, "rev-parse", "HEAD")
    assert tags["sasan.code_source"] == "git" and tags["sasan.image_revision"] == "f" * 40
    assert tags["sasan.git_dirty"] == "false"          # untracked files do not make the code dirty
    (repo / "a.txt").write_text("edited\n")
    assert RunContext(code_dir=repo).tags()["sasan.git_dirty"] == "true"
