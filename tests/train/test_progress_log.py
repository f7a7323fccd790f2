"""Without progress bars (`dvc repro` runs `sasan train --no-progress`) each phase logs a few
lines: its start, every ~10 % of its steps or after a minute without one, its end; bars and
lines name the variant (variants trained side by side interleave them)."""

import logging

import pytest

from sasan.train.loop import Phase, ProgressLog, run_phase
from sasan.train.recipe import Trainer
from tests.train.conftest import tiny_config

LOOP = "sasan.train.loop"


def _phase(tmp_path, steps, logs=None):
    return Phase("joint", steps, lambda step: dict(logs or {"G/total": 2.5, "D/total": 0.5, "G/cycle": 1.0}),
                 lambda: {}, lambda s: None, tmp_path / "p.pt", checkpoint_every=1000)


def _lines(caplog):
    return [r.getMessage() for r in caplog.records if r.name == LOOP]


def test_without_bars_a_phase_logs_start_every_tenth_and_end(tmp_path, caplog):
    caplog.set_level(logging.INFO, LOOP)
    run_phase(_phase(tmp_path, 50), progress=False, label="sasan/joint")
    lines = _lines(caplog)
    assert lines[0] == "sasan/joint: 50 steps"
    steps = [line for line in lines if " / 50 (" in line]
    assert [line.split(",")[0] for line in steps] == [f"sasan/joint: step {s} / 50 ({2 * s}%)" for s in range(5, 50, 5)]
    assert "G/total 2.5, D/total 0.5," in steps[0] and "s/step, ETA " in steps[0] and "G/cycle" not in steps[0]
    assert lines[-1].startswith("sasan/joint: done, 50 steps in ") and lines[-1].endswith(" s/step)")
    assert len(lines) == 11


def test_with_bars_no_progress_lines(tmp_path, caplog, capsys):
    caplog.set_level(logging.INFO, LOOP)
    run_phase(_phase(tmp_path, 20), progress=True, label="sasan/joint")
    assert _lines(caplog) == []
    assert "sasan/joint:" in capsys.readouterr().err          # the bar names variant and phase


def test_a_resumed_phase_counts_from_its_checkpoint(tmp_path, caplog):
    def step_fn(step):
        if step == 25:
            raise RuntimeError("killed")
        return {"loss": 0.25}

    with pytest.raises(RuntimeError):       # checkpointed at step 20
        run_phase(Phase("joint", 40, step_fn, lambda: {}, lambda s: None, tmp_path / "p.pt", checkpoint_every=20),
                  progress=False)
    caplog.clear()                          # what the first run logged (captured when INFO is on already)
    caplog.set_level(logging.INFO, LOOP)
    run_phase(Phase("joint", 40, lambda step: {"loss": 0.25}, lambda: {}, lambda s: None, tmp_path / "p.pt"),
              progress=False, label="v/joint")
    lines = _lines(caplog)
    assert lines[0].startswith("v/joint: resuming from step 20 / 40")
    assert lines[1].startswith("v/joint: step 24 / 40 (60%), loss 0.25, ")
    assert lines[-1].startswith("v/joint: done, 20 steps in ")


def test_a_minute_without_a_line_brings_one(caplog):
    caplog.set_level(logging.INFO, LOOP)
    now = [0.0]
    report = ProgressLog("v/joint", 1000, 0, clock=lambda: now[0])
    for done in range(1, 100):
        now[0] += 1.0                   # 1 s/step: 10 % of the steps takes 100 s
        report.step(done, {"loss": 1.0})
    assert [m for m in _lines(caplog) if "step " in m] == [
        "v/joint: step 60 / 1000 (6%), loss 1, 1 s/step, ETA 15m40s"]


def test_trainer_lines_name_the_variant(tmp_path, tiny_data, caplog):
    variant = "no_adaptation"
    caplog.set_level(logging.INFO)
    tiny_data.source_test = tiny_data.target_labelled
    Trainer(tiny_config(), tmp_path, variant, progress=False).run(tiny_data)
    text = caplog.text
    assert f"{variant}/segmenter: 2 steps" in text                # 8 slices, batches of 4
    assert f"{variant}/segmenter: done, 2 steps in " in text
    assert f"{variant}: U-Net source test Dice " in text
