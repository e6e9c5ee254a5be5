"""JSON log lines: valid JSON with the time in UTC, the request id of the context (or of the record),
extra fields beside the standard keys (never over them), the traceback; request ids kept when
sane, made otherwise; configure is idempotent and does not propagate."""
from __future__ import annotations

import io
import json
import logging
import re
import threading
from pathlib import Path

import pytest

from millrace.serving.errors import ServingError
from millrace.serving.logs import JsonFormatter, configure, new_request_id, request_id


@pytest.fixture
def capture():
    stream = io.StringIO()
    logger = configure("DEBUG", stream)
    yield logger, stream
    for handler in _ours(logger):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def _ours(logger: logging.Logger) -> list[logging.Handler]:
    # pytest attaches its own capture handlers to non-propagating loggers: count only the JSON ones.
    return [h for h in logger.handlers if isinstance(h.formatter, JsonFormatter)]


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_is_json_with_time_level_logger_message_request_id_and_fields(capture):
    logger, stream = capture
    token = request_id.set("req-42")
    try:
        logger.info("answered %s", "will_like", extra={"fields": {"model": "will_like", "rows": 3, "ms": 1.5}})
    finally:
        request_id.reset(token)
    logger.warning("no request here")
    first, second = _lines(stream)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert first == {"ts": first["ts"], "level": "INFO", "logger": "millrace.serving", "msg": "answered will_like",
                     "request_id": "req-42", "model": "will_like", "rows": 3, "ms": 1.5}
    assert "request_id" not in second and second["level"] == "WARNING"


def test_fields_never_hide_a_standard_key_and_odd_values_are_written(capture):
    logger, stream = capture
    logger.info("real", extra={"fields": {"msg": "forged", "level": "forged", "path": Path("/x/y"), "ids": {3, 4}}})
    (line,) = _lines(stream)
    assert line["msg"] == "real" and line["level"] == "INFO"
    assert line["fields.msg"] == "forged" and line["fields.level"] == "forged" and line["path"] == "/x/y"
    assert line["ids"] == "{3, 4}"


def test_a_traceback_is_in_exc_and_the_line_stays_one_line(capture):
    logger, stream = capture
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logger.exception("failed")
    assert len(stream.getvalue().splitlines()) == 1
    (line,) = _lines(stream)
    assert line["msg"] == "failed" and line["level"] == "ERROR"
    assert "Traceback" in line["exc"] and "RuntimeError: boom\nsecond line" in line["exc"]


def test_the_request_id_belongs_to_its_own_thread(capture):
    logger, stream = capture

    def handle(rid: str):
        request_id.set(rid)
        logger.info("in thread")

    threads = [threading.Thread(target=handle, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.info("main")
    lines = _lines(stream)
    assert sorted(line["request_id"] for line in lines if line["msg"] == "in thread") == ["r0", "r1", "r2", "r3"]
    assert "request_id" not in [line for line in lines if line["msg"] == "main"][0]


def test_a_sane_request_id_is_kept_and_any_other_replaced():
    assert new_request_id("abc-123") == "abc-123"
    assert new_request_id("x" * 128) == "x" * 128
    for bad in ("", "   ", "x" * 129, "line\nbreak", "tab\there", "naïve", "\x1b[31mred"):
        made = new_request_id(bad)
        assert re.fullmatch(r"[0-9a-f]{16}", made), bad
    assert new_request_id() != new_request_id()


def test_configure_twice_keeps_one_handler_on_the_new_stream_and_no_propagation(capture):
    logger, first = capture
    second = io.StringIO()
    again = configure("WARNING", second)
    assert again is logger is logging.getLogger("millrace.serving")
    assert len(_ours(logger)) == 1 and _ours(logger)[0].stream is second
    assert logger.propagate is False
    logger.info("below the level")
    logger.error("kept")
    assert first.getvalue() == "" and [line["msg"] for line in _lines(second)] == ["kept"]


def test_configure_refuses_an_unknown_level():
    with pytest.raises(ServingError, match="unknown log level 'LOUD'"):
        configure("LOUD")
