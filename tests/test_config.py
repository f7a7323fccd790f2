"""The configuration rejects unknown keys and type changes loudly."""

from pathlib import Path

import pytest

from sasan.config import Config, config_from_dict, load_config, set_dotted
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


def test_a_folder_or_a_binary_file_is_a_config_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match="Is a directory") as info:
        load_config(tmp_path)
    assert info.value.path == str(tmp_path)
    image = tmp_path / "image.nii.gz"
    image.write_bytes(b"\x1f\x8b\x08\x00\xff\xfe\x00\x80")
    with pytest.raises(ConfigError, match="not a text") as info:
        load_config(image)
    assert info.value.path == str(image)


def test_an_override_below_a_value_is_a_config_error_naming_the_key(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("preprocess:\n  image_size: 64\n  target_spacing: null\n")
    for key in ("preprocess.image_size.x", "preprocess.target_spacing.x"):
        with pytest.raises(ConfigError, match=f"cannot set {key}") as info:
            load_config(p, overrides={key: 4})
        assert info.value.path == str(p)
    data = {"preprocess": 4}
    with pytest.raises(ConfigError, match="preprocess.axis: preprocess is 4, not a section"):
        set_dotted(data, "preprocess.axis", 1)
    set_dotted(data, "model.k", 4)
    assert data == {"preprocess": 4, "model": {"k": 4}}


@pytest.mark.parametrize("section, bad", [
    ("target_spacing", [0, 1, 1]), ("target_spacing", [1.0, -1.0, 1.0]),
    ("clip_percentiles", [-1, 99]), ("clip_percentiles", [2, 101]), ("clip_percentiles", [98, 2]),
    ("clip_percentiles", [5, 5]),
])
def test_preprocess_refuses_spacings_and_percentiles_it_cannot_use(section, bad):
    with pytest.raises(ConfigError, match=f"preprocess.{section}"):
        config_from_dict({"preprocess": {section: bad}})


def test_preprocess_spacing_and_percentiles_still_take_valid_values():
    p = config_from_dict({"preprocess": {"target_spacing": [1, 1.5, 2], "clip_percentiles": [0, 100]}}).preprocess
    assert p.target_spacing == (1.0, 1.5, 2.0) and p.clip_percentiles == (0.0, 100.0)
    assert Config().preprocess.target_spacing is None and Config().preprocess.clip_percentiles == (2.0, 98.0)


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


def test_config_from_pipeline_resolves_as_the_configure_step(tmp_path):
    from sasan.config import config_from_pipeline

    # no params: the built-in defaults, the phantom generated in the ingest step
    assert config_from_pipeline("").ingest.source == "phantom"
    # KFP's doubles become ints where the field is one; non-empty fields win over the params
    cfg = config_from_pipeline("ingest:\n  seed: 1\n", {"train.joint.max_steps": 3.0, "model.k": 4.0},
                               source="t2", target="t1", experiment="", data_source="s3://b/brats", layout="brats")
    assert cfg.train.joint.max_steps == 3 and cfg.model.k == 4 and cfg.ingest.seed == 1
    assert (cfg.experiment.source, cfg.experiment.target, cfg.ingest.source, cfg.ingest.layout) == \
        ("t2", "t1", "s3://b/brats", "brats")
    assert cfg.experiment.name == Config().experiment.name          # empty: kept
    # a file names itself in errors
    profile = tmp_path / "profile.yaml"
    profile.write_text("model:\n  no_such_key: 1\n")
    with pytest.raises(ConfigError, match=str(profile)):
        config_from_pipeline(profile)
