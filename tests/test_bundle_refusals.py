"""load_bundle refuses a damaged or foreign file with one CheckpointError line naming it, for
every caller (translate, evaluate, register, the served model); never a traceback."""

import pytest
import torch

from sasan.bundle import ModelBundle, load_bundle, save_bundle
from sasan.cli import main
from sasan.config import config_from_dict
from sasan.errors import CheckpointError
from sasan.models import build_networks, build_segmenter

TINY = {"preprocess": {"image_size": 32},
        "model": {"k": 4, "num_classes": 5, "attention_width": 8, "synth_width": 8, "norm_hidden": 8,
                  "disc_width": 8, "seg_disc_width": 8, "unet_width": 4}}


def _bundle_state(model=None):
    """A real bundle's saved dict (tiny networks), as ``save_bundle`` writes it."""
    torch.manual_seed(0)
    cfg = config_from_dict({**TINY, "model": {**TINY["model"], **(model or {})}})
    nets = build_networks(cfg.model)
    return cfg, ModelBundle(cfg, "sasan", build_segmenter(cfg.model).eval(), nets.att_t, nets.syn_s)


@pytest.fixture(scope="module")
def good_state(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "model.pt"
    save_bundle(path, _bundle_state()[1])
    return torch.load(path, weights_only=True)


def _refused(path, *needles):
    with pytest.raises(CheckpointError) as info:
        load_bundle(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    for needle in needles:
        assert needle in text, text
    return text


def _write(tmp_path, state, name="bad.pt"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_a_good_bundle_still_loads(tmp_path, good_state):
    assert load_bundle(_write(tmp_path, good_state, "model.pt")).segments


def test_a_torch_file_that_is_not_a_dict_is_refused(tmp_path):
    _refused(_write(tmp_path, [1, 2]), "not a SASAN model bundle")


@pytest.mark.parametrize("key", ["config_yaml", "variant", "segmenter", "att_t", "syn_s"])
def test_a_tagged_dict_missing_an_entry_is_refused(tmp_path, good_state, key):
    state = {k: v for k, v in good_state.items() if k != key}
    _refused(_write(tmp_path, state), "damaged model bundle", key)


def test_a_config_yaml_that_does_not_parse_is_refused(tmp_path, good_state):
    _refused(_write(tmp_path, {**good_state, "config_yaml": "model: [unclosed\n  k: : 4\n"}), "its configuration")


@pytest.mark.parametrize("text, needle", [("- a\n- b\n", "not a mapping"), ("", "not a mapping"),
                                          ("model:\n  k: many\n", "model.k"),
                                          ("model:\n  no_such_key: 1\n", "no_such_key"),
                                          ("experiment:\n  seed: 2020-01-01\n", "its configuration")])
def test_a_config_yaml_that_does_not_validate_is_refused(tmp_path, good_state, text, needle):
    _refused(_write(tmp_path, {**good_state, "config_yaml": text}), needle)


def test_a_config_yaml_that_is_not_text_is_refused(tmp_path, good_state):
    _refused(_write(tmp_path, {**good_state, "config_yaml": 5}), "damaged model bundle: its configuration")


def test_a_variant_that_is_not_a_name_is_refused(tmp_path, good_state):
    _refused(_write(tmp_path, {**good_state, "variant": 3}), "variant")


@pytest.mark.parametrize("key", ["segmenter", "att_t", "syn_s"])
@pytest.mark.parametrize("value", [[1, 2], torch.zeros(3), "weights"])
def test_weights_that_are_not_a_state_dict_are_refused(tmp_path, good_state, key, value):
    _refused(_write(tmp_path, {**good_state, key: value}), f"the {key} weights do not fit", "dict-like")


def test_weights_of_another_width_are_refused_naming_the_network_and_the_first_mismatch(tmp_path, good_state):
    _, wider = _bundle_state({"synth_width": 16})
    state = {**good_state, "syn_s": wider.syn_s.state_dict()}
    text = _refused(_write(tmp_path, state), "the syn_s weights do not fit", "size mismatch for encoder.0.1.weight")
    assert "Error(s) in loading" not in text and len(text) < 400, text


def test_weights_with_missing_and_unexpected_keys_are_refused(tmp_path, good_state):
    weights = dict(good_state["segmenter"])
    first = next(iter(weights))
    weights["no.such.key"] = weights.pop(first)
    text = _refused(_write(tmp_path, {**good_state, "segmenter": weights}), "the segmenter weights do not fit",
                    f'Missing key(s) in state_dict: "{first}"', 'Unexpected key(s) in state_dict: "no.such.key"')
    assert len(text) < 400, text


def test_a_weight_that_is_not_a_tensor_is_refused(tmp_path, good_state):
    weights = dict(good_state["att_t"])
    first = next(iter(weights))
    weights[first] = 1.5
    _refused(_write(tmp_path, {**good_state, "att_t": weights}), "the att_t weights do not fit", "expected torch.Tensor",
             first)


@pytest.mark.parametrize("case", ["list", "no_config", "wrong_width", "bad_yaml"])
def test_translate_prints_one_line_and_exits_non_zero(tmp_path, good_state, capsys, case):
    _, wider = _bundle_state({"unet_width": 8})
    state = {"list": [1, 2],
             "no_config": {k: v for k, v in good_state.items() if k != "config_yaml"},
             "wrong_width": {**good_state, "segmenter": wider.segmenter.state_dict()},
             "bad_yaml": {**good_state, "config_yaml": "a: [\n"}}[case]
    bundle = _write(tmp_path, state)
    image = tmp_path / "ct.nii.gz"            # never read: the bundle is refused first
    code = main(["translate", str(image), str(tmp_path / "o.nii.gz"), "--bundle", str(bundle), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"sasan translate: error: {bundle}: "), err


# --- a bundle of another version of the code is a version mismatch, not damage ---------------------------


def _with_setting(good_state, extra: str) -> str:
    """The good bundle's configuration with ``extra`` (YAML, e.g. a setting under train.segmenter)."""
    import yaml

    data = yaml.safe_load(good_state["config_yaml"])
    for dotted, value in yaml.safe_load(extra).items():
        *parents, leaf = dotted.split(".")
        node = data
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return yaml.safe_dump(data, sort_keys=False)


def test_a_setting_this_version_does_not_know_is_another_version_not_damage(tmp_path, good_state):
    path = _write(tmp_path, {**good_state, "config_yaml": _with_setting(good_state, "train.segmenter.x: 1")},
                  "model.pt")
    text = _refused(path, f"{path}: written by another version of sasan (its configuration has settings this "
                          "version does not know: train.segmenter.x); use the version that trained it")
    assert "damaged" not in text and "Extra inputs" not in text, text


def test_the_version_mismatch_names_every_unknown_key(tmp_path, good_state):
    extra = "train.segmenter.x: 1\nmodel.y: 2\nnew_section: {a: 1}\nregister.z: 3\n"
    state = {**good_state, "config_yaml": _with_setting(good_state, extra)}
    text = _refused(_write(tmp_path, state), "written by another version of sasan")
    for key in ("train.segmenter.x", "model.y", "new_section", "register.z"):
        assert key in text, text


def test_a_value_of_the_wrong_type_is_still_damage(tmp_path, good_state):
    _refused(_write(tmp_path, {**good_state, "config_yaml": _with_setting(good_state, "model.k: many")}),
             "damaged model bundle: its configuration: model.k")


def test_translate_names_the_version_mismatch_in_one_line(tmp_path, good_state, capsys):
    bundle = _write(tmp_path, {**good_state, "config_yaml": _with_setting(good_state, "train.segmenter.x: 1")})
    code = main(["translate", str(tmp_path / "ct.nii.gz"), str(tmp_path / "o.nii.gz"), "--bundle", str(bundle),
                 "--device", "cpu"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, lines
    assert lines[0].startswith(f"sasan translate: error: {bundle}: written by another version of sasan"), lines
