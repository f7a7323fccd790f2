"""`sasan summary`: the table of the metrics it is given, and the paths of its arguments."""

import json

import pytest

from sasan.cli import main

CELL = {"dice": 0.5, "assd_vox": 2.0, "assd_mm": 3.0}


def _metrics(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sasan": {"per_structure": {"MYO": CELL}, "mean": CELL}}))
    return path


def _touch(*paths):
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_where_to_look_follows_the_arguments(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    metrics = _metrics(tmp_path / "m" / "eval.json")
    report, models = tmp_path / "rep" / "evaluation2", tmp_path / "trained"
    models.mkdir()
    (models / "mlflow_run.json").write_text(json.dumps({"run_id": "r1", "experiment_id": "42", "tracking_uri": "sqlite:///x.db"}))
    # a run reference at the default place must not be read
    (tmp_path / "outputs" / "train").mkdir(parents=True)
    (tmp_path / "outputs" / "train" / "mlflow_run.json").write_text(json.dumps({"run_id": "r0", "experiment_id": "7", "tracking_uri": "sqlite:///x.db"}))
    _touch(report / "segmentations.png", report / "dice_per_structure.png", models / "sasan" / "samples" / "a.png",
           report.parent / "validation" / "validation.html", report.parent / "register" / "register.md")
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
    _touch(*(tmp_path / p for p in ("reports/evaluation/segmentations.png", "reports/evaluation/dice_per_structure.png",
                                    "outputs/train/sasan/samples/a.png", "reports/validation/validation.html",
                                    "reports/register/register.md")))
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
    assert "segmentations.png" not in out and "translations.png" not in out      # not written yet
    _touch(tmp_path / "reports" / "evaluation" / "translations.png",
           tmp_path / "reports" / "evaluation" / "segmentations.png")          # a leftover of another evaluation
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
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
    assert "  mlflow ui" in out and "\n  dvc metrics show " in out and "\n  dvc plots show " in out


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


def _where_to_look(out):
    return out[out.index("Where to look:"):].splitlines()[1:]


def test_only_files_that_exist_are_listed(tmp_path, capsys, monkeypatch):
    """No register run, no validation report, no pictures: none of them is named; a report
    folder given with --report does not make up its siblings."""
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    for name in ("register.md", "validation.html", "segmentations.png", "dice_per_structure.png", "samples"):
        assert name not in out, name
    _touch(tmp_path / "X" / "eval" / "segmentations.png")
    assert main(["summary", "--report", "X/eval"]) == 0
    out = capsys.readouterr().out
    assert "X/eval/segmentations.png" in out
    assert "X/validation" not in out and "X/register" not in out and "dice_per_structure" not in out


def test_the_dvc_commands_are_two_commands(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    assert main(["summary"]) == 0
    lines = _where_to_look(capsys.readouterr().out)
    assert not [line for line in lines if "|" in line]           # nothing piped into anything
    commands = [line.split("#")[0].split() for line in lines if "dvc" in line]
    assert [c[-2:] for c in commands] == [["metrics", "show"], ["plots", "show"]]


def _ref(models, uri, experiment="3", run="abc123"):
    models.mkdir(parents=True, exist_ok=True)
    (models / "mlflow_run.json").write_text(json.dumps({"run_id": run, "experiment_id": experiment,
                                                        "tracking_uri": uri}))


def test_mlflow_ui_opens_the_store_the_run_was_tracked_in(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    _ref(tmp_path / "outputs" / "train", "sqlite:////tmp/x/mlflow.db")
    assert main(["summary"]) == 0
    lines = _where_to_look(capsys.readouterr().out)
    assert lines[0].split()[-3:] == ["ui", "--backend-store-uri", "sqlite:////tmp/x/mlflow.db"]
    links = [line.split()[0] for line in lines if "127.0.0.1:5000" in line]
    assert links[0].startswith("http://127.0.0.1:5000/#/experiments/3/runs?")
    assert links[1] == "http://127.0.0.1:5000/#/experiments/3/runs/abc123"


@pytest.mark.parametrize("uri", ["sqlite:///mlflow.db", "sqlite:///{cwd}/mlflow.db", "sqlite:///{cwd}/./mlflow.db"])
def test_the_default_store_of_this_directory_is_plain_mlflow_ui(tmp_path, capsys, monkeypatch, uri):
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    _ref(tmp_path / "outputs" / "train", uri.format(cwd=tmp_path.resolve().as_posix()))
    assert main(["summary"]) == 0
    lines = _where_to_look(capsys.readouterr().out)
    assert lines[0].split("#")[0].split()[-1] == "ui" and "--backend-store-uri" not in "\n".join(lines)
    assert "http://127.0.0.1:5000/#/experiments/3/runs/abc123" in "\n".join(lines)


def test_a_tracking_server_is_linked_without_mlflow_ui(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _metrics(tmp_path / "metrics" / "evaluation.json")
    _ref(tmp_path / "outputs" / "train", "https://mlflow.example.org/", experiment="12")
    assert main(["summary"]) == 0
    text = "\n".join(_where_to_look(capsys.readouterr().out))
    assert "mlflow ui" not in text and "127.0.0.1" not in text
    assert "https://mlflow.example.org/#/experiments/12/runs?" in text
    assert "https://mlflow.example.org/#/experiments/12/runs/abc123" in text


def test_summary_marks_a_capped_assd_with_the_configured_cap(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    capped = {"dice": 0.0, "assd_vox": 40.0, "assd_mm": 60.0, "n_missing": 1}
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "evaluation.json").write_text(json.dumps(
        {"sasan": {"per_structure": {"MYO": capped, "LV": CELL}, "mean": CELL}}))
    (tmp_path / "params.yaml").write_text("evaluate:\n  assd_cap_vox: 25.0\n")     # changed since: not read
    report = tmp_path / "reports" / "evaluation"
    report.mkdir(parents=True)
    (report / "identity.json").write_text(json.dumps({"assd_cap_vox": 40.0}))    # what evaluate used
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "0.000/40.0*" in out and "0.500/2.0*" in out                 # MYO, and the mean that counts it
    assert "the cap, 40 voxels (evaluate.assd_cap_vox" in out
