"""Log formats: text with key=value fields, or one JSON object per line."""

from __future__ import annotations

import json
import logging

from app.logs import TEXT_FORMAT, JsonFormatter, TextFormatter


def log_record(fields: dict | None = None, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("bad")
        except ValueError:
            import sys
            exc_info = sys.exc_info()
    record = logging.LogRecord("tokenwire.request", logging.INFO, __file__, 1, "request %s", ("done",), exc_info)
    if fields is not None:
        record.fields = fields
    return record


def test_json_lines_merge_the_fields():
    line = JsonFormatter().format(log_record({"request_id": "abc", "status": 200, "ttft_s": 0.5}))
    body = json.loads(line)
    assert "\n" not in line
    assert body["message"] == "request done" and body["level"] == "info" and body["logger"] == "tokenwire.request"
    assert (body["request_id"], body["status"], body["ttft_s"]) == ("abc", 200, 0.5)
    assert body["ts"].endswith("+00:00")


def test_json_lines_keep_exceptions_on_one_line():
    line = JsonFormatter().format(log_record(exc=True))
    assert "\n" not in line and "ValueError: bad" in json.loads(line)["exc_info"]


def test_text_appends_fields_as_key_value_pairs():
    line = TextFormatter(TEXT_FORMAT).format(log_record({"request_id": "abc", "status": 200, "model": "a b",
                                                         "prompt": ["x"]}))
    assert line.endswith('request done request_id=abc status=200 model="a b" prompt=["x"]')


def test_text_without_fields_is_the_plain_format():
    assert TextFormatter(TEXT_FORMAT).format(log_record()).endswith("tokenwire.request: request done")
