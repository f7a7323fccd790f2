"""SIGTERM during training (a pod evicted or preempted, `kill`): the step checkpoints and
ends its MLflow child run as KILLED; the rerun resumes the checkpoint and re-opens the same
child run, which ends FINISHED. Run as real processes, from a folder that is not a git
checkout, with the image's revision in the environment (as in the project image)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient

from tests.pipelines.conftest import PHANTOM_SIZE, tiny_params

ROOT = Path(__file__).resolve().parents[2]
SHA = "fedcba9876543210fedcba9876543210fedcba98"
STEPS = 400


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Tiny phantom shards written by the preprocess stage (with the data identity)."""
    from sasan.config import config_from_dict
    from sasan.data.phantom import generate_phantom
    from sasan.stages import ingest, preprocess
    from sasan.tracking.runs import Tracker

    root = tmp_path_factory.mktemp("resume")
    cfg = config_from_dict(tiny_params())
    generate_phantom(root / "phantom", cases=3, seed=0, size=PHANTOM_SIZE)
    ingest.run(ingest.IngestInputs(str(root / "phantom")), ingest.IngestOutputs(root / "raw"), cfg, Tracker.disabled())
    preprocess.run(preprocess.PreprocessInputs(root / "raw"), preprocess.PreprocessOutputs(root / "shards"), cfg,
                   Tracker.disabled())
    return root / "shards"


def _train(work: Path, shards: Path, uri: str, variants: str = "no_adaptation",
           threads: str = "1") -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "SASAN_IMAGE_REVISION": SHA, "OMP_NUM_THREADS": threads,
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sasan", "train", str(shards), "out", "--params", "params.yaml",
                             "--variants", variants, "--no-progress"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(client: MlflowClient, ref: Path, proc: subprocess.Popen, steps: int, timeout: float = 240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if ref.is_file():
            history = client.get_metric_history(json.loads(ref.read_text())["run_id"], "segmenter/loss")
            if history and max(m.step for m in history) >= steps:
                return
        time.sleep(0.2)
    raise AssertionError("training did not get going")


@pytest.mark.slow
def test_sigterm_checkpoints_ends_the_child_run_killed_and_the_rerun_resumes_it(shards, tmp_path):
    work = tmp_path / "work"          # no .git here: the commit must come from SASAN_IMAGE_REVISION
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(
        train={"checkpoint_every": 10_000, "log_every": 1,
               "segmenter": {"epochs": 10_000.0, "max_steps": STEPS, "batch_size": 4}})))
    uri = f"sqlite:///{(work / 'mlflow.db').as_posix()}"
    client = MlflowClient(uri)
    ref = work / "out" / "no_adaptation" / "mlflow_run.json"
    checkpoint = work / "out" / "no_adaptation" / "checkpoints" / "segmenter.pt"

    first = _train(work, shards, uri)
    _wait_for_steps(client, ref, first, 3)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "stopped by SIGTERM" in err.strip().splitlines()[-1]
    stopped_at = torch.load(checkpoint, weights_only=True)["step"]
    assert 3 <= stopped_at < STEPS                     # checkpointed where it stopped, not at the end
    child_id = json.loads(ref.read_text())["run_id"]
    child = client.get_run(child_id)
    parent_id = child.data.tags["mlflow.parentRunId"]
    assert child.info.status == "KILLED" and child.info.run_name == "no_adaptation"
    assert client.get_run(parent_id).info.status == "KILLED"

    second = _train(work, shards, uri)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    assert f"resuming from step {stopped_at} / {STEPS}" in err
    assert json.loads(ref.read_text())["run_id"] == child_id      # the same child run, re-opened
    child = client.get_run(child_id)
    assert child.info.status == "FINISHED"
    assert torch.load(checkpoint, weights_only=True)["step"] == STEPS
    assert client.get_run(parent_id).info.status == "FINISHED"    # the same execution continued
    runs = client.search_runs([child.info.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["mr->ct", "no_adaptation"]
    # lineage from a folder without git: the image's revision, the data set as an input
    assert child.data.tags["mlflow.source.git.commit"] == SHA and child.data.tags["sasan.code_source"] == "image"
    identity = json.loads((shards / "data_identity.json").read_text())
    assert child.data.tags["sasan.data.digest"] == identity["digest"]
    assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["phantom"]


@pytest.mark.slow
def test_variants_side_by_side_stop_together_on_sigterm_and_resume(shards, tmp_path):
    """train.jobs = 2 on CPU: two worker processes of one thread each, one MLflow child run per
    variant under the same parent. SIGTERM to the stage reaches both workers, which checkpoint
    and end their child runs KILLED; the rerun resumes both and ends them FINISHED."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(
        train={"jobs": 2, "checkpoint_every": 10_000, "log_every": 1,
               "segmenter": {"epochs": 10_000.0, "max_steps": STEPS, "batch_size": 4}})))
    uri = f"sqlite:///{(work / 'mlflow.db').as_posix()}"
    client = MlflowClient(uri)
    variants = ("no_adaptation", "upper_bound")
    refs = {v: work / "out" / v / "mlflow_run.json" for v in variants}
    ckpts = {v: work / "out" / v / "checkpoints" / "segmenter.pt" for v in variants}

    first = _train(work, shards, uri, ",".join(variants), threads="2")
    for v in variants:
        _wait_for_steps(client, refs[v], first, 3)
    first.send_signal(signal.SIGTERM)
    out, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "side by side: 2 workers x 1 thread(s)" in err
    stopped = {v: torch.load(ckpts[v], weights_only=True)["step"] for v in variants}
    assert all(3 <= s < STEPS for s in stopped.values()), stopped
    children = {v: client.get_run(json.loads(refs[v].read_text())["run_id"]) for v in variants}
    assert {c.info.status for c in children.values()} == {"KILLED"}
    parents = {c.data.tags["mlflow.parentRunId"] for c in children.values()}
    assert len(parents) == 1

    second = _train(work, shards, uri, ",".join(variants), threads="2")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-2000:]
    for v in variants:
        assert f"resuming from step {stopped[v]} / {STEPS}" in err
        child = client.get_run(children[v].info.run_id)       # the same child runs, re-opened
        assert child.info.status == "FINISHED" and child.info.run_name == v
        assert torch.load(ckpts[v], weights_only=True)["step"] == STEPS
        assert (work / "out" / v / "model.pt").is_file()
    assert client.get_run(parents.pop()).info.status == "FINISHED"


def test_side_by_side_workers_keep_their_thread_count():
    """A worker's torch threads are cores // jobs for every variant it trains, whatever the
    others do: a variant's float rounding never depends on timing (a worker that took a
    finished one's cores mid-run made two `make run`s differ from the step of the switch on)."""
    import multiprocessing as mp

    from sasan.stages import train as stage

    ctx = mp.get_context("spawn")
    with ctx.Pool(1, initializer=stage._worker_init, initargs=(3, 20)) as pool:
        assert pool.apply(torch.get_num_threads) == 3
