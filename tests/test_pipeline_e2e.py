"""End to end: `dvc repro` of the real dvc.yaml on a tiny phantom, in a scratch git repo.

Every stage runs through the `sasan` CLI exactly as `make run` does, with a tiny profile
(32x32 slices, small widths, a few steps) so it finishes in about a minute."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "phantom": {"cases": 4},
    "preprocess": {"image_size": 32},
    "model": {"k": 4, "attention_width": 8, "synth_width": 8, "norm_hidden": 8, "disc_width": 8,
              "seg_disc_width": 8, "unet_width": 4},
    "train": {"device": "cpu", "checkpoint_every": 5, "log_every": 2,
              "pretrain": {"epochs": 0.2, "batch_size": 8},
              "joint": {"epochs": 1, "max_steps": 4},
              "segmenter": {"epochs": 1.0, "max_steps": 4, "batch_size": 8}},
    "register": {"enabled": True, "min_dice": 0.0},    # params.yaml's default skips registration
    # every method of the paper's table (params.yaml's demo leaves the CycleGAN ablation out)
    "evaluate": {"methods": ["no_adaptation", "cyclegan", "sasan", "upper_bound"]},
}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        base[k] = deep_update(base.get(k, {}), v) if isinstance(v, dict) else v
    return base


def run(cmd, cwd, env):
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f"{cmd} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.mark.slow
def test_dvc_repro_runs_every_stage_on_a_tiny_phantom(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    shutil.copytree(ROOT / ".dvc", repo / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    # stage deps name the library folders: link them so DVC can hash them
    for name in ("sasan",):
        (repo / name).symlink_to(ROOT / name)
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"],
           "MLFLOW_TRACKING_URI": f"sqlite:///{repo / 'mlflow.db'}", "OMP_NUM_THREADS": "2"}
    run(["git", "init", "-q"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo, env)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], repo, env)

    run([str(Path(bindir) / "dvc"), "repro"], repo, env)

    metrics = json.loads((repo / "metrics" / "evaluation.json").read_text())
    assert set(metrics) == {"no_adaptation", "cyclegan", "sasan", "upper_bound"}
    for method in metrics.values():
        assert set(method["per_structure"]) == {"MYO", "LA", "LV", "AA"}
        assert {"dice", "assd_vox", "assd_mm"} <= set(method["mean"])
        for s in method["per_structure"].values():
            assert 0.0 <= s["dice"] <= 1.0 and s["assd_vox"] >= 0.0 and s["assd_mm"] >= 0.0
    assert (repo / "reports" / "validation" / "validation.html").is_file()
    assert (repo / "reports" / "evaluation" / "segmentations.png").is_file()
    assert (repo / "outputs" / "train" / "sasan" / "samples" / "translation.png").is_file()
    decision = json.loads((repo / "reports" / "register" / "register.json").read_text())
    assert decision["promoted"] is True          # min_dice 0 and no champion yet
    assert (repo / "dvc.lock").is_file()

    # nothing changed -> nothing reruns; a changed evaluate param reruns only evaluate + register
    # (the source stage, which fingerprints ingest.source, always runs: it alone is listed)
    res = run([str(Path(bindir) / "dvc"), "status"], repo, env)
    assert [line for line in res.stdout.splitlines() if line and not line.startswith(("\t", " "))] == ["source:"]
    shown = run([str(Path(bindir) / "dvc"), "metrics", "show"], repo, env).stdout
    assert "sasan" in shown and "MYO" in shown

    summary = run([str(Path(bindir) / "sasan"), "summary"], repo, env).stdout
    assert "no_adaptation" in summary and "upper_bound" in summary and "mlflow ui" in summary
    header = next(line for line in summary.splitlines() if line.startswith("method"))
    assert header.split()[1:] == ["MYO", "LA", "LV", "AA", "mean"]   # label order, not key order

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{repo / 'mlflow.db'}")
    exp = client.get_experiment_by_name(params["experiment"]["name"])
    runs = client.search_runs([exp.experiment_id])
    # one parent run per execution, a child run per variant named by it (docs/mlflow.md)
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(children) == set(metrics) and len(runs) == 1 + len(children)
    assert "sasan/mean/dice" in parent.data.metrics and parent.data.params["model.k"] == "4"
    assert any(k.startswith("joint/G/cycle") for k in children["sasan"].data.metrics)
