"""Chores: start-up work the model thread does after the engine is ready, a slice between steps.

Building the token byte table and (on torch's forward) warming every batch size's kernels would
delay the first answer; neither changes a number a request gets (logprobs wait for the table), so
the model thread runs them in slices of a few to a hundred milliseconds, one slice per loop turn,
whether or not requests are running. A chore that fails is logged and dropped: the engine serves on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Slices = Generator[None, None, object]  # one slice per next(); the value it returns is the result


def run_to_end(slices: Slices) -> object:
    """Every slice of a job at once; its result."""
    while True:
        try:
            next(slices)
        except StopIteration as done:
            return done.value


@dataclass
class Chore:
    name: str  # for the log: "what failed", "what took how long"
    slices: Slices
    on_done: Callable[[object], None] = lambda result: None
    on_failed: Callable[[Exception], None] = lambda error: None
    spent_s: float = field(default=0.0, init=False)  # time inside its slices so far

    def run_slice(self) -> bool:
        """Run one slice; True once the chore is over (done, its result handed on, or failed)."""
        started = time.perf_counter()
        try:
            try:
                next(self.slices)
            except StopIteration as done:
                self.spent_s += time.perf_counter() - started
                log.info("%s done in %.2fs of slices", self.name, self.spent_s)
                self.on_done(done.value)
                return True
        except Exception as exc:  # noqa: BLE001 - a slice or on_done: the engine serves without the chore
            log.warning("%s failed; serving without it", self.name, exc_info=True)
            self._report_failure(exc)
            return True
        self.spent_s += time.perf_counter() - started
        return False

    def _report_failure(self, error: Exception) -> None:
        try:
            self.on_failed(error)
        except Exception:  # noqa: BLE001 - the model thread must outlive a broken callback
            log.exception("%s: handling its failure failed too", self.name)
