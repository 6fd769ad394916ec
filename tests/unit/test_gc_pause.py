"""`python -m app` pauses the garbage collector for start-up; the server turns it back on once it
listens, and sweeps and freezes the start-up heap a few seconds later."""

from __future__ import annotations

import gc
import os
import subprocess
import sys

from app import lifecycle


class RecordingLoop:
    def __init__(self) -> None:
        self.scheduled: list[tuple[float, object]] = []

    def call_later(self, delay: float, callback) -> None:
        self.scheduled.append((delay, callback))


def test_a_paused_collector_comes_back_and_the_sweep_is_scheduled():
    loop = RecordingLoop()
    gc.disable()
    try:
        lifecycle.resume_garbage_collection(loop)
        assert gc.isenabled()
        [(delay, callback)] = loop.scheduled
        assert delay == lifecycle.FREEZE_AFTER_S
        callback()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.enable()


def test_a_collector_nobody_paused_is_left_alone():
    loop = RecordingLoop()
    lifecycle.resume_garbage_collection(loop)
    assert gc.isenabled() and loop.scheduled == []


def test_python_m_app_pauses_the_collector_before_importing_torch():
    script = ("import sys; import app.__main__; import gc, os; "
              "print(gc.isenabled(), 'torch' in sys.modules, os.environ['GOMP_SPINCOUNT'])")
    env = {key: value for key, value in os.environ.items() if key != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "1000"]
