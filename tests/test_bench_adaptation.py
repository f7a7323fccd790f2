"""bench/adaptation.py: the numbers its tables rest on (paired differences, gap closed) and
its resumption from recorded per-seed results, without training anything."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_adaptation", ROOT / "bench" / "adaptation.py")
adaptation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(adaptation)

METHODS = ["no_adaptation", "cyclegan", "sasan", "upper_bound"]


def seed_result(dice: dict[str, float]) -> dict:
    return {m: {"mean": {"dice": d, "assd_vox": 10 * (1 - d), "dice_std": 0.01},
                "per_structure": {"wm": {"dice": d}}, "n_subjects": 6} for m, d in dice.items()}


def test_summary_pairs_seeds_and_computes_gap_closed() -> None:
    per_seed = {0: seed_result({"no_adaptation": 0.3, "cyclegan": 0.4, "sasan": 0.6, "upper_bound": 0.8}),
                1: seed_result({"no_adaptation": 0.2, "cyclegan": 0.5, "sasan": 0.5, "upper_bound": 0.8})}
    res = adaptation.summarise("brain", Path("profiles/brain-t2t1.yaml"), [0, 1], per_seed, METHODS)
    assert res["methods"]["sasan"]["mean_dice"] == pytest.approx(0.55)
    assert res["methods"]["sasan"]["sd_dice"] == pytest.approx(0.0707107, abs=1e-6)   # stdev of (0.6, 0.5)
    assert res["sasan_minus_cyclegan"]["per_seed"] == pytest.approx([0.2, 0.0])
    assert res["sasan_minus_cyclegan"]["mean"] == pytest.approx(0.1)
    # (0.55 - 0.25) / (0.8 - 0.25)
    assert res["gap_closed"] == pytest.approx(0.3 / 0.55)
    table = adaptation.markdown(res)
    assert "| sasan | 0.550 +- 0.071 | 0.600, 0.500 |" in table
    assert "+0.100 +- 0.141 (per seed: +0.200, +0.000)" in table


def test_recorded_seed_is_read_back_in_a_fresh_work_folder(tmp_path: Path) -> None:
    out = tmp_path / "results" / "adaptation_brain_4000.json"
    record = adaptation.seed_record(out, 1)
    assert record.name == "adaptation_brain_4000_seed1.json"
    params = tmp_path / "brain-t2t1.yaml"
    result = seed_result({"no_adaptation": 0.3, "cyclegan": 0.4, "sasan": 0.6, "upper_bound": 0.8})
    result["_config"] = {"profile": params.name, "overrides": ["train.joint.max_steps=4000"]}
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps(result))
    # nothing trains: the raw and shard folders do not even exist
    got = adaptation.run_seed(1, tmp_path / "raw", tmp_path / "shards", tmp_path / "work", params,
                              ["--set", "train.joint.max_steps=4000"], METHODS, tmp_path / "log.txt", record=record)
    assert got == result
    assert not (tmp_path / "log.txt").exists()


def test_only_methods_not_recorded_are_trained_and_each_is_recorded_when_evaluated(tmp_path, monkeypatch) -> None:
    calls: list[tuple[str, str]] = []

    def fake_sasan(command: str, *args: str, log: Path, threads=None) -> None:
        if command == "train":
            method = args[args.index("--variants") + 1]
        else:
            method = next(a for a in args if a.startswith("evaluate.methods=")).removeprefix("evaluate.methods=[")[:-1]
        calls.append((command, method))
        if command == "evaluate":
            metrics = Path(args[args.index("--metrics") + 1])
            metrics.parent.mkdir(parents=True, exist_ok=True)
            metrics.write_text(json.dumps(seed_result({method: 0.5})))

    monkeypatch.setattr(adaptation, "sasan", fake_sasan)
    record = tmp_path / "results" / "t_seed2.json"
    record.parent.mkdir(parents=True)
    recorded = seed_result({"no_adaptation": 0.3})          # an earlier session evaluated one method
    recorded.update(_seconds=12.0, _machine={"cpu": "x"})   # in the one-block format of older files
    record.write_text(json.dumps(recorded))
    got = adaptation.run_seed(2, tmp_path / "raw", tmp_path / "shards", tmp_path / "work", tmp_path / "p.yaml",
                              [], ["no_adaptation", "sasan", "upper_bound"], tmp_path / "log.txt", record=record)
    assert calls == [("train", "sasan"), ("evaluate", "sasan"), ("train", "upper_bound"), ("evaluate", "upper_bound")]
    assert [got[m]["mean"]["dice"] for m in ("no_adaptation", "sasan", "upper_bound")] == [0.3, 0.5, 0.5]
    assert set(got["_seconds"]) == {"no_adaptation", "sasan", "upper_bound"}
    assert json.loads(record.read_text()) == got == json.loads((tmp_path / "work" / "seed2" / "metrics.json").read_text())


def test_recorded_seed_of_other_settings_is_refused(tmp_path: Path) -> None:
    done = tmp_path / "metrics.json"
    result = seed_result({"no_adaptation": 0.3, "sasan": 0.6})
    result["_config"] = {"profile": "brain-t2t1.yaml", "overrides": ["train.joint.max_steps=2000"]}
    done.write_text(json.dumps(result))
    config = {"profile": "brain-t2t1.yaml", "overrides": ["train.joint.max_steps=4000"]}
    with pytest.raises(SystemExit, match="max_steps=2000"):
        adaptation.read_back(done, 0, config)
    del result["_config"]                       # recorded before the check: taken as it is
    done.write_text(json.dumps(result))
    assert adaptation.read_back(done, 0, config)["sasan"]["mean"]["dice"] == 0.6


def test_prepare_keeps_six_test_subjects_and_refuses_a_folder_of_another_size(tmp_path, monkeypatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(adaptation, "sasan", lambda *args, log, threads=None: calls.append(args))
    work = tmp_path / "w"
    (work / "shards").mkdir(parents=True)
    adaptation.prepare("phantom", work, tmp_path / "p.yaml", [], tmp_path / "log.txt", cases=22)
    generate, ingest = calls[0], calls[1]
    assert generate[:2] == ("data", "phantom") and generate[generate.index("--cases") + 1] == "22"
    fraction = float(ingest[ingest.index("--test-fraction") + 1])
    assert round(fraction * 22) == 6 and [c[0] for c in calls] == ["data", "ingest", "validate", "preprocess"]
    assert (work / "shards" / "done").read_text() == "cases 22\n"
    calls.clear()
    adaptation.prepare("phantom", work, tmp_path / "p.yaml", [], tmp_path / "log.txt", cases=22)
    assert calls == []                                       # prepared once
    with pytest.raises(SystemExit, match="prepared with 22 subjects per domain, not 32"):
        adaptation.prepare("phantom", work, tmp_path / "p.yaml", [], tmp_path / "log.txt")
    default = adaptation.DATA["brain"][1]
    (tmp_path / "b" / "shards").mkdir(parents=True)     # sasan preprocess makes it
    adaptation.prepare("brain", tmp_path / "b", tmp_path / "p.yaml", [], tmp_path / "log.txt")
    assert float(calls[1][calls[1].index("--test-fraction") + 1]) * default == pytest.approx(6)
