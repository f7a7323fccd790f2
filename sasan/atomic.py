"""Atomic file writes: write to a temporary sibling, fsync, then rename over the target.
A crash leaves either the old file or none, never half of one. And the JSON reader every
stage uses (:func:`read_json`), whose errors name the file."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    ``suffix`` keeps an extension on the temporary name for writers that infer the format
    from it (e.g. ``.nii.gz`` for nibabel, ``.png`` for matplotlib)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or "".join(target.suffixes),
                               dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; give the file normal permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary directory next to ``target`` (``.NAME.tmp-*``); on success replace
    ``target`` by it (the old one moved aside to ``.NAME.old`` for the swap). What a killed
    run left is undone first (:func:`recover_dir`): one writer per target at a time."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())   # mkdtemp makes it private; outputs are read by other users
    try:
        yield tmp
        if not target.exists():
            os.replace(tmp, target)
            return
        old = target.with_name(f".{target.name}.old")
        try:
            os.replace(target, old)
        except OSError as err:           # e.g. target is a mount point: swap its entries instead
            log.warning("cannot move %s aside (%s): replacing its entries one by one (not atomic)", target, err)
            _swap_entries(tmp, target)
            return
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(target: str | Path) -> None:
    """Undo what a killed :func:`atomic_dir` left next to ``target``: its temporary folders,
    and (killed between the swap's two renames) the previous ``target`` moved aside."""
    target = Path(target)
    old = target.with_name(f".{target.name}.old")
    if old.is_dir():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            log.warning("restoring %s, moved aside by an interrupted run", target)
            os.replace(old, target)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        if stale.is_dir():
            log.info("removing leftover of an interrupted run: %s", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _swap_entries(src: Path, target: Path) -> None:
    for entry in list(target.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for entry in list(src.iterdir()):
        os.replace(entry, target / entry.name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | Path, *, missing: str, invalid: str = "not valid JSON", error: Any = None) -> Any:
    """The JSON document at ``path``. A missing file raises ``error(missing, path)``; an
    unreadable one (a folder, no permission, not UTF-8, not JSON) ``error(f"{invalid}: ...")``.
    ``error``: a :class:`sasan.errors.SasanError` class (default DataError)."""
    from sasan.errors import DataError

    error = error or DataError
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise error(missing, path) from None
    except OSError as err:
        raise error(f"{invalid}: {err.strerror or err}", path) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise error(f"{invalid}: {err}", path) from None


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in summaries; keep JSON writing forgiving for those only
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
