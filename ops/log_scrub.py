"""Log scrubbing: no record leaves a log handler with a credential in it (URL userinfo, keys, ``password=``).

``run.py`` installs :class:`ScrubLogFilter` on the root logger's handlers at start, so every logger's records
(httpx's ``HTTP Request: POST https://user:pass@host/...`` INFO lines, the NATS URLs a node logs) are scrubbed
with :data:`schemas.redaction.SECRET_PATTERNS` before they are written.
"""

from __future__ import annotations

import logging

from schemas.redaction import scrub_text


class ScrubLogFilter(logging.Filter):
    """A log handler filter that scrubs every record's message (arguments merged in) and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        record.msg, record.args = scrub_text(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_text(record.exc_text)
        return True


def install_log_scrubber(logger: logging.Logger | None = None) -> ScrubLogFilter:
    """Add a :class:`ScrubLogFilter` to every handler of ``logger`` (the root logger by default); returns it
    (``handler.removeFilter`` undoes it)."""
    f = ScrubLogFilter()
    for h in (logger or logging.getLogger()).handlers:
        h.addFilter(f)
    return f
