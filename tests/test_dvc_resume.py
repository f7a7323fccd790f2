"""An interrupted `dvc repro train` resumes: outputs/train is `persist: true`, so the killed
run's checkpoints survive and the rerun continues from the last one instead of step 0.

The real dvc.yaml in a scratch git repository, a tiny profile (one variant, 32x32 slices,
widths 4), the whole process group of the first `dvc repro` killed (SIGKILL: no handler
runs, as when a laptop sleeps or a node dies) as soon as the first checkpoint is on disk."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from tests.test_dvc_sources import make_repo

BIN = Path(sys.executable).parent
TINY = {
    "phantom": {"cases": 3},
    "ingest": {"test_fraction": 0.34},
    "preprocess": {"image_size": 32},
    "model": {"k": 4, "attention_width": 8, "synth_width": 8, "norm_hidden": 8, "disc_width": 8,
              "seg_disc_width": 8, "unet_width": 4},
    "train": {"device": "cpu", "checkpoint_every": 10, "log_every": 10,
              "segmenter": {"epochs": 1000.0, "max_steps": 150, "batch_size": 4}},
    "evaluate": {"methods": ["no_adaptation"]},
}


def _update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = _update(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


@pytest.mark.slow
def test_an_interrupted_dvc_repro_resumes_training(tmp_path):
    repo = make_repo(tmp_path / "repo", "data/phantom")
    params = _update(yaml.safe_load((repo / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "PATH": str(BIN) + os.pathsep + os.environ["PATH"], "OMP_NUM_THREADS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}"}
    checkpoint = repo / "outputs" / "train" / "no_adaptation" / "checkpoints" / "segmenter.pt"

    first = subprocess.Popen([str(BIN / "dvc"), "repro", "train"], cwd=repo, env=env, start_new_session=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint.is_file():
            assert first.poll() is None, f"training ended before its first checkpoint:\n{first.stdout.read()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the deadline"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)     # the group this test started: dvc and sasan train
        first.wait(timeout=60)
    step = torch.load(checkpoint, weights_only=True)["step"]
    assert 0 < step < 150
    assert not (repo / "outputs" / "train" / "no_adaptation" / "model.pt").exists()

    rerun = subprocess.run([str(BIN / "dvc"), "repro", "train"], cwd=repo, env=env, capture_output=True,
                           text=True, timeout=600)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    resumed = re.search(r"resuming from step (\d+)", log)
    assert resumed and int(resumed.group(1)) >= step, log[-3000:]
    assert torch.load(checkpoint, weights_only=True)["step"] == 150
    assert (repo / "outputs" / "train" / "no_adaptation" / "model.pt").is_file()
    assert "train:" not in subprocess.run([str(BIN / "dvc"), "status", "train"], cwd=repo, env=env,
                                          capture_output=True, text=True, timeout=120).stdout
