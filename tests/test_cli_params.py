"""Every command reads its configuration the same way: --params (default ./params.yaml,
else built-in defaults) plus --set overrides."""

import argparse

import pytest

from sasan.cli.params import add_params_args, load_params
from sasan.errors import ConfigError


def parse(argv):
    p = argparse.ArgumentParser()
    add_params_args(p)
    return p.parse_args(argv)


def test_defaults_when_no_params_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_params(parse([])).model.k == 8
    assert load_params(parse(["--set", "model.k=16"])).model.k == 16


def test_params_yaml_in_the_working_directory_is_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("model:\n  k: 4\n")
    assert load_params(parse([])).model.k == 4
    assert load_params(parse(["--set", "train.joint.lr=3e-4"])).train.joint.lr == 3e-4


def test_bad_override_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_params(parse(["--set", "model.k"]))
    with pytest.raises(ConfigError, match="model.k"):
        load_params(parse(["--set", "model.k=eight"]))


def test_override_that_is_not_yaml_is_a_config_error_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"--set preprocess\.bounds: .* is not valid YAML"):
        load_params(parse(["--set", "preprocess.bounds={mr: [1"]))


@pytest.mark.parametrize("with_file", [False, True])
def test_override_below_a_value_is_a_config_error_naming_the_key(with_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if with_file:
        (tmp_path / "params.yaml").write_text("preprocess:\n  image_size: 64\n")
        sets = ["--set", "preprocess.image_size.x=4"]
    else:
        sets = ["--set", "preprocess=4", "--set", "preprocess.axis=1"]
    with pytest.raises(ConfigError, match=r"cannot set preprocess\.(image_size\.x|axis)"):
        load_params(parse(sets))
