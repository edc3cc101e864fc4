"""Server logs as JSON lines, with no secrets: no query strings, no request text unless asked.

`configure` gives the `taskrouter` loggers a JSON handler on stderr (gunicorn
installs none for them); `GunicornLogger` writes gunicorn's own and access lines
the same way, with the path but never the query string (where a misplaced API key
would sit), and withholds the quoted request text of malformed-request warnings.
"""
from __future__ import annotations

import json
import logging
import re
import sys

from gunicorn import glogging

_QUOTED = re.compile(r"""'[^']*'|"[^"]*"|:\s.*$""")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"), "level": record.levelname.lower(),
                 "logger": record.name, "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "info") -> None:
    """Send the `taskrouter` loggers' records to stderr as JSON (once per process)."""
    logger = logging.getLogger("taskrouter")
    logger.setLevel(level.upper())
    if not any(isinstance(h.formatter, JsonFormatter) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)


class GunicornLogger(glogging.Logger):
    """gunicorn's logger with JSON lines, access lines without query strings and redacted bad requests."""

    def setup(self, cfg) -> None:
        super().setup(cfg)
        for handler in self.error_log.handlers + self.access_log.handlers:
            handler.setFormatter(JsonFormatter())
        configure(cfg.loglevel or "info")

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        fields = {"remote": atoms["h"], "method": atoms["m"], "path": atoms["U"], "status": atoms["s"],
                  "bytes": atoms["B"], "seconds": round(request_time.total_seconds(), 4)}
        self.access_log.info("access", extra={"fields": fields})

    def warning(self, msg, *args, **kwargs) -> None:
        if isinstance(msg, str) and msg.startswith("Invalid request from"):
            ip, _, error = msg.partition(": ")
            msg = f"{ip}: {_QUOTED.sub('', error).strip() or 'malformed request'} (request text withheld)"
        super().warning(msg, *args, **kwargs)
