"""Readers of the git commit of the code and the DVC hash of the data (used by
:mod:`sasan.tracking.lineage`).

Both are read, never computed from scratch: the commit from ``git rev-parse``, the data
hash from ``dvc.lock`` (a pipeline output) or a ``<path>.dvc`` file (a ``dvc add``-ed
folder). Hashing a data set again would take minutes and could disagree with DVC's own
definition of a directory hash. Anything unknown is ``None``, never an invented value."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any, Optional

import yaml

log = logging.getLogger(__name__)

GIT_TIMEOUT_S = 10


def git_commit(repo: str | Path) -> Optional[str]:
    """The full SHA of ``HEAD`` in ``repo``, or None (not a git checkout, git missing)."""
    out = _git(repo, "rev-parse", "--verify", "HEAD")
    return out if out and len(out) == 40 else None


def git_dirty(repo: str | Path) -> Optional[bool]:
    """True when tracked files differ from ``HEAD`` (the commit alone does not describe the
    code that ran); None when unknown."""
    out = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return None if out is None else bool(out)


def dvc_data_hash(repo: str | Path, path: str) -> Optional[str]:
    """The md5 DVC recorded for ``path`` (relative to ``repo``): from an output in
    ``dvc.lock``, else from ``<path>.dvc``. Directory hashes end in ``.dir``."""
    repo = Path(repo)
    wanted = _norm(path)
    lock = _read_yaml(repo / "dvc.lock")
    for stage in (lock.get("stages") or {}).values() if isinstance(lock, dict) else ():
        for out in (stage or {}).get("outs") or ():
            if isinstance(out, dict) and _norm(str(out.get("path", ""))) == wanted and out.get("md5"):
                return str(out["md5"])
    dvc_file = _read_yaml(repo / f"{wanted}.dvc")
    for out in (dvc_file.get("outs") or ()) if isinstance(dvc_file, dict) else ():
        if isinstance(out, dict) and out.get("md5"):
            return str(out["md5"])
    log.debug("no DVC hash recorded for %s in %s", path, repo)
    return None


def _git(repo: str | Path, *args: str) -> Optional[str]:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=GIT_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.debug("git %s failed in %s: %s", args[0], repo, err)
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _norm(path: str) -> str:
    # dvc.lock paths are POSIX and relative; "./data/x/" and "data/x" name the same output
    parts = [p for p in PurePosixPath(path.replace("\\", "/")).parts if p not in (".", "")]
    return "/".join(parts)


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as err:
        log.warning("%s: unreadable, ignored for provenance (%s)", path, err)
        return {}
