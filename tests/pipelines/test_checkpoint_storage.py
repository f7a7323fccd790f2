"""sasan.storage against a real S3 server (SeaweedFS, the fixture of the ingest tests), and
``sasan train --checkpoint-uri``: a run stopped after a checkpoint resumes from the S3 copy
in a fresh folder and ends with the weights of an uninterrupted run."""

import logging

import pytest
import torch
import yaml

from sasan import storage
from sasan.cli import main
from sasan.errors import DataError
from tests.data.test_ingest_s3 import s3_env, s3_server  # noqa: F401  (fixtures)
from tests.pipelines.conftest import tiny_params

# One bucket for the whole module: the test server (-volume.max=16) grows volumes per bucket
# and runs out of them after two or three buckets.
BUCKET = "sasan-ckpt-test"


def _bucket(client) -> str:
    if BUCKET not in [b["Name"] for b in client.list_buckets().get("Buckets", [])]:
        client.create_bucket(Bucket=BUCKET)
    return BUCKET


def test_upload_and_download_files_and_folders(s3_env, tmp_path):
    _bucket(s3_env)
    src = tmp_path / "src"
    (src / "a" / "checkpoints").mkdir(parents=True)
    (src / "a" / "checkpoints" / "joint.pt").write_bytes(b"weights")
    (src / "top.json").write_text("{}")
    assert storage.upload(src, f"s3://{BUCKET}/run1") == 2
    assert storage.download_if_exists(f"s3://{BUCKET}/run1", tmp_path / "back") == 2
    assert (tmp_path / "back" / "a" / "checkpoints" / "joint.pt").read_bytes() == b"weights"
    # a single object, and a prefix that only shares a name start is not matched
    storage.upload(src / "top.json", f"s3://{BUCKET}/run10/x.json")
    assert storage.download_if_exists(f"s3://{BUCKET}/run1/top.json", tmp_path / "one.json") == 1
    assert storage.download_if_exists(f"s3://{BUCKET}/run1", tmp_path / "back2") == 2
    assert storage.download_if_exists(f"s3://{BUCKET}/nothing-yet", tmp_path / "none") == 0
    assert not (tmp_path / "none").exists()
    with pytest.raises(DataError, match="S3 download failed"):
        storage.download_if_exists("s3://no-such-bucket/x", tmp_path / "err")
    with pytest.raises(DataError, match="not an s3"):
        storage.upload(src, "/local/path")


def test_publish_and_localize_by_reference_or_in_the_artifact(s3_env, tmp_path):
    _bucket(s3_env)
    out = tmp_path / "out"
    out.mkdir()
    (out / "f.txt").write_text("x")
    # no data root: the artifact holds the data
    art = tmp_path / "art0"
    assert storage.publish(out, "", "shards", art) == str(art)
    assert storage.localize(art, tmp_path / "s0") == art and (art / "f.txt").is_file()
    # s3 data root: the artifact holds a reference only
    art = tmp_path / "art1"
    assert storage.publish(out, f"s3://{BUCKET}/data/run-7", "shards", art) == f"s3://{BUCKET}/data/run-7/shards"
    assert [p.name for p in art.iterdir()] == [storage.REF_FILE]
    assert (storage.localize(art, tmp_path / "s1") / "f.txt").read_text() == "x"
    # a mounted volume
    art = tmp_path / "art2"
    where = storage.publish(out, str(tmp_path / "pvc"), "shards", art)
    assert storage.localize(art, tmp_path / "s2") == tmp_path / "pvc" / "shards" == type(art)(where)


@pytest.mark.slow
def test_preempted_training_resumes_from_the_s3_checkpoint(s3_env, tiny_shards, tmp_path, monkeypatch, caplog):
    _, shards = tiny_shards
    _bucket(s3_env)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(tiny_params(train={"segmenter": {"epochs": 1.0, "max_steps": 4,
                                                                      "batch_size": 4}})))
    common = ["--params", str(params), "--variants", "no_adaptation", "--no-tracking", "--no-progress"]
    uri = f"s3://{BUCKET}/job-1/train"

    assert main(["train", str(shards), str(tmp_path / "full"), *common]) == 0

    class Preempted(Exception):
        pass

    real_upload = storage.upload

    def upload_then_preempt(local, s3_uri):
        n = real_upload(local, s3_uri)
        if torch.load(local, weights_only=True)["step"] == 2:
            raise Preempted()          # the pod dies right after the step-2 checkpoint reached S3
        return n

    monkeypatch.setattr(storage, "upload", upload_then_preempt)
    with pytest.raises(Preempted):
        main(["train", str(shards), str(tmp_path / "pod1"), *common, "--checkpoint-uri", uri])
    monkeypatch.setattr(storage, "upload", real_upload)
    keys = [o["Key"] for o in s3_env.list_objects_v2(Bucket=BUCKET, Prefix="job-1/")["Contents"]]
    assert keys == ["job-1/train/no_adaptation/checkpoints/segmenter.pt"]

    # a new pod: empty local folder, same checkpoint URI
    with caplog.at_level(logging.INFO, logger="sasan.train.loop"):
        assert main(["train", str(shards), str(tmp_path / "pod2"), *common, "--checkpoint-uri", uri]) == 0
    assert "resuming from step 2" in caplog.text
    full = torch.load(tmp_path / "full" / "no_adaptation" / "checkpoints" / "segmenter.pt", weights_only=True)
    resumed = torch.load(tmp_path / "pod2" / "no_adaptation" / "checkpoints" / "segmenter.pt", weights_only=True)
    assert full["step"] == resumed["step"] == 4
    for key, value in full["state"]["model"].items():
        assert torch.equal(value, resumed["state"]["model"][key]), key
    # and the final checkpoint is in S3 too
    s3_final = tmp_path / "s3_final.pt"
    storage.download_if_exists(uri + "/no_adaptation/checkpoints/segmenter.pt", s3_final)
    assert torch.load(s3_final, weights_only=True)["step"] == 4


class _CountingClient:
    """A stand-in S3 client: objects in a dict, records how many transfers overlap."""

    def __init__(self):
        import threading

        self.objects, self.active, self.peak, self.lock = {}, 0, 0, threading.Lock()

    def _transfer(self):
        import time

        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        with self.lock:
            self.active -= 1

    def upload_file(self, path, bucket, key):
        self._transfer()
        self.objects[key] = open(path, "rb").read()

    def download_file(self, bucket, key, path):
        self._transfer()
        open(path, "wb").write(self.objects[key])

    def get_paginator(self, _):
        objects = self.objects

        class Pages:
            def paginate(self, Bucket, Prefix):
                return [{"Contents": [{"Key": k} for k in sorted(objects) if k.startswith(Prefix)]}]
        return Pages()


def test_folders_transfer_several_files_at_once(tmp_path, monkeypatch):
    client = _CountingClient()
    monkeypatch.setattr(storage, "_client", lambda: client)
    src = tmp_path / "shards"
    for i in range(24):
        (src / f"d{i % 3}").mkdir(parents=True, exist_ok=True)
        (src / f"d{i % 3}" / f"{i}.npy").write_bytes(bytes([i]) * 10)
    assert storage.upload(src, "s3://b/run/shards") == 24
    assert client.peak > 1 and client.peak <= storage.TRANSFER_THREADS
    client.peak = 0
    assert storage.download_if_exists("s3://b/run/shards", tmp_path / "back") == 24
    assert client.peak > 1
    assert sorted(p.relative_to(tmp_path / "back") for p in (tmp_path / "back").rglob("*.npy")) == \
        sorted(p.relative_to(src) for p in src.rglob("*.npy"))
    assert (tmp_path / "back" / "d1" / "7.npy").read_bytes() == bytes([7]) * 10
    assert not list((tmp_path / "back").rglob("*.part"))
