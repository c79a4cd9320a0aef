"""Step timing of the training loop (the loop itself runs in test_runs.py)."""

import pytest

from deemo_jax.train import trainer


def test_step_timer_averages_over_a_window_and_times_the_compile_step_alone(monkeypatch):
    clock = iter([0.0, 30.0, 30.6, 30.6, 31.2, 31.5])  # start, compile step, 0.6 s, inline 0 s, 0.6 s, 0.3 s
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: next(clock))
    timer = trainer._StepTimer(window=3)
    timer.start()
    assert timer.lap(100) == pytest.approx((30.0, 100 / 30.0))  # compilation is not averaged in
    assert timer.lap(100) == pytest.approx((0.6, 100 / 0.6))
    # A step whose metrics arrive right after the previous one reads 0 s alone; the window hides that.
    assert timer.lap(100) == pytest.approx((0.3, 200 / 0.6))
    assert timer.lap(100) == pytest.approx((0.4, 300 / 1.2))
    assert timer.lap(50) == pytest.approx((0.3, 250 / 0.9))  # the first 0.6 s step left the window
