"""The train stage refuses, before writing anything, what would fail later: no variant, an
unknown one, a missing shard, a label value the networks have no output for."""

import numpy as np
import pytest

from sasan.config import Config
from sasan.errors import DataError
from sasan.stages.train import TrainInputs, TrainOutputs, check_inputs, run


def _shards(root, label_top: int, cfg: Config):
    for domain in (cfg.experiment.source, cfg.experiment.target):
        split = root / domain / "train"
        split.mkdir(parents=True)
        np.save(split / "images.npy", np.zeros((2, 3, 8, 8), np.float16))
        labels = np.zeros((2, 8, 8), np.uint8)
        labels[1, 4, 4] = label_top
        np.save(split / "labels.npy", labels)
    return root


def test_labels_must_fit_the_number_of_classes(tmp_path):
    cfg = Config()
    shards = _shards(tmp_path / "shards", cfg.model.num_classes - 1, cfg)
    check_inputs(TrainInputs(shards), cfg, ["sasan"])            # labels 0..C-1: fine
    too_many = _shards(tmp_path / "bad", cfg.model.num_classes, cfg)
    with pytest.raises(DataError) as err:
        check_inputs(TrainInputs(too_many), cfg, ["sasan"])
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(too_many / cfg.experiment.source / "train" / "labels.npy"))
    assert f"label value {cfg.model.num_classes}" in message and "model.num_classes" in message


def test_paired_mode_reads_no_labels(tmp_path):
    cfg = Config.model_validate({"experiment": {"mode": "paired"}})
    shards = _shards(tmp_path / "shards", 200, cfg)
    check_inputs(TrainInputs(shards), cfg, ["sasan"])


@pytest.mark.parametrize("variants, words", [([], "no variant"), (["sasan", "foo"], "unknown variant")])
def test_variants_are_checked_before_anything_is_written(tmp_path, variants, words):
    cfg = Config()
    out = tmp_path / "models"
    with pytest.raises(DataError, match=words):
        run(TrainInputs(_shards(tmp_path / "shards", 0, cfg)), TrainOutputs(out), cfg, tracker=None, variants=variants)
    assert not out.exists()


def test_a_missing_shard_is_named(tmp_path):
    with pytest.raises(DataError, match="run `sasan preprocess` first") as err:
        check_inputs(TrainInputs(tmp_path), Config(), ["sasan"])
    assert str(tmp_path / Config().experiment.source / "train" / "images.npy") in str(err.value)
