"""`sasan train` refuses bad inputs (not shards, unknown or no variants, labels beyond
model.num_classes) with one line, before any MLflow run is started or any file written."""

import numpy as np
import pytest

from sasan.cli import main
from sasan.stages import train as train_stage


def _shards(root, top_label=4):
    for domain in ("mr", "ct"):
        split = root / domain / "train"
        split.mkdir(parents=True)
        np.save(split / "images.npy", np.zeros((2, 3, 8, 8), np.float32))
        np.save(split / "labels.npy", np.full((2, 8, 8), top_label, np.uint8))
    return root


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A working folder without params.yaml (built-in defaults: mr -> ct, 5 classes) and a
    tracking store that must stay unborn."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")

    def boom(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(train_stage, "run", boom)
    return tmp_path


@pytest.mark.parametrize("shards, extra, message", [
    ("raw", ["--no-tracking"], "raw/mr/train/images.npy: no training shard for domain 'mr'"),
    ("raw", [], "raw/mr/train/images.npy: no training shard for domain 'mr'"),
    ("shards", ["--no-tracking", "--variants", "foo"], "unknown variant(s) ['foo']"),
    ("shards", ["--variants", "sasan,foo"], "unknown variant(s) ['foo']"),
    ("shards", ["--no-tracking", "--variants", ","], "no variant to train"),
    ("shards", ["--no-tracking", "--set", "evaluate.methods=[]"], "no variant to train"),
    ("bad_labels", ["--no-tracking"], "bad_labels/mr/train/labels.npy: label value 7 but model.num_classes is 5"),
])
def test_bad_inputs_are_one_line_and_leave_nothing(workdir, capsys, shards, extra, message):
    (workdir / "raw" / "mr").mkdir(parents=True)          # an ingested folder, not shards
    _shards(workdir / "shards")
    _shards(workdir / "bad_labels", top_label=7)
    before = sorted(p.name for p in workdir.iterdir())
    assert main(["train", shards, "out", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sasan train: error: "), err
    assert message in err[0]
    assert sorted(p.name for p in workdir.iterdir()) == before      # no out/, no mlflow.db


def test_good_inputs_pass_the_check(workdir, monkeypatch):
    _shards(workdir / "shards")
    monkeypatch.setattr(train_stage, "run", lambda *args, **kwargs: {})
    assert main(["train", "shards", "out", "--no-tracking", "--variants", "no_adaptation"]) == 0
    assert (workdir / "out" / "mlflow_run.json").is_file()
