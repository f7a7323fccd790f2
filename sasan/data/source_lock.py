"""The identity of a data set source, for DVC.

``dvc.yaml``'s ingest stage cannot list ``ingest.source`` as a dependency: DVC has no
``dvc://`` URLs (``dvc status`` fails with "Unsupported URL type") and an ``s3://`` dependency
needs DVC's own S3 remote settings. So the ``source`` stage (always run, cheap: it reads no
data) writes this fingerprint to ``data/source.json`` and ingest depends on that file: ingest
re-runs exactly when the source's content changes, whatever kind of source it is.

* local folder or archive: its path, and every file's relative path, size and MD5
* ``s3://BUCKET/PREFIX``: every object's key, size and ETag (one listing, no download)
* ``dvc://REPO@REV/PATH``: the commit REV resolves to (a moved branch or tag shows), and the
  DVC hash of PATH at that commit (no download)

Run as ``python -m sasan.data.source_lock SOURCE OUT``.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Any, Optional

from sasan.atomic import write_json
from sasan.data.sources import parse_source
from sasan.errors import DataError, SasanError


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _local(path: Path) -> dict[str, Any]:
    if path.is_file():
        return {"files": {path.name: {"size": path.stat().st_size, "md5": _md5(path)}}}
    if not path.is_dir():
        raise DataError("source not found (a folder, an archive, s3://... or dvc://...)", path)
    files = {p.relative_to(path).as_posix(): {"size": p.stat().st_size, "md5": _md5(p)}
             for p in sorted(path.rglob("*")) if p.is_file()}
    return {"files": files}


def _s3(bucket: str, prefix: str) -> dict[str, Any]:
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    objects = {}
    try:
        client = boto3.session.Session().client("s3")
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                key = obj["Key"]
                if key.endswith("/") or (prefix and key != prefix and not key.startswith(prefix.rstrip("/") + "/")):
                    continue
                objects[key] = {"size": obj["Size"], "etag": obj["ETag"].strip('"')}
    except (BotoCoreError, ClientError) as err:
        raise DataError(f"S3 listing failed: {err}", f"s3://{bucket}/{prefix}") from None
    if not objects:
        raise DataError("no objects under this S3 prefix", f"s3://{bucket}/{prefix}")
    return {"objects": objects}


def _dvc(repo: str, rev: Optional[str], path: str) -> dict[str, Any]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from scmrepo.exceptions import SCMError

    try:
        with Repo.open(repo, rev=rev) as opened:
            commit = opened.get_rev()
            info = opened.dvcfs.info(path)
    except (DvcException, SCMError, FileNotFoundError) as err:
        raise DataError(f"cannot resolve the DVC source: {err}", f"dvc://{repo}@{rev}/{path}") from None
    return {"commit": commit, "md5": info.get("md5") or (info.get("dvc_info") or {}).get("md5")}


def source_lock(source: str) -> dict[str, Any]:
    """The fingerprint of ``source`` (see the module docstring)."""
    src = parse_source(source)
    if src.kind == "s3":
        return {"source": source, "kind": "s3", **_s3(src.location, src.path)}
    if src.kind == "dvc":
        return {"source": source, "kind": "dvc", **_dvc(src.location, src.rev, src.path)}
    return {"source": source, "kind": "local", **_local(Path(src.location))}


def write_source_lock(source: str, out: str | Path) -> dict[str, Any]:
    lock = source_lock(source)
    write_json(out, lock)
    return lock


def main(argv: Optional[list[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m sasan.data.source_lock SOURCE OUT", file=sys.stderr)
        return 2
    try:
        write_source_lock(args[0], args[1])
    except SasanError as err:
        print(f"source_lock: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
