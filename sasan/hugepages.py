"""Transparent huge pages for the training process's heap (Linux, glibc >= 2.35).

A CPU training step at 256x256 allocates and frees activations of up to 300 MB each, and
the memory-bound passes over them (Winograd transforms, norms, activations) walk gigabytes
through 4 KB pages: many TLB misses. Where the kernel's transparent huge pages are in
``madvise`` mode (a common default), glibc's malloc asks for 2 MB pages once the tunable
``glibc.malloc.hugetlb=1`` is set; measured: a joint step 5% faster (bench/train_step.py).

glibc reads tunables at process start only, so ``sasan train`` re-executes itself once
with the tunable added (same PID, same arguments). ``SASAN_HUGEPAGES=0`` turns this off.
Nothing here imports torch: it runs before anything heavy is loaded.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path
from typing import Mapping, Optional

TUNABLE = "glibc.malloc.hugetlb=1"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _thp_mode() -> str:
    """always | madvise | never ('' when unknown)."""
    try:
        text = THP_MODE.read_text()
    except OSError:
        return ""
    return text[text.find("[") + 1:text.find("]")] if "[" in text else ""


def _glibc() -> tuple[int, int]:
    name, version = platform.libc_ver()
    if name != "glibc":
        return (0, 0)
    try:
        major, minor = version.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def tunables_env(environ: Mapping[str, str], system: Optional[str] = None,
                 glibc: Optional[tuple[int, int]] = None, thp_mode: Optional[str] = None) -> Optional[dict]:
    """``environ`` with glibc.malloc.hugetlb=1 added to GLIBC_TUNABLES, or None where it
    would change nothing (not Linux, glibc older than 2.35, THP off, the tunable already
    set, or SASAN_HUGEPAGES=0). The last three arguments default to this machine's."""
    if environ.get("SASAN_HUGEPAGES", "1").lower() in ("0", "false", "no", "off"):
        return None
    if (system or platform.system()) != "Linux" or (glibc or _glibc()) < (2, 35):
        return None
    if (thp_mode if thp_mode is not None else _thp_mode()) not in ("always", "madvise"):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current:
        return None
    env = dict(environ)
    env["GLIBC_TUNABLES"] = f"{current}:{TUNABLE}" if current else TUNABLE
    return env


def reexec_with_hugepages() -> None:
    """Replace this process by itself with the tunable set, where it applies (else return)."""
    env = tunables_env(os.environ)
    argv = getattr(sys, "orig_argv", None)
    if env is None or not argv:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)
