"""bench/paired.py: the paired-translation table (mean +- sd over seeds, SASAN - CycleGAN
paired by seed) from recorded per-seed evaluations, without training anything."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
_spec = importlib.util.spec_from_file_location("bench_paired", ROOT / "bench" / "paired.py")
paired = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(paired)


def seed_result(ssim: dict[str, float]) -> dict:
    """What `sasan evaluate` writes per method in paired mode (only the fields read here)."""
    return {m: {"mode": "paired", "mask": "field_of_view", "n_subjects": 6,
                "mean": {"mae": 1 - s, "rmse": 1.2 - s, "psnr": 10 + 10 * s, "ssim": s, "pearson": s / 2}}
            for m, s in ssim.items()}


def test_summary_pairs_seeds() -> None:
    per_seed = {0: seed_result({"cyclegan": 0.4, "sasan": 0.6}), 1: seed_result({"cyclegan": 0.5, "sasan": 0.5}),
                2: seed_result({"cyclegan": 0.45, "sasan": 0.55})}
    res = paired.summarise(Path("profiles/phantom-paired.yaml"), [0, 1, 2], per_seed, ["cyclegan", "sasan"])
    sasan = res["methods"]["sasan"]
    assert sasan["ssim"]["mean"] == pytest.approx(0.55) and sasan["ssim"]["sd"] == pytest.approx(0.05)
    assert sasan["ssim"]["per_seed"] == [0.6, 0.5, 0.55] and sasan["mae"]["mean"] == pytest.approx(0.45)
    assert sasan["n_subjects"] == 6 and sasan["mask"] == "field_of_view"
    diff = res["sasan_minus_cyclegan"]
    assert diff["ssim"]["per_seed"] == pytest.approx([0.2, 0.0, 0.1]) and diff["ssim"]["mean"] == pytest.approx(0.1)
    assert diff["mae"]["per_seed"] == pytest.approx([-0.2, 0.0, -0.1])
    table = paired.markdown(res)
    assert "| sasan | 0.450 +- 0.050 | 15.500 +- 0.500 | 0.550 +- 0.050 | 0.275 +- 0.025 |" in table
    assert "SASAN - CycleGAN SSIM, paired by seed: +0.100 +- 0.100 (per seed: +0.200, +0.000, +0.100)" in table
    assert "6 test subjects, field_of_view mask" in table


def test_prepare_reuses_shards_only_from_the_same_settings(tmp_path, monkeypatch) -> None:
    """The done-marker records the subjects, the profile (path and contents) and overrides; a
    rerun with others, or with the profile edited in place, is refused in one line instead of
    reusing stale shards."""
    calls = []

    def fake_sasan(*args, log, threads=None):
        calls.append(args[0])
        if args[0] == "preprocess":
            Path(args[2]).mkdir(parents=True)

    monkeypatch.setattr(paired, "sasan", fake_sasan)
    work, log, profile = tmp_path / "work", tmp_path / "log.txt", tmp_path / "profile.yaml"
    sets = ["--set", "preprocess.image_size=64"]
    profile.write_text("mode: paired\n")
    (tmp_path / "other.yaml").write_text("mode: paired\n")
    raw, shards = paired.prepare(work, profile, sets, log, 20)
    assert calls == ["data", "ingest", "validate", "preprocess"] and (shards / "done").is_file()
    assert paired.prepare(work, profile, sets, log, 20) == (raw, shards) and len(calls) == 4  # reused
    for other in ((profile, [], 20), (tmp_path / "other.yaml", sets, 20), (profile, sets, 12),
                  (profile, ["--set", "preprocess.image_size=32"], 20)):
        with pytest.raises(SystemExit) as err:
            paired.prepare(work, *other[:2], log, other[2])
        msg = str(err.value.code)
        assert "\n" not in msg and re.match(re.escape(f"{work}: prepared with other settings (cases 20; profile {profile} ")
                                             + r"sha256:[0-9a-f]{16}; overrides preprocess\.image_size=64\), not \(", msg)
        assert msg.endswith("); use another --work")
    profile.write_text("mode: paired\ntrain: {steps: 10}\n")   # edited in place
    with pytest.raises(SystemExit, match="prepared with other settings"):
        paired.prepare(work, profile, sets, log, 20)
    profile.write_text("mode: paired\n")
    assert paired.prepare(work, profile, sets, log, 20) == (raw, shards)
    (shards / "done").write_text("cases 20\n")  # a marker of the old kind: no profile, no overrides
    with pytest.raises(SystemExit, match="prepared with other settings"):
        paired.prepare(work, profile, sets, log, 20)
    assert len(calls) == 4


def test_one_job_prints_a_line_per_seed(tmp_path, monkeypatch, capsys) -> None:
    """--jobs 1 reports each seed as it finishes, as bench/adaptation.py does."""
    results = {0: seed_result({"cyclegan": 0.4, "sasan": 0.6}), 1: seed_result({"cyclegan": 0.5, "sasan": 0.55})}
    monkeypatch.setattr(paired, "prepare", lambda *a: (tmp_path / "raw", tmp_path / "shards"))
    monkeypatch.setattr(paired, "run_seed", lambda seed, *a, **k: results[seed])
    monkeypatch.setattr(paired, "write_results", lambda *a: None)
    monkeypatch.setattr(sys, "argv", ["paired.py", "--seeds", "0", "1", "--work", str(tmp_path / "w"),
                                      "--out", str(tmp_path / "out.json")])
    paired.main()
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["seed 0: cyclegan SSIM 0.400, sasan SSIM 0.600", "seed 1: cyclegan SSIM 0.500, sasan SSIM 0.550"]
