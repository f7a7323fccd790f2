"""A run killed with SIGKILL and resumed ends with exactly the weights of an uninterrupted
run (CPU, fixed seed)."""

import subprocess
import sys
import textwrap

import pytest
import torch

SCRIPT = textwrap.dedent("""
    import logging, os, signal, sys
    logging.basicConfig(level=logging.INFO)
    import torch
    torch.set_num_threads(1)
    from tests.train.conftest import tiny_config, blob_slices
    from sasan.train.data import ArraySliceDataset
    from sasan.train.recipe import Trainer, TrainData

    out, kill_at = sys.argv[1], int(sys.argv[2])
    cfg = tiny_config(train={"checkpoint_every": 2, "log_every": 1,
                             "joint": {"epochs": 2, "max_steps": 6, "batch_size": 2}})
    xs, ys = blob_slices(8, seed=1); ts, _ = blob_slices(8, seed=2, bright_ring=False)
    data = TrainData(source=ArraySliceDataset(xs, ys), target=ArraySliceDataset(ts),
                     target_plain=ArraySliceDataset(ts))

    def on_log(phase, step, logs):
        if phase == "joint" and step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)   # a real kill: no cleanup, no final save

    Trainer(cfg, out, "sasan", on_log=on_log, progress=False).run(data)
""")


def _run(root, out, kill_at):
    return subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(kill_at)], cwd=root,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_and_resumed_run_matches_uninterrupted(tmp_path, request):
    root = request.config.rootpath
    full = _run(root, tmp_path / "full", kill_at=-1)
    assert full.returncode == 0, full.stderr[-2000:]

    killed = _run(root, tmp_path / "resumed", kill_at=5)   # last checkpoint was at step 4
    assert killed.returncode == -9
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "joint.pt", weights_only=True)
    assert ckpt["step"] == 4
    assert not (tmp_path / "resumed" / "model.pt").exists()

    resumed = _run(root, tmp_path / "resumed", kill_at=-1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step 4" in resumed.stderr

    a = torch.load(tmp_path / "full" / "checkpoints" / "joint.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoints" / "joint.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for key, value in a["state"]["nets"].items():
        assert torch.equal(value, b["state"]["nets"][key]), key
    for part in ("segmenter", "att_t", "syn_s"):
        wa = torch.load(tmp_path / "full" / "model.pt", weights_only=True)[part]
        wb = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)[part]
        assert all(torch.equal(wa[k], wb[k]) for k in wa), part
