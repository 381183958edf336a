"""The orbit Trainer's log line: the ETA leaves out the first loop."""

import types

from trainer import trainer as trainer_lib


def test_eta_is_measured_after_the_first_loop():
    # The first loop (tracing) took 100 s for 10 steps; later loops run at
    # 1 step/s. The ETA must use the latter: 80 steps left -> 80 s.
    state = types.SimpleNamespace(_timing_origin=None, _total_steps=100)
    first = trainer_lib.Trainer._eta(state, step=10, now=100.0)
    assert "next loop" in first
    assert trainer_lib.Trainer._eta(state, step=20, now=110.0) == "1m20s"
    assert trainer_lib.Trainer._eta(state, step=60, now=150.0) == "0m40s"


def test_format_duration():
    assert trainer_lib.format_duration(3725) == "1h02m05s"
    assert trainer_lib.format_duration(59.6) == "1m00s"
    assert trainer_lib.format_duration(-3) == "0m00s"
