"""The suite runs PyTorch on one thread (set here, once), and a guard: a test must leave the
process as it found it.

Process-wide state that one test changes and does not put back shows up as a failure in some
later, unrelated test (kfp.local's threads once left ``builtins.print`` indenting, and a
bench test three directories away failed on its captured output). The guard fails the test
that leaked, naming what it changed."""

from __future__ import annotations

import builtins
import os

import pytest
import torch

# One thread for every test: the networks here are tiny (threads only add overhead), and float
# results do not depend on how many cores the machine running the suite has. A test that needs
# another count sets it and puts it back (the guard below checks).
torch.set_num_threads(1)


def _process_state() -> dict[str, object]:
    return {
        "builtins.print": builtins.print,
        "working directory": os.getcwd(),
        "torch threads": torch.get_num_threads(),
        "torch default dtype": torch.get_default_dtype(),
        "torch grad mode": torch.is_grad_enabled(),
        "torch deterministic algorithms": torch.are_deterministic_algorithms_enabled(),
    }


@pytest.fixture(autouse=True)
def _leaves_the_process_as_it_found_it():
    before = _process_state()
    yield
    after = _process_state()
    changed = [f"{k}: {before[k]!r} -> {after[k]!r}" for k in before if after[k] != before[k]]
    assert not changed, "the test changed process-wide state and left it: " + "; ".join(changed)
