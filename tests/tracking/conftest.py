"""Fixtures of the tracking tests: a real local MLflow store per test, tiny model bundles.

Creating a fresh SQLite store runs MLflow's schema migrations (several seconds on a shared
CPU), so one empty store is built per session and copied for each test."""

import shutil

import pytest
import torch

from sasan.bundle import ModelBundle, save_bundle
from sasan.config import config_from_dict
from sasan.models import build_attention, build_segmenter, build_synthesis

TINY_MODEL = {"k": 4, "num_classes": 3, "attention_width": 8, "synth_width": 8, "norm_hidden": 8,
              "disc_width": 8, "seg_disc_width": 8, "unet_width": 4}


@pytest.fixture(scope="session")
def _empty_store(tmp_path_factory):
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()   # creates the schema
    return db


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """Run in tmp_path with no tracking URI in the environment: a call that ignored the
    explicit URI would create ./mlflow.db here, where tests can see it, not in the repo."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.fixture
def tracking_uri(tmp_path, _empty_store):
    """``sqlite:///`` URI of an empty store of this test (artifacts next to it)."""
    store = tmp_path / "store"
    store.mkdir()
    shutil.copy(_empty_store, store / "mlflow.db")
    return f"sqlite:///{(store / 'mlflow.db').as_posix()}"


def tiny_config(**model):
    return config_from_dict({"model": {**TINY_MODEL, **model}, "preprocess": {"image_size": 32}})


def tiny_bundle(variant: str = "sasan", seed: int = 0) -> ModelBundle:
    """A small random bundle: ``sasan`` (A_t + S_s + U-Net), ``cyclegan`` (S_s without
    attention) or ``no_adaptation`` (U-Net only)."""
    torch.manual_seed(seed)
    cfg = tiny_config(attention=variant != "cyclegan")
    m = cfg.model
    att_t = build_attention(m) if variant == "sasan" else None
    syn_s = (build_synthesis(m)
             if variant in ("sasan", "cyclegan") else None)
    return ModelBundle(cfg, variant, build_segmenter(m), att_t, syn_s).eval()


def tiny_paired_bundle(seed: int = 0) -> ModelBundle:
    """A small random paired-mode bundle (experiment.mode: paired): A_t + S_s, no U-Net."""
    torch.manual_seed(seed)
    cfg = config_from_dict({**tiny_config().to_dict(), "experiment": {"mode": "paired"}})
    m = cfg.model
    att_t = build_attention(m)
    syn_s = build_synthesis(m)
    return ModelBundle(cfg, "sasan", None, att_t, syn_s).eval()


@pytest.fixture
def bundle_path(tmp_path):
    path = tmp_path / "bundle.pt"
    save_bundle(path, tiny_bundle())
    return path
