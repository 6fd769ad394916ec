"""Chores run a slice per call, hand their result on once, and a failing one is logged and dropped."""

from __future__ import annotations

import logging

from app.engine.scheduling.chores import Chore, run_to_end


def _counting(slices: int, result: object = "done"):
    for _ in range(slices):
        yield
    return result


def test_a_chore_takes_one_slice_per_call_and_hands_its_result_on_once():
    results: list[object] = []
    chore = Chore("count", _counting(3, 42), results.append)
    assert [chore.run_slice() for _ in range(4)] == [False, False, False, True]
    assert results == [42] and chore.spent_s >= 0


def test_a_failing_chore_is_over_logged_and_reported(caplog):
    def broken():
        yield
        raise RuntimeError("no kernel for this shape")

    errors: list[Exception] = []
    chore = Chore("warming", broken(), on_failed=errors.append)
    with caplog.at_level(logging.WARNING):
        assert chore.run_slice() is False
        assert chore.run_slice() is True
    assert isinstance(errors[0], RuntimeError) and "warming failed" in caplog.text


def test_run_to_end_returns_the_result():
    assert run_to_end(_counting(5, "all")) == "all"


def test_a_result_handler_that_raises_does_not_escape(caplog):
    def broken_handler(result):
        raise ValueError("cannot publish")

    chore = Chore("publish", _counting(0), broken_handler)
    assert chore.run_slice() is True and "publish failed" in caplog.text
