"""Ctrl-C (SIGINT) stops a phase as SIGTERM does: the step finishes, the loop checkpoints it
and raises TrainingInterrupted (run status KILLED, exit 130); a second Ctrl-C stops at once.
Outside a phase both signals raise at once, but not while a stop is being cleaned up after
(ending the MLflow run: a second signal there left child runs RUNNING)."""

import os
import pickle
import signal

import pytest
import torch

from sasan.tracking.runs import exit_status
from sasan.train.loop import Phase, TrainingInterrupted, run_phase, stop_signals_raise


def _phase(tmp_path, steps, step_fn, **kw):
    return Phase("p", steps, step_fn, lambda: {}, lambda s: None, tmp_path / "p.pt", checkpoint_every=1000, **kw)


def _signal_at(k, *signums):
    """A step function that sends ``signums`` to this process during step ``k``."""
    def step_fn(step):
        if step == k:
            for signum in signums:
                os.kill(os.getpid(), signum)
        return {"loss": 1.0}
    return step_fn


def _handlers():
    return {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_a_signal_checkpoints_the_step_and_stops(tmp_path, signum, code, caplog):
    before = _handlers()
    with pytest.raises(TrainingInterrupted) as info:
        run_phase(_phase(tmp_path, 10, _signal_at(3, signum)), progress=False, label="v/p")
    err = info.value
    assert err.signum == signum and err.exit_code == code and exit_status(type(err)) == "KILLED"
    assert f"v/p stopped by {signal.Signals(signum).name} at step 4 / 10" in str(err)
    assert torch.load(tmp_path / "p.pt", weights_only=True)["step"] == 4
    assert f"v/p: {signal.Signals(signum).name} at step 4 / 10; checkpoint saved" in caplog.text
    assert _handlers() == before


def test_a_signal_in_the_last_step_still_stops_before_the_next_phase(tmp_path):
    with pytest.raises(TrainingInterrupted, match="at step 5 / 5"):
        run_phase(_phase(tmp_path, 5, _signal_at(4, signal.SIGINT)), progress=False)
    assert torch.load(tmp_path / "p.pt", weights_only=True)["step"] == 5


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    steps = []

    def step_fn(step):
        steps.append(step)
        if step == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)     # raises here, in the step
            steps.append("after")
        return {"loss": 1.0}

    with pytest.raises(TrainingInterrupted, match="at once") as info:
        run_phase(_phase(tmp_path, 10, step_fn), progress=False)
    assert info.value.exit_code == 130 and steps == [0, 1, 2]
    assert not (tmp_path / "p.pt").exists()


def test_stop_signals_raise_sigint_and_ignore_a_second_one_while_stopping():
    before = _handlers()
    ended = []
    with pytest.raises(TrainingInterrupted, match="stopped by SIGINT") as info:
        with stop_signals_raise():
            try:
                os.kill(os.getpid(), signal.SIGINT)
                pytest.fail("SIGINT did not raise")
            except TrainingInterrupted:
                os.kill(os.getpid(), signal.SIGTERM)    # e.g. pool.terminate() while the run ends
                ended.append("KILLED")
                raise
    assert info.value.exit_code == 130 and ended == ["KILLED"]
    assert _handlers() == before


def test_training_interrupted_crosses_processes_with_its_signal():
    err = pickle.loads(pickle.dumps(TrainingInterrupted("stopped", "/x.pt", signum=signal.SIGINT)))
    assert (err.signum, err.exit_code, err.path, str(err)) == (signal.SIGINT, 130, "/x.pt", "/x.pt: stopped")
