"""Structured logging: readable text for a terminal, JSON lines for log shippers.

Logged values often come from outside (a token's header, a phone number, an error text from Meta).
Neither format lets them forge a record: the JSON encoder escapes control characters, and the text
format escapes them in the message and the extras (:func:`escape`) and indents the lines of a
traceback, so every line that starts at column 0 is the start of a real record.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Hashable
from datetime import UTC, datetime
from typing import Any

import msgspec

from core.config import LoggingConfig, redact_url

__all__ = ["JsonFormatter", "Throttle", "escape", "setup_logging"]

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}
_encoder = msgspec.json.Encoder()

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: anything a
# terminal or a log viewer may treat as a line break or an escape sequence.
_ESCAPES = {code: f"\\x{code:02x}" for code in (*range(0x20), 0x7F, *range(0x80, 0xA0))} | {
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


def escape(text: str) -> str:
    r"""``text`` with control characters and line breaks written as escapes (``\n``, ``\x1b``)."""
    return text.translate(_ESCAPES)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and any ``extra=`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        """One JSON line for ``record``."""
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STD and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(entry).decode()


class _TextFormatter(logging.Formatter):
    """One line per record (values escaped), then the traceback, if any, indented."""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        line = self.formatMessage(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STD and not k.startswith("_")}
        if extras:
            line += " " + " ".join(f"{k}={escape(str(v))}" for k, v in extras.items())
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line += "\n" + _indent(record.exc_text)
        if record.stack_info:
            line += "\n" + _indent(self.formatStack(record.stack_info))
        return line


def _indent(block: str) -> str:
    # A traceback ends with the exception's message, which may quote outside input.
    return "\n".join("  " + escape(part) for part in block.splitlines())


class Throttle:
    """Logs a repeated failure once per ``interval``, then how many repeats it left out.

    A failure that happens on every request (the database gone, a client flooding an event) would
    otherwise write thousands of identical tracebacks a second and fill the disk. Occurrences are
    grouped by ``key`` (default: the message template, the exception's type and the line that
    raised it, so two different bugs are both logged)::

        throttle = Throttle(log)
        throttle.error("joining %s failed", room, exc_info=exc)

    Args:
        logger: where the records go.
        interval: seconds during which repeats of one key are only counted.
        max_keys: keys remembered (the oldest is forgotten first).
    """

    def __init__(self, logger: logging.Logger, interval: float = 60.0, max_keys: int = 256) -> None:
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._seen: dict[Hashable, list[float]] = {}  # key -> [logged at, repeats left out since]

    def error(
        self, msg: str, *args: object, exc_info: BaseException | None = None, key: Hashable = None
    ) -> bool:
        """Log at ERROR unless this key was logged less than ``interval`` ago; ``True`` if logged."""
        return self.log(logging.ERROR, msg, *args, exc_info=exc_info, key=key)

    def log(
        self,
        level: int,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
        key: Hashable = None,
    ) -> bool:
        """Log at ``level`` unless this key was logged less than ``interval`` ago; ``True`` if logged."""
        if key is None:
            key = (msg, *_origin(exc_info))
        now = time.monotonic()
        seen = self._seen.get(key)
        if seen is not None and now - seen[0] < self.interval:
            seen[1] += 1
            return False
        if seen is None and len(self._seen) >= self.max_keys:
            del self._seen[next(iter(self._seen))]
        self._seen.pop(key, None)
        self._seen[key] = [now, 0]
        if seen is not None and seen[1]:
            msg += " (repeated %d more times in the last %.0f s, not logged)"
            args = (*args, int(seen[1]), now - seen[0])
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True


def _origin(exc: BaseException | None) -> tuple[str, str, int]:
    if exc is None:
        return ("", "", 0)
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return (type(exc).__qualname__, "", 0)
    return (type(exc).__qualname__, tb.tb_frame.f_code.co_filename, tb.tb_lineno)


class _RedactAccessLog(logging.Filter):
    """Masks secrets in the request target of access-log lines (``/socket.io/?token=…``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, http version, status).
        args = record.args
        if record.name == "uvicorn.access" and isinstance(args, tuple) and len(args) >= 3:
            target = args[2]
            record.args = (*args[:2], redact_url(target) if isinstance(target, str) else target, *args[3:])
        return True


def setup_logging(config: LoggingConfig) -> None:
    """Configure the root logger once (idempotent), from ``logging:`` in config."""
    handler = logging.StreamHandler(sys.stderr)
    if config.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_zaphub", False):
            root.removeHandler(old)
    handler._zaphub = True  # type: ignore[attr-defined]  # marks our handler for idempotent setup
    handler.addFilter(_RedactAccessLog())
    root.addHandler(handler)
    root.setLevel(config.level.upper())
    for noisy in ("aiosqlite", "httpx", "httpcore", "alembic.runtime.plugins"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    access = logging.INFO if config.access_log else max(logging.WARNING, root.level)
    logging.getLogger("uvicorn.access").setLevel(access)
