"""Structured logs: ``logging.format: json`` writes one JSON object per line."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from core.config import LoggingConfig
from core.logs import JsonFormatter, Throttle, setup_logging


def test_json_lines_carry_level_logger_message_extras_and_the_exception() -> None:
    try:
        raise ValueError("bad payload")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "zaphub.test", logging.WARNING, __file__, 1, "stored %d messages", (3,), exc_info
    )
    record.plugin = "whatsapp"
    record.detail = {"a": 1}
    line = JsonFormatter().format(record)
    assert "\n" not in line  # one line, traceback included
    entry = json.loads(line)
    assert entry["level"] == "warning"
    assert entry["logger"] == "zaphub.test"
    assert entry["message"] == "stored 3 messages"
    assert entry["plugin"] == "whatsapp"
    assert entry["detail"] == "{'a': 1}"  # non-scalars are written as their repr
    assert entry["time"].endswith("+00:00")
    assert "ValueError: bad payload" in entry["exception"]


def test_setup_logging_is_idempotent_and_writes_json(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(LoggingConfig(level="debug", format="text"))
    setup_logging(LoggingConfig(level="info", format="json"))
    ours = [h for h in root_logger.handlers if getattr(h, "_zaphub", False)]
    assert len(ours) == 1  # configuring twice replaces, never duplicates
    assert root_logger.level == logging.INFO
    logging.getLogger("zaphub.test").info("hello %s", "world", extra={"conversation_id": 7})
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    entries = [json.loads(line) for line in lines]
    assert {"logger": "zaphub.test", "message": "hello world", "conversation_id": 7}.items() <= entries[
        -1
    ].items()


def test_text_lines_escape_outside_values_and_indent_tracebacks(
    root_logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    setup_logging(LoggingConfig(level="info", format="text"))
    forged = "eve\n2026-01-01 00:00:00,000 ERROR   zaphub: FORGED\x1b[2J"
    log = logging.getLogger("zaphub.test")
    log.info("refused %s", forged, extra={"sub": forged})
    try:
        raise ValueError(forged)
    except ValueError:
        log.exception("failed for %s", "ana")
    lines = capsys.readouterr().err.splitlines()
    records = [line for line in lines if not line.startswith(" ")]
    assert len(records) == 2  # the two records, nothing forged; the traceback is indented
    assert records[0].endswith(
        "refused eve\\n2026-01-01 00:00:00,000 ERROR   zaphub: FORGED\\x1b[2J "
        "sub=eve\\n2026-01-01 00:00:00,000 ERROR   zaphub: FORGED\\x1b[2J"
    )
    assert records[1].endswith("failed for ana")
    # The exception's own line break stays (a traceback is many lines), but indented like the rest.
    assert lines[-2:] == ["  ValueError: eve", "  2026-01-01 00:00:00,000 ERROR   zaphub: FORGED\\x1b[2J"]
    assert "\x1b" not in "".join(lines)


def test_throttle_logs_a_repeated_failure_once_then_how_many_were_left_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle = Throttle(logging.getLogger("zaphub.test"), interval=3600)

    def fail(kind: str) -> BaseException:
        try:
            raise (ValueError if kind == "value" else KeyError)(kind)
        except Exception as exc:
            return exc

    with caplog.at_level(logging.ERROR, logger="zaphub.test"):
        logged = [throttle.error("join %s failed", i, exc_info=fail("value")) for i in range(1000)]
        assert logged.count(True) == 1
        assert throttle.error("join %s failed", "x", exc_info=fail("key"))  # another failure: logged
        throttle.interval = 0  # the minute is over
        assert throttle.error("join %s failed", 1000, exc_info=fail("value"))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "join 0 failed"
    assert caplog.records[0].exc_info is not None  # the first one keeps its traceback
    assert messages[1] == "join x failed"
    assert messages[2].startswith("join 1000 failed (repeated 999 more times in the last ")
    assert len(messages) == 3
