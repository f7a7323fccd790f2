"""Safe extraction of .zip / .tar / .tar.gz / .tgz / .tar.bz2 / .tar.xz data set archives.

Every member is checked before anything is written: absolute names, ``..`` components,
links and device files are refused (a member that would land outside the target folder is
a DataError naming the archive and the member), so a hostile archive cannot write elsewhere.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from sasan.errors import DataError

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES: tuple[str, ...] = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def is_archive(path: str | Path) -> bool:
    name = Path(path).name.lower()
    return any(name.endswith(s) for s in ARCHIVE_SUFFIXES)


def _safe_member(name: str, dest: Path, archive: Path) -> Path:
    """Where ``name`` lands under ``dest``; DataError if it would escape it."""
    pure = PurePosixPath(name.replace("\\", "/"))
    if pure.is_absolute() or (pure.parts and ":" in pure.parts[0]) or ".." in pure.parts:
        raise DataError(f"archive member {name!r} would escape the target folder", archive)
    target = (dest / Path(*pure.parts)).resolve() if pure.parts else dest.resolve()
    if not target.is_relative_to(dest.resolve()):
        raise DataError(f"archive member {name!r} would escape the target folder", archive)
    return target


def extract_archive(archive: str | Path, dest: str | Path) -> Path:
    """Extract ``archive`` into the (new or empty) folder ``dest``; return the data root:
    ``dest`` itself, or its only sub-folder when the archive wraps everything in one."""
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError("archive not found", archive)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.lower().endswith(".zip"):
            _extract_zip(archive, dest)
        else:
            _extract_tar(archive, dest)
    except DataError:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as err:
        shutil.rmtree(dest, ignore_errors=True)
        raise DataError(f"cannot read archive: {err}", archive) from None
    entries = [p for p in dest.iterdir() if not p.name.startswith((".", "__MACOSX"))]
    root = entries[0] if len(entries) == 1 and entries[0].is_dir() else dest
    log.info("extracted %s into %s", archive, root)
    return root


def _extract_zip(archive: Path, dest: Path) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _safe_member(info.filename, dest, archive)
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:  # a symlink stored by Info-ZIP
                raise DataError(f"archive member {info.filename!r} is a symbolic link", archive)
        bad = zf.testzip()
        if bad is not None:
            raise DataError(f"archive member {bad!r} is corrupt (CRC mismatch)", archive)
        for info in members:
            zf.extract(info, dest)


def _extract_tar(archive: Path, dest: Path) -> None:
    with tarfile.open(archive, mode="r:*") as tf:
        members = tf.getmembers()
        for m in members:
            _safe_member(m.name, dest, archive)
            if m.issym() or m.islnk():
                raise DataError(f"archive member {m.name!r} is a link", archive)
            if not (m.isfile() or m.isdir()):
                raise DataError(f"archive member {m.name!r} is not a regular file or folder", archive)
        # The "data" filter re-checks the same rules inside tarfile (defence in depth).
        tf.extractall(dest, members=members, filter="data")
