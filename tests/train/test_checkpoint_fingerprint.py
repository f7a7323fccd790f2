"""Checkpoints record what trained them: a rerun with other training settings or data moves
them aside and trains from scratch; the same settings (or only non-training keys changed)
resume; checkpoints written before fingerprints existed resume with a warning."""

import logging

import torch

from sasan.config import config_from_dict, set_dotted
from sasan.train.fingerprint import SUPERSEDED, training_record
from sasan.train.recipe import Trainer
from tests.train.conftest import tiny_config


class _Identity:
    def __init__(self, digest):
        self.digest = digest


def _train(cfg, out, variant, data, identity="d1"):
    return Trainer(cfg, out, variant, progress=False, data_identity=_Identity(identity)).run(data)


def _with(cfg, dotted, value):
    data = cfg.to_dict()
    set_dotted(data, dotted, value)
    return config_from_dict(data)


def _ckpt(out, name):
    return torch.load(out / "checkpoints" / f"{name}.pt", weights_only=True)


def test_checkpoints_record_the_fingerprint(tmp_path, tiny_data):
    cfg = tiny_config()
    _train(cfg, tmp_path, "no_adaptation", tiny_data)
    ckpt = _ckpt(tmp_path, "segmenter")
    record = training_record(cfg, "no_adaptation", "d1")
    assert ckpt["fingerprint"] == record["fingerprint"]
    assert ckpt["training_config"]["train"]["segmenter"]["lr"] == cfg.train.segmenter.lr
    assert ckpt["data_digest"] == "d1"


def test_non_training_keys_do_not_change_the_fingerprint():
    cfg = tiny_config()
    fp = training_record(cfg, "sasan", "d1")["fingerprint"]
    for dotted, value in (("evaluate.methods", ["sasan"]), ("experiment.name", "other"), ("train.jobs", 4),
                          ("train.num_workers", 2), ("train.checkpoint_every", 7), ("register.enabled", False)):
        assert training_record(_with(cfg, dotted, value), "sasan", "d1")["fingerprint"] == fp, dotted
    for dotted, value in (("train.joint.lr", 1e-3), ("train.losses.cycle", 5.0), ("experiment.seed", 3),
                          ("preprocess.image_size", 64)):
        assert training_record(_with(cfg, dotted, value), "sasan", "d1")["fingerprint"] != fp, dotted
    assert training_record(cfg, "sasan", "d2")["fingerprint"] != fp
    # the segmenter-only baselines do not read the joint phase's settings
    base = training_record(cfg, "no_adaptation", "d1")["fingerprint"]
    assert training_record(_with(cfg, "train.joint.lr", 1e-3), "no_adaptation", "d1")["fingerprint"] == base
    assert training_record(_with(cfg, "train.segmenter.lr", 1e-3), "no_adaptation", "d1")["fingerprint"] != base


def test_same_settings_resume(tmp_path, tiny_data, caplog):
    cfg = tiny_config()
    _train(cfg, tmp_path, "no_adaptation", tiny_data)
    before = _ckpt(tmp_path, "segmenter")
    with caplog.at_level(logging.INFO):
        _train(_with(cfg, "evaluate.methods", ["no_adaptation", "sasan"]), tmp_path, "no_adaptation", tiny_data)
    assert "segmenter: already complete" in caplog.text
    assert not (tmp_path / SUPERSEDED).exists()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    after = _ckpt(tmp_path, "segmenter")
    assert all(torch.equal(before["state"]["model"][k], v) for k, v in after["state"]["model"].items())


def test_changed_training_setting_supersedes_and_retrains(tmp_path, tiny_data, caplog):
    cfg = tiny_config()
    _train(cfg, tmp_path / "run", "sasan", tiny_data)
    old = {n: _ckpt(tmp_path / "run", n) for n in ("pretrain_attention", "joint", "segmenter")}
    new_cfg = _with(cfg, "train.joint.lr", 3e-4)
    with caplog.at_level(logging.INFO):
        _train(new_cfg, tmp_path / "run", "sasan", tiny_data)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "train.joint.lr" in warnings[0] and SUPERSEDED in warnings[0], warnings
    assert "resuming" not in caplog.text and "already complete" not in caplog.text
    aside = tmp_path / "run" / SUPERSEDED
    for name, ckpt in old.items():   # the old checkpoints, untouched, beside the new ones
        assert torch.load(aside / f"{name}.pt", weights_only=True)["fingerprint"] == ckpt["fingerprint"]
    record = training_record(new_cfg, "sasan", "d1")
    for name in old:
        assert _ckpt(tmp_path / "run", name)["fingerprint"] == record["fingerprint"]
    # exactly the weights of a fresh run with the new setting
    _train(new_cfg, tmp_path / "fresh", "sasan", tiny_data)
    a, b = _ckpt(tmp_path / "run", "joint"), _ckpt(tmp_path / "fresh", "joint")
    assert all(torch.equal(v, b["state"]["nets"][k]) for k, v in a["state"]["nets"].items())


def test_new_data_supersedes(tmp_path, tiny_data, caplog):
    cfg = tiny_config()
    _train(cfg, tmp_path, "no_adaptation", tiny_data, identity="d1")
    _train(cfg, tmp_path, "no_adaptation", tiny_data, identity="d1")
    (tmp_path / SUPERSEDED).mkdir()    # an older superseded folder is replaced
    (tmp_path / SUPERSEDED / "stale.pt").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        _train(cfg, tmp_path, "no_adaptation", tiny_data, identity="d2")
    assert "differ: data" in caplog.text
    assert sorted(p.name for p in (tmp_path / SUPERSEDED).glob("*.pt")) == ["segmenter.pt"]
    assert _ckpt(tmp_path, "segmenter")["data_digest"] == "d2"


def test_legacy_checkpoint_resumes_with_a_warning(tmp_path, tiny_data, caplog):
    cfg = tiny_config()
    _train(cfg, tmp_path, "no_adaptation", tiny_data)
    path = tmp_path / "checkpoints" / "segmenter.pt"
    ckpt = torch.load(path, weights_only=True)
    for key in ("fingerprint", "training_config", "data_digest", "variant"):
        ckpt.pop(key)
    torch.save(ckpt, path)
    with caplog.at_level(logging.INFO):
        _train(_with(cfg, "train.segmenter.lr", 1e-3), tmp_path, "no_adaptation", tiny_data)
    assert "segmenter: already complete" in caplog.text
    assert "record no configuration" in caplog.text
    assert not (tmp_path / SUPERSEDED).exists()


def test_run_phase_refuses_a_checkpoint_with_another_fingerprint(tmp_path):
    import pytest

    from sasan.errors import CheckpointError
    from sasan.train.loop import Phase, run_phase

    def phase(fp):
        return Phase("p", 2, lambda step: {"x": 1.0}, lambda: {}, lambda s: None, tmp_path / "p.pt",
                     extra={"fingerprint": fp})

    run_phase(phase("a"), progress=False)
    run_phase(phase("a"), progress=False)          # same: resumes (already complete)
    with pytest.raises(CheckpointError, match="other settings"):
        run_phase(phase("b"), progress=False)


def _as_if_written_before(path, dotted):
    """Rewrite a checkpoint as the code before setting ``dotted`` existed would have written it."""
    ckpt = torch.load(path, weights_only=True)
    *parents, leaf = dotted.split(".")
    node = ckpt["training_config"]
    for key in parents:
        node = node[key]
    del node[leaf]
    ckpt["fingerprint"] = "written-before-" + dotted
    torch.save(ckpt, path)


def test_setting_added_since_resumes_at_its_default_and_supersedes_otherwise(tmp_path, tiny_data, caplog):
    cfg = tiny_config()
    _train(cfg, tmp_path, "sasan", tiny_data)
    names = ("pretrain_attention", "joint", "segmenter")
    before = {n: _ckpt(tmp_path, n) for n in names}
    for name in names:
        _as_if_written_before(tmp_path / "checkpoints" / f"{name}.pt", "train.segmenter.augment_fake_source")
    with caplog.at_level(logging.INFO):
        _train(cfg, tmp_path, "sasan", tiny_data)          # the new setting at its default: same training
    assert not (tmp_path / SUPERSEDED).exists()
    assert "already complete" in caplog.text and "train.segmenter.augment_fake_source" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    record = training_record(cfg, "sasan", "d1")
    for name in names:                                      # re-recorded with today's settings, same weights
        after = _ckpt(tmp_path, name)
        assert after["fingerprint"] == record["fingerprint"]
        assert all(torch.equal(before[name]["state"]["model" if name != "joint" else "nets"][k], v)
                   for k, v in after["state"]["model" if name != "joint" else "nets"].items())
    for name in names:
        _as_if_written_before(tmp_path / "checkpoints" / f"{name}.pt", "train.segmenter.augment_fake_source")
    caplog.clear()
    with caplog.at_level(logging.WARNING):                  # the new setting away from its default: retrain
        _train(_with(cfg, "train.segmenter.augment_fake_source", True), tmp_path, "sasan", tiny_data)
    assert (tmp_path / SUPERSEDED).is_dir() and "augment_fake_source" in caplog.text
