"""A bad setting is reported in one line that names where it came from: ``--set KEY=VALUE``,
a command-line flag, or the parameter file; in plain words (``unknown setting``, the closest
valid key, the offending value), and with the command's prefix once."""

import pytest

from sasan.cli import main
from sasan.config import config_from_dict, load_config
from sasan.errors import ConfigError


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.split("\n")
    assert len(lines) == 2 and lines[1] == "" and "Traceback" not in err, err
    return lines[0].rsplit("\r", 1)[-1]


@pytest.fixture(params=["params.yaml", "built-in defaults"])
def workdir(request, tmp_path, monkeypatch):
    """A working folder with a valid params.yaml, or none (the built-in defaults)."""
    monkeypatch.chdir(tmp_path)
    if request.param == "params.yaml":
        (tmp_path / "params.yaml").write_text("model:\n  k: 4\n")
    return tmp_path


@pytest.mark.parametrize("setting, expected", [
    ("train.joint.max_step=20", "--set train.joint.max_step=20: unknown setting; did you mean train.joint.max_steps?"),
    ("trian.joint.max_steps=5", "--set trian.joint.max_steps=5: unknown setting; did you mean train.joint.max_steps?"),
    ("registr.alias=x", "--set registr.alias=x: unknown setting; did you mean register.alias?"),
    ("train.joint={max_step: 3}",
     "--set train.joint={max_step: 3}: train.joint.max_step: unknown setting; did you mean train.joint.max_steps?"),
    ("evaluate.methods=sasan,no_adaptation",
     '--set evaluate.methods=sasan,no_adaptation: should be a list, e.g. [a, b], got "sasan,no_adaptation"'),
    ("model.k=eight", '--set model.k=eight: should be a valid integer, got "eight"'),
    ("ingest.test_fraction=0", "--set ingest.test_fraction=0: should be greater than 0, got 0"),
])
def test_a_bad_set_names_the_set_not_the_file(workdir, capsys, setting, expected):
    assert main(["train", "data/shards", "OUT", "--set", "model.k=4", "--set", setting]) == 2
    assert one_line(capsys) == f"sasan train: error: {expected}"


def test_a_bad_key_in_the_file_names_the_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("model:\n  kk: 4\nevaluate:\n  methods: sasan\n")
    assert main(["train", "data/shards", "OUT", "--set", "train.joint.max_steps=5"]) == 2
    assert one_line(capsys) == ("sasan train: error: params.yaml: model.kk: unknown setting; did you mean model.k? "
                                "(and 1 more error(s))")
    (tmp_path / "params.yaml").write_text("evaluate:\n  methods: sasan\n")
    assert main(["train", "data/shards", "OUT", "--set", "model.k=4"]) == 2
    assert one_line(capsys) == ('sasan train: error: params.yaml: evaluate.methods: should be a list, e.g. [a, b], '
                                'got "sasan"')


@pytest.mark.parametrize("argv, expected", [
    (["ingest", "nowhere", "out", "--test-fraction", "0"],
     "sasan ingest: error: --test-fraction: should be greater than 0, got 0.0"),
    (["ingest", "nowhere", "out", "--affine-atol-mm", "-1"],
     "sasan ingest: error: --affine-atol-mm: should be greater than 0, got -1.0"),
    (["ingest", "nowhere", "out", "--set", "ingest.test_fraction=1"],
     "sasan ingest: error: --set ingest.test_fraction=1: should be less than 1, got 1"),
    (["data", "phantom", "out", "--cases", "0"],
     "sasan data: error: --cases: should be greater than or equal to 2, got 0"),
    (["data", "phantom", "out", "--domains", "mr", "mr", "ct"],
     'sasan data: error: --domains: should have at most 2 value(s), got ["mr", "mr", "ct"]'),
])
def test_a_bad_flag_is_named_once_with_the_prefix_once(tmp_path, monkeypatch, capsys, argv, expected):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert one_line(capsys) == expected
    assert not (tmp_path / "out").exists()


def test_library_overrides_name_themselves(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("model:\n  k: 4\n")
    with pytest.raises(ConfigError) as info:
        load_config(p, {"model.kk": 1})
    assert str(info.value) == "override model.kk: unknown setting; did you mean model.k?"
    with pytest.raises(ConfigError) as info:
        load_config(p, {"model.kk": 1}, {"model.kk": "--set model.kk=1"})
    assert str(info.value) == "--set model.kk=1: unknown setting; did you mean model.k?"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"preprocess": {"clip_percentiles": [98, 2]}}, "p.yaml")
    assert str(info.value) == "p.yaml: preprocess.clip_percentiles: low must be below high, got [98.0, 2.0]"
    with pytest.raises(ConfigError) as info:
        config_from_dict({"nonsense": 1}, "p.yaml")
    assert str(info.value) == "p.yaml: nonsense: unknown setting"
