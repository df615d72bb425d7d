"""Logging set-up for the CLI: plain or JSON lines on standard error. Everyone else only
calls ``logging.getLogger(__name__)``."""

from __future__ import annotations

import json
import logging
import re
import time

# attributes every LogRecord has; anything else on a record came from ``extra=``
# (uvicorn adds ``color_message``, the message with terminal colours: not for JSON)
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "color_message",
}


# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators: any of
# them in a logged value (a request path, a header, an error from a target) could start a
# forged line or rewrite the terminal
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escape_one(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a ``\\xNN`` escape, so one log
    record is always one line."""
    return _CONTROL.sub(_escape_one, text)


class PlainFormatter(logging.Formatter):
    """``time level logger: message``, with control characters in the message escaped.

    A traceback (the server's own text) still follows on its lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape_controls(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the fields a caller
    passed with ``extra=`` (``task_id``, ``attempt``, ``status`` …) as keys of their own."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        # json.dumps writes every control character (and, with ensure_ascii, every
        # separator) as an escape: one record is one line whatever the values hold
        return json.dumps(entry, default=str)


def configure(level: str = "INFO", fmt: str = "plain") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
