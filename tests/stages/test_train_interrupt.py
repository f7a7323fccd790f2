"""Ctrl-C during `sasan train` is handled as SIGTERM is: each training phase checkpoints at
the end of its step and stops, MLflow runs end KILLED, exit 130, no traceback (the worker
processes of `train.jobs` used to print one each). Workers whose main process is killed stop
the same way, quietly. Run as real processes in their own session (Ctrl-C in a terminal
reaches the whole process group)."""

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

from tests.pipelines.conftest import tiny_params
from tests.stages.test_train_resume import ROOT, STEPS, _wait_for_steps, shards  # noqa: F401 (a fixture)

VARIANTS = ("no_adaptation", "upper_bound")


def _start(work: Path, shards: Path, jobs: int, variants) -> subprocess.Popen:
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(
        train={"jobs": jobs, "checkpoint_every": 10_000, "log_every": 1,
               "segmenter": {"epochs": 10_000.0, "max_steps": STEPS, "batch_size": 4}})))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{(work / 'mlflow.db').as_posix()}",
           "OMP_NUM_THREADS": str(jobs), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "sasan", "train", str(shards), "out", "--params", "params.yaml",
                             "--variants", ",".join(variants), "--no-progress"], cwd=work, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _group_gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def _check_stopped(work: Path, client: MlflowClient, variants) -> None:
    """Each variant checkpointed where it stopped and its child run ended KILLED."""
    for v in variants:
        step = torch.load(work / "out" / v / "checkpoints" / "segmenter.pt", weights_only=True)["step"]
        assert 3 <= step < STEPS, (v, step)
        child = client.get_run(json.loads((work / "out" / v / "mlflow_run.json").read_text())["run_id"])
        assert child.info.status == "KILLED", v


@pytest.mark.slow
@pytest.mark.parametrize("jobs,variants,to",
                         [(1, VARIANTS[:1], "group"), (2, VARIANTS, "group"), (2, VARIANTS, "main")],
                         ids=["sequential", "side-by-side", "side-by-side-main-only"])
def test_ctrl_c_checkpoints_ends_the_runs_killed_and_exits_130(shards, tmp_path, jobs, variants, to):  # noqa: F811
    work = tmp_path / "work"
    work.mkdir()
    client = MlflowClient(f"sqlite:///{(work / 'mlflow.db').as_posix()}")
    proc = _start(work, shards, jobs, variants)
    try:
        for v in variants:
            _wait_for_steps(client, work / "out" / v / "mlflow_run.json", proc, 3)
        if to == "group":
            os.killpg(proc.pid, signal.SIGINT)        # Ctrl-C in a terminal
        else:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
    lines = err.strip().splitlines()
    assert "stopped by SIGINT" in lines[-1] and "rerun to resume" in lines[-1]
    assert sum("checkpoint saved" in line for line in lines) == len(variants)   # one line per stopped phase
    _check_stopped(work, client, variants)
    parent = client.get_run(client.get_run(json.loads(
        (work / "out" / variants[0] / "mlflow_run.json").read_text())["run_id"]).data.tags["mlflow.parentRunId"])
    assert parent.info.status == "KILLED"
    assert _group_gone(proc.pid, 30)


@pytest.mark.slow
def test_workers_stop_quietly_when_the_main_process_is_killed(shards, tmp_path):  # noqa: F811
    """The main process dies (kill -9): each worker checkpoints at the end of its step, ends
    its child run KILLED and exits, without a BrokenPipeError traceback from the pool's pipe."""
    work = tmp_path / "work"
    work.mkdir()
    client = MlflowClient(f"sqlite:///{(work / 'mlflow.db').as_posix()}")
    proc = _start(work, shards, 2, VARIANTS)
    try:
        for v in VARIANTS:
            _wait_for_steps(client, work / "out" / v / "mlflow_run.json", proc, 3)
        proc.kill()
        out, err = proc.communicate(timeout=120)    # returns once the workers, which hold its pipes, exit
        assert _group_gone(proc.pid, 30)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert "Traceback" not in err and "BrokenPipeError" not in err, err[-3000:]
    assert sum("SIGTERM at step" in line for line in err.splitlines()) == len(VARIANTS), err[-3000:]
    _check_stopped(work, client, VARIANTS)
