"""The registry gate on a real local MLflow registry: promote / no-promote, reports, errors."""

import json

import pytest
from mlflow import MlflowClient

from sasan.config import RegisterConfig
from sasan.tracking.registry import (
    DICE_TAG, SSIM_TAG, MetricsError, decide, gate_identity, gate_score, load_evaluation, register_and_gate,
    target_mean_dice,
)
from sasan.tracking.runs import Tracker

GATE = RegisterConfig(model_name="seg", min_dice=0.5, alias="champion")
# what the evaluate stage writes to identity.json
IDENTITY = {"dataset": "phantom", "data_digest": "d" * 64, "source": "mr", "target": "ct",
            "test_split": "s" * 64, "test_cases": ["ct_001", "ct_002"], "image_size": {"sasan": 64},
            "profile": "sasan-phantom"}
FIELDS = gate_identity(IDENTITY)


def evaluation(sasan_dice: float, baseline: float = 0.2) -> dict:
    def method(d):
        return {"per_structure": {"LV": {"dice": d, "assd_vox": 1.0, "assd_mm": 1.5}},
                "mean": {"dice": d, "assd_vox": 1.0, "assd_mm": 1.5}}
    return {"no_adaptation": method(baseline), "cyclegan": method(baseline), "sasan": method(sasan_dice),
            "upper_bound": method(0.95)}


@pytest.fixture
def candidate(tracking_uri):
    """A function making a run with a (metadata-only) logged model: (run_id, model_uri)."""
    client = MlflowClient(tracking_uri)

    def make():
        tracker = Tracker.start(tracking_uri, "exp", "pipeline")
        model = client.create_logged_model(tracker.experiment_id, name="model", source_run_id=tracker.run_id)
        client.finalize_logged_model(model.model_id, "READY")
        return tracker.run_id, f"models:/{model.model_id}"
    return make


def gate(tracking_uri, candidate, dice, report_dir, cfg=GATE, identity=IDENTITY):
    run_id, model_uri = candidate()
    return register_and_gate(tracking_uri, model_uri, evaluation(dice), cfg, run_id, report_dir, identity=identity)


def champion(tracking_uri, name="seg", alias="champion"):
    return str(MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version)


def test_first_model_past_the_threshold_is_promoted(tracking_uri, candidate, tmp_path):
    report = gate(tracking_uri, candidate, 0.71, tmp_path / "r")
    assert report["promoted"] is True and report["version"] == "1" and report["previous_champion"] is None
    assert champion(tracking_uri) == "1"
    assert not (tmp_path / "mlflow.db").exists()          # no stray default store in the working dir
    mv = MlflowClient(tracking_uri).get_model_version("seg", "1")
    assert float(mv.tags[DICE_TAG]) == 0.71 and mv.tags["sasan.gate"] == "promoted"
    assert mv.run_id == report["run_id"] and mv.source == report["model_uri"]
    assert MlflowClient(tracking_uri).get_run(report["run_id"]).data.tags["sasan.registered_version"] == "seg/1"
    on_disk = json.loads((tmp_path / "r" / "register.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    md = (tmp_path / "r" / "register.md").read_text()
    assert "**Promoted**" in md and "0.7100" in md and "no current champion" in md


def test_first_model_below_the_threshold_is_registered_not_promoted(tracking_uri, candidate, tmp_path):
    report = gate(tracking_uri, candidate, 0.49, tmp_path)
    assert report["promoted"] is False and report["version"] == "1" and report["champion_version"] is None
    assert "0.4900 < threshold 0.5000" in report["reasons"][0]
    assert MlflowClient(tracking_uri).get_registered_model("seg").aliases == {}
    assert "**Not promoted**" in (tmp_path / "register.md").read_text()


def test_better_model_takes_over_the_alias(tracking_uri, candidate, tmp_path):
    gate(tracking_uri, candidate, 0.60, tmp_path)
    report = gate(tracking_uri, candidate, 0.65, tmp_path)
    assert report["promoted"] is True and champion(tracking_uri) == "2"
    assert report["previous_champion"] == {"version": "1", "target_mean_dice": 0.60, "identity": FIELDS}
    assert "0.6500 > champion v1's 0.6000" in report["reasons"][1]


@pytest.mark.parametrize("dice", [0.59, 0.60])                # worse, and a tie: the champion stays
def test_model_not_better_than_the_champion_leaves_the_alias(tracking_uri, candidate, tmp_path, dice):
    gate(tracking_uri, candidate, 0.60, tmp_path)
    report = gate(tracking_uri, candidate, dice, tmp_path)
    assert report["promoted"] is False and report["version"] == "2" and report["champion_version"] == "1"
    assert champion(tracking_uri) == "1"
    assert MlflowClient(tracking_uri).get_model_version("seg", "2").tags["sasan.gate"] == "rejected"
    assert "`@champion` stays on v1" in (tmp_path / "register.md").read_text()


def test_better_than_champion_but_below_a_raised_threshold_is_not_promoted(tracking_uri, candidate, tmp_path):
    gate(tracking_uri, candidate, 0.60, tmp_path)
    stricter = RegisterConfig(model_name="seg", min_dice=0.9, alias="champion")
    report = gate(tracking_uri, candidate, 0.80, tmp_path, cfg=stricter)
    assert report["promoted"] is False and champion(tracking_uri) == "1"


def test_a_champion_set_by_hand_without_a_score_is_not_replaced(tracking_uri, candidate, tmp_path):
    gate(tracking_uri, candidate, 0.60, tmp_path)
    client = MlflowClient(tracking_uri)
    client.delete_model_version_tag("seg", "1", DICE_TAG)
    report = gate(tracking_uri, candidate, 0.99, tmp_path)
    assert report["promoted"] is False and champion(tracking_uri) == "1"
    assert "no target_mean_dice tag" in report["reasons"][1]


@pytest.mark.parametrize("metrics, message", [
    ({"cyclegan": {"mean": {"dice": 0.7}}}, r"no sasan.mean.dice .*methods present: \['cyclegan'\]"),
    ({"sasan": {"mean": {"assd_mm": 1.0}}}, "no sasan.mean.dice"),
    ({"sasan": {"mean": {"dice": "0.7"}}}, "must be a finite number"),
    ({"sasan": {"mean": {"dice": float("nan")}}}, "must be a finite number"),
    ({"sasan": {"mean": {"dice": 70.0}}}, r"must lie in \[0, 1\]"),
    ({"sasan": ["not", "a", "mapping"]}, "no sasan.mean.dice"),
])
def test_malformed_metrics_fail_clearly_before_anything_is_registered(tracking_uri, candidate, tmp_path,
                                                                      metrics, message):
    run_id, model_uri = candidate()
    with pytest.raises(MetricsError, match=message):
        register_and_gate(tracking_uri, model_uri, metrics, GATE, run_id, tmp_path, metrics_origin="m.json")
    assert MlflowClient(tracking_uri).search_registered_models() == []
    assert not (tmp_path / "register.json").exists()


def test_metrics_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "evaluation.json"
    bad.write_text("{truncated")
    with pytest.raises(MetricsError, match="evaluation.json: not valid JSON"):
        load_evaluation(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(MetricsError, match="top level must be an object"):
        load_evaluation(bad)
    with pytest.raises(MetricsError, match="not found"):
        load_evaluation(tmp_path / "absent.json")
    with pytest.raises(MetricsError, match=f"{bad}: no sasan.mean.dice"):
        target_mean_dice({}, origin=bad)


@pytest.mark.parametrize("dice, champ, promote", [
    (0.5, None, True), (0.49, None, False), (0.7, 0.6, True), (0.6, 0.6, False), (0.4, 0.3, False),
])
def test_gate_table(dice, champ, promote):
    d = decide(dice, 0.5, None if champ is None else "3", champ, FIELDS, None if champ is None else FIELDS)
    assert d.promote is promote and len(d.reasons) == 2


def test_each_version_carries_its_evaluation_identity(tracking_uri, candidate, tmp_path):
    report = gate(tracking_uri, candidate, 0.7, tmp_path)
    tags = MlflowClient(tracking_uri).get_model_version("seg", "1").tags
    assert tags["sasan.eval.data_digest"] == "d" * 64 and tags["sasan.eval.test_split"] == "s" * 64
    assert tags["sasan.eval.image_size"] == "64" and tags["sasan.eval.profile"] == "sasan-phantom"
    assert tags["sasan.eval.key"] == report["identity_key"]
    assert "data_digest `" + "d" * 64 in (tmp_path / "register.md").read_text()


@pytest.mark.parametrize("change", [{"image_size": {"sasan": 256}}, {"data_digest": "e" * 64},
                                    {"test_split": "t" * 64}, {"profile": "sasan-mmwhs"}])
def test_a_champion_of_another_identity_is_not_compared(tracking_uri, candidate, tmp_path, change):
    gate(tracking_uri, candidate, 0.30 + 0.3, tmp_path)             # e.g. a 64-pixel phantom champion
    report = gate(tracking_uri, candidate, 0.95, tmp_path, identity={**IDENTITY, **change})
    assert report["promoted"] is False and champion(tracking_uri) == "1"
    assert "another identity" in report["reasons"][1] and next(iter(change)) in report["reasons"][1]
    assert "register.model_name" in report["reasons"][1]


def test_without_an_identity_nothing_is_promoted(tracking_uri, candidate, tmp_path):
    report = gate(tracking_uri, candidate, 0.9, tmp_path, identity=None)
    assert report["promoted"] is False and "no identity" in report["reasons"][1]
    assert MlflowClient(tracking_uri).get_registered_model("seg").aliases == {}


def test_promotion_is_safe_under_concurrent_runs(tracking_uri, candidate, tmp_path, monkeypatch):
    """Four registrations at once, each slowed between reading the champion and moving the
    alias (where an unlocked gate lets a worse model overwrite a better one): the best ends
    as champion, every version is registered and the lock is gone."""
    import threading
    import time

    from sasan.tracking import registry

    read = registry.current_champion

    def slow_read(*args):
        found = read(*args)
        time.sleep(0.3)
        return found

    monkeypatch.setattr(registry, "current_champion", slow_read)
    candidates = [candidate() for _ in range(4)]
    scores = [0.7, 0.9, 0.6, 0.8]
    start = threading.Barrier(len(scores))
    reports, errors = {}, []

    def register(i):
        run_id, model_uri = candidates[i]
        start.wait()
        try:
            reports[i] = register_and_gate(tracking_uri, model_uri, evaluation(scores[i]), GATE, run_id,
                                           tmp_path / f"r{i}", identity=IDENTITY)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=register, args=(i,)) for i in range(len(scores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    client = MlflowClient(tracking_uri)
    best = next(r for r in reports.values() if r["target_mean_dice"] == 0.9)
    assert champion(tracking_uri) == best["version"]
    assert sorted(r["version"] for r in reports.values()) == ["1", "2", "3", "4"]
    assert [m.name for m in client.search_registered_models()] == ["seg"]       # the lock was released


# --- the gate lock with a fake store: no busy loop, a deadline, careful stale-lock breaking ----------------


class FakeClock:
    """``registry.time`` stand-in: sleeping advances the clock; wall time is fixed."""

    def __init__(self, wall=10_000.0):
        self.now, self.wall, self.sleeps = 0.0, wall, []

    def monotonic(self):
        return self.now

    def time(self):
        return self.wall

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s


class FakeLockStore:
    """A store whose lock exists already; ``reads`` gives what each read of it returns (a
    tags dict, or an exception to raise), the last one repeated; ``free_after`` creates
    succeed from that try on."""

    tracking_uri = "sqlite:///fake.db"

    def __init__(self, reads, free_after=None):
        self.reads, self.free_after = list(reads), free_after
        self.creates, self.gets, self.deletes = 0, 0, []

    def create_registered_model(self, name, tags=None, description=None):
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS

        self.creates += 1
        if self.free_after is None or self.creates < self.free_after:
            raise MlflowException("exists", error_code=RESOURCE_ALREADY_EXISTS)

    def get_registered_model(self, name):
        from types import SimpleNamespace

        found = self.reads[min(self.gets, len(self.reads) - 1)]
        self.gets += 1
        if isinstance(found, Exception):
            raise found
        return SimpleNamespace(tags=found)

    def delete_registered_model(self, name):
        self.deletes.append(name)


def _unreadable():
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    return MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)


@pytest.mark.parametrize("read", [_unreadable(), {"sasan.lock.holder": "a", "sasan.lock.since": "not a time"}])
def test_an_unreadable_lock_is_polled_with_sleeps_until_the_deadline(monkeypatch, read):
    from sasan.tracking import registry
    from sasan.tracking.client import TrackingError

    clock = FakeClock()
    monkeypatch.setattr(registry, "time", clock)
    store = FakeLockStore([read])
    with pytest.raises(TrackingError) as err:
        with registry.gate_lock(store, "seg", "me", wait_s=1.0, poll_s=0.25):
            pass
    assert "\n" not in str(err.value) and "'seg.gate-lock' is held by another run for over 1 s" in str(err.value)
    assert clock.sleeps == [0.25] * 4 and clock.now == 1.0      # slept on every pass, gave up at the deadline
    assert store.creates == store.gets == 5 and store.deletes == []


def test_a_stale_lock_taken_over_meanwhile_is_not_deleted(monkeypatch):
    """Read stale (holder a), but by the re-read another waiter broke it and holds it (b):
    the new holder's lock is left alone; the waiter takes the lock once it is released."""
    from sasan.tracking import registry

    clock = FakeClock(wall=10_000.0)
    monkeypatch.setattr(registry, "time", clock)
    stale = {"sasan.lock.holder": "a", "sasan.lock.since": "1.0"}
    fresh = {"sasan.lock.holder": "b", "sasan.lock.since": "9999.0"}
    store = FakeLockStore([stale, fresh], free_after=3)
    with registry.gate_lock(store, "seg", "me", wait_s=10.0, poll_s=0.5):
        assert store.deletes == []                               # b's lock survived
    assert store.deletes == ["seg.gate-lock"] and clock.sleeps == [0.5, 0.5]   # our own release


def test_a_stale_lock_still_held_by_the_same_holder_is_broken(monkeypatch):
    from sasan.tracking import registry

    clock = FakeClock(wall=10_000.0)
    monkeypatch.setattr(registry, "time", clock)
    stale = {"sasan.lock.holder": "a", "sasan.lock.since": "1.0"}
    store = FakeLockStore([stale, stale], free_after=2)
    with registry.gate_lock(store, "seg", "me", wait_s=10.0, poll_s=0.5):
        assert store.deletes == ["seg.gate-lock"]                # broken once, after the re-read
    assert store.gets == 2 and clock.sleeps == [0.5]


# --- paired mode: the gate on mean SSIM, never against a Dice champion -----------------------------------

PAIRED_GATE = RegisterConfig(model_name="seg", min_dice=0.5, min_ssim=0.6, alias="champion")
# what evaluate writes for a paired evaluation: its mode, the voxels scored, and per method a
# digest of the bundle's preprocessing (which makes the real image the translations are scored against)
PAIRED_IDENTITY = {**IDENTITY, "image_size": {"sasan": 64, "cyclegan": 64}, "mode": "paired",
                   "translation_mask": "body", "preprocess_digest": {"sasan": "p" * 16, "cyclegan": "q" * 16}}
PAIRED_FIELDS = {**FIELDS, "mode": "paired", "translation_mask": "body", "preprocess_digest": "p" * 16}


def paired_evaluation(sasan_ssim: float) -> dict:
    """A paired evaluation's metrics (`sasan evaluate` with experiment.mode: paired)."""
    scores = {"mae": 0.1, "rmse": 0.2, "psnr": 20.0, "ssim": sasan_ssim, "pearson": 0.8}
    return {"sasan": {"mode": "paired", "n_subjects": 2, "mean": scores,
                      "sd": {k: 0.01 for k in scores}, "per_subject": []}}


def paired_gate(tracking_uri, candidate, ssim, report_dir, cfg=PAIRED_GATE, identity=PAIRED_IDENTITY):
    run_id, model_uri = candidate()
    return register_and_gate(tracking_uri, model_uri, paired_evaluation(ssim), cfg, run_id, report_dir,
                             identity=identity)


def test_a_paired_model_is_gated_on_mean_ssim(tracking_uri, candidate, tmp_path):
    assert gate_score(paired_evaluation(0.7)) == ("ssim", 0.7) and gate_score(evaluation(0.7)) == ("dice", 0.7)
    low = paired_gate(tracking_uri, candidate, 0.55, tmp_path / "low")       # above min_dice, below min_ssim
    assert low["promoted"] is False and low["target_mean_ssim"] == 0.55 and low["min_ssim"] == 0.6
    assert "target_mean_dice" not in low and "min_dice" not in low
    assert "target mean SSIM 0.5500 < threshold 0.6000" in low["reasons"][0]
    first = paired_gate(tracking_uri, candidate, 0.65, tmp_path / "first")
    assert first["promoted"] is True and champion(tracking_uri) == "2"
    tags = MlflowClient(tracking_uri).get_model_version("seg", "2").tags
    assert float(tags[SSIM_TAG]) == 0.65 and DICE_TAG not in tags and tags["sasan.eval.mode"] == "paired"
    assert tags["sasan.eval.translation_mask"] == "body" and tags["sasan.eval.preprocess_digest"] == "p" * 16
    md = (tmp_path / "first" / "register.md").read_text()
    assert "target mean SSIM" in md and "register.min_ssim" in md and "Dice" not in md
    better = paired_gate(tracking_uri, candidate, 0.70, tmp_path / "better")
    assert better["promoted"] is True and champion(tracking_uri) == "3"
    assert better["previous_champion"] == {"version": "2", "target_mean_ssim": 0.65,
                                           "identity": gate_identity(PAIRED_IDENTITY)}
    assert "target mean SSIM 0.7000 > champion v2's 0.6500" in better["reasons"][1]
    worse = paired_gate(tracking_uri, candidate, 0.68, tmp_path / "worse")
    assert worse["promoted"] is False and champion(tracking_uri) == "3"


def test_a_dice_champion_and_an_ssim_candidate_are_never_compared(tracking_uri, candidate, tmp_path):
    gate(tracking_uri, candidate, 0.60, tmp_path / "dice")                     # a segmentation champion
    report = paired_gate(tracking_uri, candidate, 0.95, tmp_path / "ssim")
    assert report["promoted"] is False and champion(tracking_uri) == "1"
    assert "gated on target mean Dice" in report["reasons"][1] and "not compared" in report["reasons"][1]
    assert report["previous_champion"]["target_mean_ssim"] is None
    assert "| previous champion | v1 | n/a |" in (tmp_path / "ssim" / "register.md").read_text()


def test_an_ssim_champion_is_not_compared_with_a_dice_candidate(tracking_uri, candidate, tmp_path):
    paired_gate(tracking_uri, candidate, 0.9, tmp_path / "ssim")
    report = gate(tracking_uri, candidate, 0.99, tmp_path / "dice")
    assert report["promoted"] is False and champion(tracking_uri) == "1"
    assert "gated on target mean SSIM" in report["reasons"][1]


def test_paired_and_segmentation_identities_differ():
    assert gate_identity(IDENTITY) == FIELDS                                     # unchanged for segmentation
    assert set(FIELDS) == {"dataset", "data_digest", "source", "target", "test_split", "image_size", "profile"}
    assert gate_identity(PAIRED_IDENTITY) == PAIRED_FIELDS
    assert gate_identity(PAIRED_IDENTITY, "cyclegan")["preprocess_digest"] == "q" * 16   # the gated method's
    d = decide(0.9, 0.5, "1", 0.2, PAIRED_FIELDS, FIELDS, metric="ssim", champion_metric="ssim")
    assert d.promote is False and "another identity" in d.reasons[1] and "mode" in d.reasons[1]
    d = decide(0.9, 0.5, "1", None, FIELDS, FIELDS, metric="ssim", champion_metric="dice")
    assert d.promote is False and "not compared" in d.reasons[1]


def test_fields_only_the_champion_has_are_named_too():
    """The differing fields are looked for in both identities, not the challenger's alone."""
    d = decide(0.9, 0.5, "1", 0.2, FIELDS, PAIRED_FIELDS)
    assert d.promote is False
    for key in ("mode", "translation_mask", "preprocess_digest"):
        assert key in d.reasons[1]


def test_a_paired_identity_without_the_gated_methods_preprocessing_is_refused():
    identity = {**PAIRED_IDENTITY, "preprocess_digest": {"cyclegan": "q" * 16}}
    with pytest.raises(MetricsError, match="lacks the preprocess_digest of sasan"):
        gate_identity(identity)


@pytest.mark.parametrize("change", [{"translation_mask": "field_of_view"},
                                    {"preprocess_digest": {"sasan": "r" * 16, "cyclegan": "q" * 16}}])
def test_a_paired_champion_scored_otherwise_is_not_compared(tracking_uri, candidate, tmp_path, change):
    """A body-mask champion and a field_of_view candidate, or one scored against a real image
    normalised with other preprocessing (e.g. another preprocess.bounds.mr), are unlike."""
    paired_gate(tracking_uri, candidate, 0.65, tmp_path / "champion")
    report = paired_gate(tracking_uri, candidate, 0.95, tmp_path / "candidate",
                         identity={**PAIRED_IDENTITY, **change})
    assert report["promoted"] is False and champion(tracking_uri) == "1"
    assert "another identity" in report["reasons"][1] and next(iter(change)) in report["reasons"][1]
    assert report["previous_champion"]["identity"] == PAIRED_FIELDS


@pytest.mark.parametrize("mean, message", [
    ({"mae": 0.1}, "no sasan.mean.ssim"),
    ({"ssim": float("nan")}, "must be a finite number"),
    ({"ssim": 1.5}, r"must lie in \[-1, 1\]"),
])
def test_malformed_paired_metrics_fail_before_anything_is_registered(tracking_uri, candidate, tmp_path, mean,
                                                                    message):
    run_id, model_uri = candidate()
    metrics = {"sasan": {"mode": "paired", "mean": mean}}
    with pytest.raises(MetricsError, match=message):
        register_and_gate(tracking_uri, model_uri, metrics, PAIRED_GATE, run_id, tmp_path, metrics_origin="m.json")
    assert MlflowClient(tracking_uri).search_registered_models() == []
