"""The configuration rejects unknown keys and type changes loudly."""

from pathlib import Path

import pytest

from sasan.config import Config, config_from_dict, load_config
from sasan.errors import ConfigError


def test_defaults_are_the_paper_recipe_values():
    c = Config()
    assert c.model.k == 8 and c.model.num_classes == 5
    assert c.train.joint.lr == 1e-4 and c.train.joint.betas == (0.5, 0.999)
    assert c.train.joint.weight_decay == 2e-4 and c.train.joint.batch_size == 2
    w = c.train.losses
    assert (w.adversarial, w.seg_adversarial, w.cycle, w.identity) == (2.0, 2.0, 10.0, 2.5)
    assert (w.orthogonality, w.aux_seg, w.pseudo_seg, w.attention_consistency, w.voxel) == (1.0, 0.1, 0.1, 0.1, 10.0)


def test_unknown_key_is_rejected_with_its_location(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  joint:\n    learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"train\.joint\.learning_rate"):
        load_config(p)


def test_type_change_is_rejected():
    with pytest.raises(ConfigError, match="model.k"):
        config_from_dict({"model": {"k": "8"}})
    with pytest.raises(ConfigError):
        config_from_dict({"train": {"bf16": "yes"}})


def test_scientific_notation_and_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("train:\n  joint:\n    lr: 2e-4\n")
    cfg = load_config(p, overrides={"model.k": 16})
    assert cfg.train.joint.lr == 2e-4 and cfg.model.k == 16


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_round_trip_through_dict():
    c = config_from_dict({"model": {"k": 16}, "validate": {"min_cases_train": 3}})
    assert config_from_dict(c.to_dict()) == c


def _missing_keys(model_cls, data, prefix=""):
    """Fields of a pydantic model (recursively) that a YAML mapping does not set."""
    from pydantic import BaseModel

    missing = []
    for name, field in model_cls.model_fields.items():
        key = field.alias or name
        if key not in data:
            missing.append(prefix + key)
            continue
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            missing += _missing_keys(ann, data[key], prefix + key + ".")
    return missing


@pytest.mark.parametrize("path", ["params.yaml", "profiles/mmwhs-gpu.yaml", "profiles/brain-t2t1.yaml",
                                  "profiles/phantom-paired.yaml"])
def test_parameter_files_spell_out_every_knob(path):
    """params.yaml is where people look for knobs: each one is written there, none implied."""
    import yaml

    from sasan.config import Config

    root = Path(__file__).resolve().parents[1]
    data = yaml.safe_load((root / path).read_text())
    assert _missing_keys(Config, data) == []
