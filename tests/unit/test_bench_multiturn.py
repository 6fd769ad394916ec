"""bench.multiturn's arithmetic on made-up request results: per-turn rows, hit rate, reused share."""

from __future__ import annotations

from bench.client import RequestResult
from bench.multiturn import markdown, summarize_turns, user_message


def _result(start: float, first: float, prompt: int, cached: int | None) -> RequestResult:
    return RequestResult(t_start=start, t_end=first + 1, chunk_times=[first], prompt_tokens=prompt,
                         cached_tokens=cached, done=True)


def test_turns_hit_rate_and_reused_share():
    conversations = [[_result(0, 0.5, 100, 0), _result(2, 2.1, 300, 100), _result(4, 4.1, 500, 0)],
                     [_result(0, 0.7, 100, 0), _result(2, 2.3, 300, 100)]]
    summary = summarize_turns(2, conversations)
    assert [row["requests"] for row in summary["turns"]] == [2, 2, 1]
    assert summary["turns"][0]["ttft_ms_p50"] == 600.0 and summary["turns"][1]["cached_tokens_p50"] == 100
    assert summary["hit_rate"] == 2 / 3  # later turns that reused something
    assert summary["reused_share"] == 200 / 1300
    table = markdown({"runs": [summary], "reuse_check": None}, {"runs": [summary]})
    assert "| 2 | 2 | 300 | 100 | 200.0 | 200.0 | 1.00 |" in table


def test_a_server_that_reports_no_cached_tokens_has_no_hit_rate():
    summary = summarize_turns(1, [[_result(0, 1, 100, None), _result(2, 3, 200, None)]])
    assert summary["hit_rate"] is None and summary["turns"][1]["cached_tokens_p50"] is None


def test_conversations_get_different_messages():
    assert user_message(0, 0) != user_message(1, 0) and user_message(0, 0) != user_message(0, 1)
