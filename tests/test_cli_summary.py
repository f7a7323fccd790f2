"""`sasan summary`: the table of the metrics it is given, and the paths of its arguments."""

import json

import pytest

from sasan.cli import main

CELL = {"dice": 0.5, "assd_vox": 2.0, "assd_mm": 3.0}


def _metrics(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sasan": {"per_structure": {"MYO": CELL}, "mean": CELL}}))
    return path


def test_where_to_look_follows_the_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = _metrics(tmp_path / "m" / "eval.json")
    report, models = tmp_path / "rep" / "evaluation2", tmp_path / "trained"
    models.mkdir()
    (models / "mlflow_run.json").write_text(json.dumps({"run_id": "r1", "experiment_id": "42", "tracking_uri": "sqlite:///x.db"}))
    # a run reference at the default place must not be read
    (tmp_path / "outputs" / "train").mkdir(parents=True)
    (tmp_path / "outputs" / "train" / "mlflow_run.json").write_text(json.dumps({"run_id": "r0", "experiment_id": "7", "tracking_uri": "sqlite:///x.db"}))
    assert main(["summary", "--metrics", str(metrics), "--report", str(report), "--models", str(models)]) == 0
    out = capsys.readouterr().out
    assert "MYO" in out
    for path in (report / "segmentations.png", report / "dice_per_structure.png", models / "sasan" / "samples",
                 report.parent / "validation" / "validation.html", report.parent / "register" / "register.md"):
        assert str(path) in out
    assert "reports/evaluation" not in out and "outputs/train" not in out
    assert "/experiments/42" in out and "/experiments/7" not in out


def test_defaults_are_the_pipeline_paths(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    for path in ("reports/evaluation/segmentations.png", "reports/evaluation/dice_per_structure.png",
                 "outputs/train/sasan/samples/", "reports/validation/validation.html",
                 "reports/register/register.md"):
        assert path in out


def test_a_paired_evaluation_prints_its_image_metrics(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scores = {"mae": 0.12, "rmse": 0.2, "psnr": 21.5, "ssim": 0.71, "pearson": 0.9}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluation.json").write_text(json.dumps({"sasan": {
        "mode": "paired", "n_subjects": 2, "mean": scores, "sd": {k: 0.01 for k in scores}, "per_subject": []}}))
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["method", "MAE", "PSNR", "(dB)", "SSIM"]
    assert "0.1200 +- 0.0100" in out and "21.50 +- 0.01" in out and "0.7100 +- 0.0100" in out
    assert "reports/evaluation/translations.png" in out and "segmentations.png" not in out


@pytest.mark.parametrize("text", ["{", "[1, 2]"])
def test_a_bad_metrics_file_is_one_line(tmp_path, capsys, text):
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(text)
    assert main(["summary", "--metrics", str(metrics)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(metrics) in err[0]


def test_tools_are_named_as_this_shell_can_call_them(tmp_path, capsys, monkeypatch):
    """After `make run` (no activated environment) the hints name .venv/bin/mlflow and
    .venv/bin/dvc; with the environment on PATH, the bare names."""
    import sys
    from pathlib import Path

    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    bindir = Path(sys.executable).parent
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert f"{bindir / 'mlflow'} ui" in out and f"{bindir / 'dvc'} metrics show" in out
    monkeypatch.setenv("PATH", str(bindir))
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "  mlflow ui" in out and "  dvc metrics show | dvc plots show" in out


@pytest.mark.parametrize("doc, reason", [
    ({}, "an empty one"),
    ({"sasan": 1}, "'sasan' is not an object"),
    # validate's validation.json, preprocess's stats.json: objects, but not of methods
    ({"summary": {"errors": 0}, "checks": [], "ok": True}, "'summary' has no 'per_structure'"),
    ({"config": {"axis": 1}, "domains": {}, "counts": {"ct": {"train": 3}}}, "'config' has no 'per_structure'"),
    ({"sasan": {"per_structure": {"MYO": CELL}, "mean": {"dice": 0.5}}}, "'sasan' 'mean' has no number 'assd_vox'"),
    ({"sasan": {"per_structure": {"MYO": {"dice": "x"}}, "mean": CELL}}, "structure 'MYO' has no number 'dice'"),
    ({"sasan": {"per_structure": {"MYO": CELL}, "mean": CELL},
      "cyclegan": {"per_structure": {"LV": CELL}, "mean": CELL}}, "'cyclegan' scores structures"),
    ({"sasan": {"mode": "paired", "n_subjects": 1, "mean": {"mae": 0.1}}}, "'sasan' 'mean' has no number 'psnr'"),
])
def test_a_json_object_evaluate_did_not_write_is_one_line(tmp_path, capsys, doc, reason):
    metrics = tmp_path / "evaluation.json"
    metrics.write_text(json.dumps(doc))
    assert main(["summary", "--metrics", str(metrics), "--report", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"sasan summary: error: {metrics}: not an evaluate metrics file: ")
    assert reason in err[0]
