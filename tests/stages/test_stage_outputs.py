"""Stages refuse bad input before writing anything: a refusal leaves the output as it was."""

import pytest

from sasan.config import config_from_dict
from sasan.errors import ConfigError, DataError
from sasan.inference import check_creatable
from sasan.stages import preprocess
from sasan.tracking.runs import Tracker
from tests.data.conftest import make_raw_tree


def test_preprocess_without_manifest_keeps_the_previous_shards(tmp_path):
    raw = make_raw_tree(tmp_path / "raw", manifest=False)
    out = tmp_path / "shards"
    out.mkdir()
    (out / "stats.json").write_text("previous")
    with pytest.raises(DataError, match="manifest.json not found"):
        preprocess.run(preprocess.PreprocessInputs(raw), preprocess.PreprocessOutputs(out),
                       config_from_dict({"preprocess": {"image_size": 32}}), Tracker.disabled())
    assert [p.name for p in out.iterdir()] == ["stats.json"] and (out / "stats.json").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "shards"]


def test_check_creatable(tmp_path):
    (tmp_path / "f").write_text("")
    (tmp_path / "d").mkdir()
    assert check_creatable(tmp_path / "new" / "m.json") == tmp_path / "new" / "m.json"
    assert check_creatable(tmp_path / "d", "directory") == tmp_path / "d"
    for path, kind, message in ((tmp_path / "f" / "m.json", "file", "cannot create the file: .* is not a directory"),
                                (tmp_path / "d", "file", "is a directory"),
                                (tmp_path / "f", "directory", "exists and is not a directory"),
                                (tmp_path / "f" / "r", "directory", "cannot create the directory")):
        with pytest.raises(ConfigError, match=message):
            check_creatable(path, kind)
