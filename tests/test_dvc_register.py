"""Registration from DVC is opt-in: with register.enabled false (params.yaml's default) the
register stage writes a "skipped" report and touches no registry, so `dvc exp run` trials
never create model versions."""

import json
from pathlib import Path

import yaml

from sasan.cli import main


def test_register_is_skipped_unless_enabled(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'never.db'}")
    (tmp_path / "params.yaml").write_text("register:\n  enabled: false\n")
    code = main(["register", "--bundle", "missing.pt", "--metrics", "missing.json", "--run-ref", "missing.json",
                 "--params", str(tmp_path / "params.yaml"), "--report", str(tmp_path / "report")])
    assert code == 0
    report = json.loads((tmp_path / "report" / "register.json").read_text())
    assert report["skipped"] is True and report["promoted"] is False and report["version"] is None
    assert "register.enabled" in (tmp_path / "report" / "register.md").read_text()
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "never.db").exists()          # no store was even opened


def test_params_yaml_keeps_registration_off_by_default():
    root = Path(__file__).resolve().parents[1]
    assert yaml.safe_load((root / "params.yaml").read_text())["register"]["enabled"] is False
