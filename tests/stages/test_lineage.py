"""Lineage from a folder that is not a git checkout (as in a Kubeflow pod): the commit comes
from the image's revision, the data identity from the manifest (and dvc.lock where there is
one), the KFP run id and link from the context; the data set is a run input."""

import json
import subprocess

import pytest
from mlflow import MlflowClient

from sasan.tracking.lineage import RunContext, data_identity, log_lineage, read_identity, write_identity
from sasan.tracking.runs import Tracker

SHA = "0123456789abcdef0123456789abcdef01234567"


def _manifest(root, source="/scratch/phantom", test_ids=("ct_002", "ct_001")):
    cases = [{"case_id": "mr_001", "domain": "mr", "split": "train", "sha256": {"image": "a", "label": "b"}},
             *[{"case_id": c, "domain": "ct", "split": "test", "sha256": {"image": c, "label": c + "l"}}
               for c in test_ids]]
    root.mkdir(parents=True, exist_ok=True)
    (root / "manifest.json").write_text(json.dumps({"version": 1, "dataset": "phantom", "source": source,
                                                    "cases": cases}))
    return root


def test_the_folder_is_not_a_git_checkout(tmp_path):
    done = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True)
    assert done.returncode != 0


def test_commit_image_and_kfp_run_from_the_context(tmp_path):
    env = {"SASAN_IMAGE_REVISION": SHA, "SASAN_IMAGE": "registry.example/sasan@sha256:" + "f" * 64,
           "SASAN_IMAGE_FLAVOR": "cuda", "KFP_UI_URL": "https://kfp.example/pipeline/"}
    tags = RunContext.from_environ(env, "kubeflow", code_dir=tmp_path, kfp_run_id="run-42").tags()
    assert tags["sasan.git_commit"] == tags["mlflow.source.git.commit"] == SHA
    assert tags["sasan.code_source"] == "image" and "sasan.git_dirty" not in tags
    assert tags["sasan.image"].endswith("f" * 64) and tags["sasan.image_flavor"] == "cuda"
    assert tags["kfp.run_id"] == "run-42"
    assert tags["kfp.run_url"] == "https://kfp.example/pipeline/#/runs/details/run-42"
    assert tags["sasan.orchestrator"] == "kubeflow"


def test_the_kfp_api_address_is_not_a_run_link(tmp_path):
    # the API (port 8888) serves no UI page: without the UI's address there is no link
    env = {"KFP_API_URL": "http://ml-pipeline.kubeflow.svc.cluster.local:8888"}
    tags = RunContext.from_environ(env, "kubeflow", code_dir=tmp_path, kfp_run_id="run-42").tags()
    assert tags["kfp.run_id"] == "run-42" and "kfp.run_url" not in tags


def test_an_unknown_revision_is_not_recorded(tmp_path):
    tags = RunContext.from_environ({"SASAN_IMAGE_REVISION": "unknown"}, code_dir=tmp_path).tags()
    assert "sasan.git_commit" not in tags and "kfp.run_url" not in tags


def test_data_identity_is_the_content_not_the_place(tmp_path):
    a = data_identity(_manifest(tmp_path / "a", source="/scratch/x"))
    b = data_identity(_manifest(tmp_path / "b", source="s3://bucket/phantom"))
    assert a.digest == b.digest and len(a.digest) == 64 and a.source == "/scratch/x"
    assert a.test_cases == {"ct": ["ct_001", "ct_002"]}
    other = data_identity(_manifest(tmp_path / "c", test_ids=("ct_001", "ct_003")))
    assert other.digest != a.digest and other.test_split["ct"] != a.test_split["ct"]
    write_identity(tmp_path / "shards", a)
    assert read_identity(tmp_path / "shards") == a
    assert read_identity(tmp_path / "nothing") is None


def test_the_dvc_hash_is_read_where_a_dvc_lock_records_it(tmp_path):
    _manifest(tmp_path / "data" / "raw")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n  ingest:\n    outs:\n"
                                       "    - path: data/raw\n      md5: abc123.dir\n")
    assert data_identity(tmp_path / "data" / "raw", code_dir=tmp_path).dvc_hash == "abc123.dir"
    assert data_identity(tmp_path / "data" / "raw").dvc_hash is None


def test_lineage_lands_on_the_run_with_the_data_set_as_input(tmp_path, tracking_uri):
    identity = data_identity(_manifest(tmp_path / "raw", source="s3://bucket/phantom"))
    context = RunContext.from_environ({"SASAN_IMAGE_REVISION": SHA}, "kubeflow", code_dir=tmp_path,
                                      kfp_run_id="run-7")
    tracker = Tracker.start(tracking_uri, "exp", "mr->ct")
    log_lineage(tracker, context, identity)
    run = MlflowClient(tracking_uri).get_run(tracker.run_id)
    assert run.data.tags["mlflow.source.git.commit"] == SHA and run.data.tags["kfp.run_id"] == "run-7"
    assert run.data.tags["sasan.data.digest"] == identity.digest
    (dataset_input,) = run.inputs.dataset_inputs
    assert dataset_input.dataset.name == "phantom" and identity.digest.startswith(dataset_input.dataset.digest)
    assert dataset_input.dataset.source_type == "s3"
    assert json.loads(dataset_input.dataset.source) == {"uri": "s3://bucket/phantom"}
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"


@pytest.fixture
def tracking_uri(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    return f"sqlite:///{(store / 'mlflow.db').as_posix()}"
