"""The results tables of `sasan evaluate` / `sasan summary`: capped ASSDs are marked and
explained, and columns stay apart and aligned (segmentation and paired tables)."""

import re

import yaml

from sasan.cli import main
from sasan.stages.evaluate import markdown_report, summary_table
from tests.stages.test_evaluate import MODEL, _background_only, _bundle, make_raw

MEASURED = {"dice": 0.8, "assd_vox": 1.5, "assd_mm": 2.0, "n_missing": 0}
NEVER_PREDICTED = {"dice": 0.0, "assd_vox": 50.0, "assd_mm": 98.5, "n_missing": 2}
WRONG = {"dice": 0.05, "assd_vox": 98.5, "assd_mm": 120.0, "n_missing": 0}


def _results():
    return {"no_adaptation": {"per_structure": {"MYO": WRONG, "LV": MEASURED}, "mean": MEASURED, "n_subjects": 2},
            "sasan": {"per_structure": {"MYO": NEVER_PREDICTED, "LV": MEASURED}, "mean": MEASURED, "n_subjects": 2}}


def test_a_capped_assd_is_marked_and_the_footer_gives_the_cap():
    lines = summary_table(_results(), ["no_adaptation", "sasan"], ["MYO", "LV"], assd_cap_vox=50.0).splitlines()
    cells = {line.split()[0]: line.split()[1:] for line in lines[2:4]}
    assert cells["sasan"] == ["0.000/50.0*", "0.800/1.5", "0.800/1.5*"]      # the mean counts the capped MYO
    assert cells["no_adaptation"] == ["0.050/98.5", "0.800/1.5", "0.800/1.5"]  # measured: no mark
    footer = " ".join(lines[lines.index(next(line for line in lines if line.startswith("*"))):])
    assert "the cap, 50 voxels (evaluate.assd_cap_vox" in footer
    # numbers stay aligned: every row's cells end in the same columns
    ends = {tuple(m.end() for m in re.finditer(r"\d/\d+\.\d", line)) for line in lines[2:4]}
    assert len(ends) == 1


def test_without_capped_values_there_is_no_mark_nor_footnote():
    results = {"sasan": {"per_structure": {"MYO": MEASURED}, "mean": MEASURED}}
    table = summary_table(results, assd_cap_vox=50.0)
    assert "*" not in table and table.splitlines()[2].split() == ["sasan", "0.800/1.5", "0.800/1.5"]
    # a metrics file from before n_missing: nothing to mark
    cell = {"dice": 0.0, "assd_vox": 50.0}
    old = {"sasan": {"per_structure": {"MYO": cell}, "mean": cell}}
    assert "*" not in summary_table(old)


def test_the_footer_names_the_setting_when_the_cap_is_not_given():
    table = summary_table(_results())
    assert "\n* capped: " in table and "  the cap (evaluate.assd_cap_vox; " in table


def test_long_names_keep_two_spaces_between_columns():
    long_name = "no_seg_adversary"
    results = {long_name: {"per_structure": {"enhancing tumour": NEVER_PREDICTED, "MYO": WRONG},
                           "mean": {"dice": 0.025, "assd_vox": 123.25, "assd_mm": 1.0}}}
    lines = summary_table(results, assd_cap_vox=50.0).splitlines()
    assert lines[0].startswith("method") and "  enhancing tumour  " in lines[0]
    assert lines[2].startswith(f"{long_name}  ")
    assert lines[2].split() == [long_name, "0.000/50.0*", "0.050/98.5", "0.025/123.2*"]


def test_the_markdown_report_marks_capped_assd(tmp_path):
    md = markdown_report(_results(), ["no_adaptation", "sasan"], "t", tmp_path)
    assert "| sasan | 0.000 (98.50\\*) | 0.800 (2.00) | 0.800 (2.00\\*) |" in md
    assert "| no_adaptation | 0.050 (120.00) | 0.800 (2.00) | 0.800 (2.00) |" in md
    assert "evaluate.assd_cap_vox" in md


def _paired(mae, psnr, ssim):
    return {"mode": "paired", "n_subjects": 2, "mask": "body",
            "mean": {"mae": mae, "rmse": 0.1, "psnr": psnr, "ssim": ssim, "pearson": 0.5},
            "sd": {"mae": 0.0, "rmse": 0.0, "psnr": 0.0, "ssim": 0.0, "pearson": 0.0}, "per_subject": []}


def test_the_paired_table_has_aligned_columns_under_headers():
    results = {"cyclegan": _paired(0.6114, 9.54, -0.0338), "no_seg_adversary": _paired(0.1, 21.5, 0.71)}
    lines = summary_table(results, ["cyclegan", "no_seg_adversary"]).splitlines()
    head, rows = lines[0], lines[2:4]
    assert head.split() == ["method", "MAE", "PSNR", "(dB)", "SSIM"] and set(lines[1]) == {"-"}
    # cells: mean +- sd, separated by at least two spaces (the old table ran them together)
    for row in rows:
        cells = re.split(r"\s{2,}", row.strip())
        assert len(cells) == 4, row
    assert re.split(r"\s{2,}", rows[0].strip()) == ["cyclegan", "0.6114 +- 0.0000", "9.54 +- 0.00",
                                                    "-0.0338 +- 0.0000"]
    # right-aligned: each column's cells and its header end in the same place
    for header in ("MAE", "PSNR (dB)", "SSIM"):
        end = head.index(header) + len(header)
        assert all(row[end - 1] == "0" and (end == len(row) or row[end] == " ") for row in rows), header


def test_sasan_evaluate_prints_the_marked_table_with_the_configured_cap(tmp_path, capsys):
    """End to end: a U-Net that predicts nothing; its ASSD is the cap (here 30 voxels), marked."""
    raw = make_raw(tmp_path / "raw")
    _bundle(tmp_path / "m" / "sasan" / "model.pt", segmenter=_background_only)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "experiment": {"source": "mr", "target": "ct"}, "train": {"device": "cpu"},
        "evaluate": {"batch_size": 8, "assd_cap_vox": 30.0, "methods": ["sasan"]},
        "preprocess": {"image_size": 32}, "model": MODEL}))
    out = tmp_path / "out"
    assert main(["evaluate", str(raw), str(tmp_path / "m"), "--params", str(params), "--no-progress",
                 "--no-predictions", "--metrics", str(out / "evaluation.json"), "--report", str(out / "report")]) == 0
    text = capsys.readouterr().out
    row = next(line for line in text.splitlines() if line.startswith("sasan"))
    assert row.split()[1:] == ["0.000/30.0*", "0.000/30.0*", "0.000/30.0*"], text
    assert "the cap, 30 voxels" in text
