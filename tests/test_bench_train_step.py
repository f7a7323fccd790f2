"""bench/train_step.py end to end at the demo scale (two timed iterations, batch 1): the report's
keys, the SASAN/CycleGAN ratio, the ``--split`` record of where an iteration's time goes and
the ``--paired`` per-pair ratios."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_step_bench_records_ratio_and_split(tmp_path: Path) -> None:
    out = tmp_path / "train_step.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--scales", "demo", "--device", "cpu",
                    "--iters", "2", "--batch", "1", "--split", "--paired", "--pairs", "2", "--out", str(out)],
                   cwd=ROOT, env=env, check=True, capture_output=True, text=True, timeout=600)
    report = json.loads(out.read_text())
    sasan, cyc = report["runs"]["cpu/demo/sasan"], report["runs"]["cpu/demo/cyclegan"]
    assert sasan["scale"] == "demo" and sasan["image_size"] == 64 and sasan["batch_size"] == 1
    assert sasan["generator_params"] > cyc["generator_params"]          # A_t is SASAN's own
    assert "G/seg_adversarial" in sasan["loss_terms"] and "G/seg_adversarial" not in cyc["loss_terms"]
    demo = report["scales"]["demo"]
    assert demo["ratio"] == pytest.approx(sasan["s_per_it"] / cyc["s_per_it"])
    for run in (sasan, cyc):
        split = run["split"]
        assert split["conv_ms"] > 0 and split["other_ms"] > 0 and 0 < split["conv_calls"] < split["op_calls"]
    # SASAN runs four attention-module passes and the segmentation discriminators on top of
    # the ablation's passes: more convolutions and more operator calls per iteration
    assert sasan["split"]["conv_calls"] > cyc["split"]["conv_calls"]
    assert demo["split_ratio"]["op_calls"] > 1.2
    pair = report["runs"]["cpu/demo/paired"]
    assert len(pair["times"]["sasan"]) == len(pair["times"]["cyclegan"]) == len(pair["ratios"]) == 2
    assert pair["ratios"] == pytest.approx([s / c for s, c in zip(pair["times"]["sasan"], pair["times"]["cyclegan"])])
    assert demo["paired_ratio_median"] == pytest.approx(sum(pair["ratios"]) / 2)     # median of two
    assert len(demo["paired_ratio_quartiles"]) == 2
    lo, hi = demo["paired_ratio_median_ci95"]          # bootstrap medians of two ratios: each or their mean
    assert min(pair["ratios"]) <= lo <= hi <= max(pair["ratios"])
