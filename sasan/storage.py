"""Files and folders in object storage (``s3://bucket/prefix``) or on a shared volume.

Two uses:

- Checkpoints that outlive a pod: ``sasan train --checkpoint-uri s3://...`` downloads what is
  there before training (:func:`download_if_exists`) and uploads each checkpoint after rank 0
  saves it (:func:`upload`), so a preempted pod resumes where it stopped.
- Big data by reference between pipeline steps: a step writes its output folder to
  ``DATA_ROOT/<run>/<step>`` (:func:`publish`) and leaves only a small reference file in its
  Kubeflow artifact; the next step resolves it (:func:`localize`). With no data root the
  artifact folder itself holds the data (what ``kfp.local`` uses).

boto3 reads endpoint (``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``), region and credentials
from the standard environment; nothing here takes them as parameters. Folders move with
``TRANSFER_THREADS`` files in flight at once (one client, which is thread-safe; each file
itself in multipart chunks by s3transfer): a shard folder is many files, and one at a time
leaves the link idle between requests.
"""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Optional

from sasan.errors import DataError

log = logging.getLogger(__name__)

REF_FILE = "sasan-data-ref.json"
TRANSFER_THREADS = 16


def is_s3_uri(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ("bucket", "a/b")."""
    if not is_s3_uri(uri):
        raise DataError("not an s3:// URI", uri)
    bucket, _, key = uri[len("s3://"):].partition("/")
    if not bucket:
        raise DataError("S3 URI without a bucket", uri)
    return bucket, key.strip("/")


def join_uri(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts if p.strip("/"))])


def _client():
    import boto3
    from botocore.config import Config

    # a fresh session resolves the environment now (the default session caches it); enough
    # pooled connections for every transfer thread
    return boto3.session.Session().client("s3", config=Config(max_pool_connections=TRANSFER_THREADS * 2))


def _parallel(fn, items: list) -> None:
    """``fn(item)`` for every item, ``TRANSFER_THREADS`` at a time; the first error is raised
    once every started transfer has ended."""
    if len(items) <= 1:
        for item in items:
            fn(item)
        return
    with ThreadPoolExecutor(max_workers=min(TRANSFER_THREADS, len(items)), thread_name_prefix="s3") as pool:
        for future in [pool.submit(fn, item) for item in items]:
            future.result()


def _errors() -> tuple[type[BaseException], ...]:
    from boto3.exceptions import Boto3Error          # S3UploadFailedError wraps ClientError
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError, Boto3Error


def _keys(client, bucket: str, prefix: str) -> list[str]:
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            # "ckpt" must not match "ckpt2/..."; folder markers are skipped
            if key.endswith("/") or (prefix and key != prefix and not key.startswith(prefix + "/")):
                continue
            keys.append(key)
    return sorted(keys)


def download_if_exists(s3_uri: str, local: str | Path) -> int:
    """Copy the object ``s3_uri`` to the file ``local``, or every object under the prefix
    ``s3_uri`` into the folder ``local`` (keeping relative paths), ``TRANSFER_THREADS`` at a
    time. Returns the number of files copied; 0 when nothing is there (a first run). Used for
    checkpoints, pipeline data and ``sasan ingest s3://...``."""
    bucket, prefix = split_s3_uri(s3_uri)
    local = Path(local)
    try:
        client = _client()
        keys = _keys(client, bucket, prefix)
        pairs = []
        for key in keys:
            if key == prefix:                      # a single object
                target = local
            else:
                rel = PurePosixPath(key[len(prefix):].lstrip("/")) if prefix else PurePosixPath(key)
                if ".." in rel.parts or rel.is_absolute():
                    raise DataError(f"object key {key!r} would escape {local}", s3_uri)
                target = local / Path(*rel.parts)
            pairs.append((key, target))

        def fetch(pair) -> None:
            key, target = pair
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".part")
            client.download_file(bucket, key, str(tmp))
            tmp.replace(target)                    # never a half-downloaded checkpoint

        _parallel(fetch, pairs)
    except _errors() as err:     # Boto3Error: RetriesExceededError, S3TransferFailedError
        raise DataError(f"S3 download failed: {type(err).__name__}: {err}", s3_uri) from None
    except OSError as err:       # disk full, permissions where the files go
        raise DataError(f"S3 download failed writing {err.filename or local}: {err.strerror or err}", s3_uri) from None
    if keys:
        log.info("downloaded %d file(s) from %s to %s", len(keys), s3_uri, local)
    return len(keys)


def upload(local: str | Path, s3_uri: str) -> int:
    """Upload the file ``local`` to the object ``s3_uri``, or every file under the folder
    ``local`` to ``s3_uri/<relative path>``. Returns the number of files uploaded."""
    local = Path(local)
    bucket, prefix = split_s3_uri(s3_uri)
    if local.is_file():
        pairs = [(local, prefix)]
    elif local.is_dir():
        pairs = [(p, "/".join(filter(None, [prefix, p.relative_to(local).as_posix()])))
                 for p in sorted(local.rglob("*")) if p.is_file()]
    else:
        raise DataError("nothing to upload", local)
    try:
        client = _client()
        _parallel(lambda pair: client.upload_file(str(pair[0]), bucket, pair[1]), pairs)
    except _errors() as err:
        raise DataError(f"S3 upload failed: {err}", s3_uri) from None
    log.debug("uploaded %d file(s) from %s to %s", len(pairs), local, s3_uri)
    return len(pairs)


# ------------------------------------------------------------------ data by reference
def output_name(step: str, artifact_uri: str) -> str:
    """``<step>-<16 hex>``: a folder name unique to one execution's output artifact."""
    import hashlib

    return f"{step}-{hashlib.sha256(artifact_uri.encode()).hexdigest()[:16]}"


def publish(local_dir: str | Path, data_root: str, name: str, artifact_dir: str | Path) -> str:
    """Make the folder ``local_dir`` the output of a step.

    ``data_root`` empty: copy it into ``artifact_dir`` (the Kubeflow artifact holds the data).
    ``data_root`` = ``s3://...``: upload to ``data_root/name``. A local path (a mounted volume):
    copy to ``data_root/name``. In the last two cases ``artifact_dir`` receives only a reference
    file. Returns where the data now lives."""
    local_dir, artifact_dir = Path(local_dir), Path(artifact_dir)
    if not data_root:
        if local_dir.resolve() != artifact_dir.resolve():
            shutil.copytree(local_dir, artifact_dir, dirs_exist_ok=True)
        return str(artifact_dir)
    location = join_uri(data_root, name)
    if is_s3_uri(data_root):
        upload(local_dir, location)
    elif Path(location).resolve() != local_dir.resolve():
        shutil.copytree(local_dir, location, dirs_exist_ok=True)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    (artifact_dir / REF_FILE).write_text(json.dumps({"uri": location}))
    return location


def reference(artifact_dir: str | Path) -> Optional[str]:
    """The location a step's artifact refers to, or None when the artifact holds the data."""
    ref = Path(artifact_dir) / REF_FILE
    return json.loads(ref.read_text())["uri"] if ref.is_file() else None


def localize(artifact_dir: str | Path, scratch: str | Path) -> Path:
    """A local folder with the data of an artifact written by :func:`publish`: the artifact
    itself, the referenced folder on a mounted volume, or an S3 copy downloaded into
    ``scratch``."""
    uri = reference(artifact_dir)
    if uri is None:
        return Path(artifact_dir)
    if is_s3_uri(uri):
        if download_if_exists(uri, scratch) == 0:
            raise DataError("referenced data is gone (empty S3 prefix)", uri)
        return Path(scratch)
    if not Path(uri).is_dir():
        raise DataError("referenced data folder not found (is the volume mounted?)", uri)
    return Path(uri)
