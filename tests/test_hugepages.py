"""glibc.malloc.hugetlb for `sasan train`: when the tunable is added, and that the
re-executed process runs the command once (no exec loop)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sasan.hugepages import TUNABLE, tunables_env

LINUX = dict(system="Linux", glibc=(2, 36), thp_mode="madvise")


def test_tunable_added_where_it_applies():
    env = tunables_env({"PATH": "/bin"}, **LINUX)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": TUNABLE}
    env = tunables_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, **LINUX)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{TUNABLE}"   # others kept
    assert tunables_env({}, system="Linux", glibc=(2, 36), thp_mode="always") is not None


@pytest.mark.parametrize("environ, overrides", [
    ({"SASAN_HUGEPAGES": "0"}, {}),                                   # switched off
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, {}),               # the user's choice stands
    ({}, {"system": "Darwin"}),
    ({}, {"glibc": (2, 31)}),                                         # tunable unknown there
    ({}, {"thp_mode": "never"}),
    ({}, {"thp_mode": ""}),
])
def test_nothing_changes_where_it_does_not_apply(environ, overrides):
    assert tunables_env(environ, **{**LINUX, **overrides}) is None


def test_train_reexecs_once_and_runs_the_command():
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "SASAN_HUGEPAGES")}
    probe = ("import os, sys; from sasan.cli import main; "
             "print('TUNABLES', os.environ.get('GLIBC_TUNABLES')); sys.stdout.flush(); "
             "sys.argv = ['sasan', 'train', '--help']; sys.exit(main())")
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    printed = [line for line in res.stdout.splitlines() if line.startswith("TUNABLES")]
    assert "usage: sasan train" in res.stdout
    expected = tunables_env(env)
    if expected is None:                      # not applicable on this machine: no re-exec
        assert printed == ["TUNABLES None"]
    else:                                     # once as started, once re-executed with it
        assert printed == ["TUNABLES None", f"TUNABLES {expected['GLIBC_TUNABLES']}"]
