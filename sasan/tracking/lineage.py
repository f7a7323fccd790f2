"""Lineage of a run: which code (git commit, or the image's revision on a cluster), which
data (content digest of the ingest manifest, the DVC hash where a ``dvc.lock`` records
one), which orchestrator run (KFP run id and its UI link) and which image.

What the environment says (image, revision, KFP run) is read at the edge (CLI, component)
into a :class:`RunContext` and passed in; this module reads only files it is given."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from sasan.atomic import read_json
from sasan.errors import DataError
from sasan.tracking.provenance import dvc_data_hash, git_commit, git_dirty


MANIFEST_NAME = "manifest.json"
IDENTITY_FILE = "data_identity.json"      # next to the shards: the identity of the raw data they came from
IMAGE_REVISION_ENV = "SASAN_IMAGE_REVISION"
IMAGE_ENV = "SASAN_IMAGE"                 # set on every Kubeflow step to the image it runs (pipelines/)
IMAGE_FLAVOR_ENV = "SASAN_IMAGE_FLAVOR"
KFP_UI_ENV = "KFP_UI_URL"
DATASET_DIGEST_CHARS = 36     # the width of MLflow's dataset digest column (the full digest is in the profile)


@dataclass(frozen=True)
class RunContext:
    """Where a stage runs: orchestrator, code checkout (or none), image and KFP run."""

    orchestrator: str = "cli"                  # cli | dvc | kubeflow
    code_dir: Optional[Path] = None            # a source checkout to read the git commit from
    image: Optional[str] = None                # image reference (REGISTRY/sasan:<sha> or @sha256:...)
    image_revision: Optional[str] = None       # git commit the image was built from
    image_flavor: Optional[str] = None         # cpu | cuda
    kfp_run_id: Optional[str] = None
    kfp_ui: Optional[str] = None               # Kubeflow Pipelines UI base URL

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], orchestrator: str = "cli",
                     code_dir: Optional[str | Path] = None, kfp_run_id: Optional[str] = None) -> "RunContext":
        """Read the image and KFP settings from ``environ`` (call this at the edge only)."""
        revision = environ.get(IMAGE_REVISION_ENV) or None
        return cls(orchestrator=orchestrator, code_dir=Path(code_dir) if code_dir else None,
                   image=environ.get(IMAGE_ENV) or None,
                   image_revision=None if revision in (None, "unknown") else revision,
                   image_flavor=environ.get(IMAGE_FLAVOR_ENV) or None,
                   kfp_run_id=kfp_run_id or None,
                   kfp_ui=environ.get(KFP_UI_ENV) or None)

    def kfp_run_url(self) -> Optional[str]:
        if not (self.kfp_run_id and self.kfp_ui):
            return None
        return f"{self.kfp_ui.rstrip('/')}/#/runs/details/{self.kfp_run_id}"

    def tags(self) -> dict[str, str]:
        """Code and orchestration tags: the commit from the checkout, else the image's."""
        tags = {"sasan.orchestrator": self.orchestrator}
        commit = git_commit(self.code_dir) if self.code_dir else None
        source = "git" if commit else None
        if commit is None and self.image_revision:
            commit, source = self.image_revision, "image"
        if commit:
            tags.update({"sasan.git_commit": commit, "mlflow.source.git.commit": commit, "sasan.code_source": source})
        if source == "git":
            dirty = git_dirty(self.code_dir)
            if dirty is not None:
                tags["sasan.git_dirty"] = str(dirty).lower()
        for key, value in (("sasan.image", self.image), ("sasan.image_revision", self.image_revision),
                           ("sasan.image_flavor", self.image_flavor), ("kfp.run_id", self.kfp_run_id),
                           ("kfp.run_url", self.kfp_run_url())):
            if value:
                tags[key] = value
        return tags


@dataclass(frozen=True)
class DataIdentity:
    """What data a run saw. ``digest``: sha256 over every case's (domain, split, id, file
    hashes) from the manifest, so the same files give the same digest wherever they were
    read from; ``test_split``: per domain, the digest of the sorted test case ids."""

    name: str
    digest: str
    source: str
    n_cases: int
    test_split: dict[str, str] = field(default_factory=dict)
    test_cases: dict[str, list[str]] = field(default_factory=dict)
    dvc_hash: Optional[str] = None

    def tags(self, prefix: str = "sasan.data") -> dict[str, str]:
        tags = {f"{prefix}.name": self.name, f"{prefix}.digest": self.digest, f"{prefix}.source": self.source,
                f"{prefix}.cases": str(self.n_cases)}
        tags.update({f"{prefix}.test_split.{d}": v for d, v in self.test_split.items()})
        if self.dvc_hash:
            tags[f"{prefix}.dvc_hash"] = self.dvc_hash
        return tags

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "digest": self.digest, "source": self.source, "n_cases": self.n_cases,
                "test_split": self.test_split, "test_cases": self.test_cases, "dvc_hash": self.dvc_hash}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DataIdentity":
        return cls(name=str(data["name"]), digest=str(data["digest"]), source=str(data["source"]),
                   n_cases=int(data["n_cases"]), test_split=dict(data.get("test_split") or {}),
                   test_cases={k: list(v) for k, v in (data.get("test_cases") or {}).items()},
                   dvc_hash=data.get("dvc_hash"))


def split_digest(case_ids: list[str]) -> str:
    """sha256 of the sorted case ids, one per line."""
    return hashlib.sha256("\n".join(sorted(case_ids)).encode()).hexdigest()


def data_identity(raw_dir: str | Path, code_dir: Optional[str | Path] = None) -> DataIdentity:
    """The identity of an ingested data set (``raw_dir/manifest.json``); the DVC hash of
    ``raw_dir`` too when ``code_dir`` holds a ``dvc.lock`` (or ``.dvc`` file) recording it."""
    raw_dir = Path(raw_dir)
    path = raw_dir / MANIFEST_NAME
    manifest = read_json(path, missing="manifest.json not found: run `sasan ingest` first",
                         invalid="manifest is not valid JSON")
    cases = manifest.get("cases") if isinstance(manifest, dict) else None
    if not isinstance(cases, list):
        raise DataError("manifest has no 'cases' list", path)
    rows = sorted(f"{c['domain']}\t{c['split']}\t{c['case_id']}\t{(c.get('sha256') or {}).get('image')}\t"
                  f"{(c.get('sha256') or {}).get('label')}" for c in cases)
    digest = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    tests: dict[str, list[str]] = {}
    for c in cases:
        if c["split"] == "test":
            tests.setdefault(c["domain"], []).append(c["case_id"])
    dvc_hash = None
    if code_dir is not None:
        try:
            rel = raw_dir.resolve().relative_to(Path(code_dir).resolve())
        except ValueError:
            rel = None
        dvc_hash = dvc_data_hash(code_dir, rel.as_posix()) if rel is not None else None
    return DataIdentity(name=str(manifest.get("dataset", raw_dir.name)), digest=digest,
                        source=str(manifest.get("source", raw_dir)), n_cases=len(cases),
                        test_split={d: split_digest(ids) for d, ids in sorted(tests.items())},
                        test_cases={d: sorted(ids) for d, ids in sorted(tests.items())}, dvc_hash=dvc_hash)


def write_identity(folder: str | Path, identity: DataIdentity) -> Path:
    from sasan.atomic import write_json

    path = Path(folder) / IDENTITY_FILE
    write_json(path, identity.to_dict())
    return path


def read_identity(folder: str | Path) -> Optional[DataIdentity]:
    """The identity a stage left in ``folder`` (shards), or None when there is none."""
    path = Path(folder) / IDENTITY_FILE
    if not path.exists():
        return None
    doc = read_json(path, missing="data identity not found", invalid="unreadable data identity")
    try:
        return DataIdentity.from_dict(doc)
    except (ValueError, KeyError, TypeError) as err:
        raise DataError(f"unreadable data identity: {err}", path) from None


def log_lineage(tracker: Any, context: RunContext, data: Optional[DataIdentity],
                dataset_context: str = "training") -> dict[str, str]:
    """Tag ``tracker``'s run with code, orchestration and data lineage and log the data
    set as a run input (name, digest, source). Returns the tags."""
    tags = context.tags()
    if data is not None:
        tags.update(data.tags())
    tracker.set_tags(tags)
    if data is not None:
        source_type = data.source.split("://", 1)[0] if "://" in data.source else "local"
        tracker.log_dataset(data.name, data.digest[:DATASET_DIGEST_CHARS], source_type[:36], data.source, dataset_context,
                            profile={"cases": data.n_cases, "digest": data.digest, "dvc_hash": data.dvc_hash})
    return tags
