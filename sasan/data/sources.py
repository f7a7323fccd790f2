"""Where a data set comes from: a local folder or archive, an S3 prefix, or a DVC-tracked path.

Source syntax (one string, as given to ``sasan ingest``):

* ``PATH``                      a local folder, or a .zip/.tar(.gz) archive
* ``s3://BUCKET/PREFIX``        every object under PREFIX (or one archive object); boto3 takes
                                endpoint, region and credentials from its standard environment
                                (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_PROFILE``...)
* ``dvc://REPO@REV/PATH``       PATH tracked by DVC (or git) in the git repository REPO (a URL
                                or local path) at revision REV (tag, commit or branch without
                                '/'); the data comes from the repository's DVC remote or cache

Remote sources are downloaded into a caller-owned scratch folder; archives are extracted
there with :func:`sasan.data.archive.extract_archive`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from sasan.data.archive import extract_archive, is_archive
from sasan.errors import DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    kind: str            # "local" | "s3" | "dvc"
    location: str        # local path, bucket, or repository
    path: str = ""       # S3 prefix or path inside the DVC repository
    rev: str | None = None


def parse_source(source: str) -> Source:
    """Parse a source string (see the module docstring); DataError on a malformed one."""
    if source.startswith("s3://"):
        bucket, _, prefix = source[5:].partition("/")
        if not bucket:
            raise DataError("s3 source needs a bucket: s3://BUCKET/PREFIX", source)
        return Source("s3", bucket, prefix.strip("/"))
    if source.startswith("dvc://"):
        spec = source[6:]
        repo, at, rest = spec.rpartition("@")
        rev, slash, path = rest.partition("/")
        if not at or not repo or not rev or not slash or not path.strip("/"):
            raise DataError("dvc source must be dvc://REPO@REV/PATH (e.g. dvc:///srv/repo@v1/data/raw)", source)
        return Source("dvc", repo, path.strip("/"), rev)
    if "://" in source:
        raise DataError("unsupported source scheme (use a local path, s3://BUCKET/PREFIX or dvc://REPO@REV/PATH)",
                        source)
    return Source("local", source)


def fetch_source(source: str, scratch: str | Path) -> Path:
    """A local folder holding the data of ``source``; downloads/extracts into ``scratch``."""
    src = parse_source(source)
    scratch = Path(scratch)
    if src.kind == "local":
        path = Path(src.location)
        if not path.exists():
            raise DataError("source not found", path)
        if path.is_file():
            if not is_archive(path):
                raise DataError("source file is not a folder or a .zip/.tar(.gz) archive", path)
            return extract_archive(path, scratch / "extracted")
        return path
    if src.kind == "s3":
        local = download_s3(src.location, src.path, scratch / "download")
    else:
        local = download_dvc(src.location, src.rev or "", src.path, scratch / "download")
    if local.is_file():
        if not is_archive(local):
            raise DataError("source object is not a folder or a .zip/.tar(.gz) archive", source)
        return extract_archive(local, scratch / "extracted")
    return local


def download_s3(bucket: str, prefix: str, dest: Path) -> Path:
    """Download every object under ``prefix`` into the folder ``dest/<prefix's last part>``, or
    the single object ``prefix`` to the file of that name; returns that path
    (:func:`sasan.storage.download_if_exists`: files in parallel, none half-written)."""
    from sasan import storage

    where = f"s3://{bucket}/{prefix}"
    local = dest / PurePosixPath(prefix).name
    if storage.download_if_exists(where, local) == 0:
        raise DataError("no objects under this S3 prefix", where)
    return local


def download_dvc(repo: str, rev: str, path: str, dest: Path) -> Path:
    """Download ``path`` of DVC/git repository ``repo`` at ``rev`` into ``dest``."""
    from dvc.api import DVCFileSystem

    where = f"dvc://{repo}@{rev}/{path}"
    try:
        fs = DVCFileSystem(repo, rev=rev)
        if not fs.exists(path):
            raise DataError(f"path {path!r} does not exist in the repository at {rev}", where)
        target = dest / PurePosixPath(path).name
        dest.mkdir(parents=True, exist_ok=True)
        if fs.isdir(path):
            fs.get(path, str(target), recursive=True)
        else:
            fs.get_file(path, str(target))
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - DVC/scmrepo raise many unrelated types; report them all as one line
        raise DataError(f"DVC download failed: {type(err).__name__}: {err}", where) from None
    log.info("downloaded %s", where)
    return target
