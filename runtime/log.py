"""Logging set-up: `AGENTFLOW_LOG` (error, warn, info, debug, trace) and the `[component] message` form.

Every module logs to ``logging.getLogger("agentflow.<component>")``; this module is the one place
that decides where those lines go and how they look. Nothing logs per message or per task at
info level: hot paths use debug or trace, and what a peer can repeat at will is logged at most
once a minute per peer (``LogThrottle``).
"""

from __future__ import annotations

import logging
import os
import sys
import time

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

LEVELS = {
    "error": logging.ERROR,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": TRACE,
}


class ComponentFormatter(logging.Formatter):
    """``[raft] Node node2 starting election for term 3``: the component is the logger's last part."""

    def format(self, record: logging.LogRecord) -> str:
        component = record.name.rsplit(".", 1)[-1] if record.name.startswith("agentflow.") else record.name
        message = record.getMessage()
        prefix = f"[{component}] "
        line = message if message.startswith(prefix) else prefix + message
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def configure_logging(level: str | None = None, stream=None) -> int:
    """Configure the ``agentflow`` logger once per process; returns the numeric level in force."""
    name = (level or os.environ.get("AGENTFLOW_LOG") or "info").strip().lower()
    if name not in LEVELS:
        raise ValueError(f"AGENTFLOW_LOG={name!r}: expected one of error, warn, info, debug, trace")
    numeric = LEVELS[name]
    root = logging.getLogger("agentflow")
    root.setLevel(numeric)
    root.propagate = False
    if not any(getattr(h, "_agentflow", False) for h in root.handlers):
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(ComponentFormatter())
        handler._agentflow = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    return numeric


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"agentflow.{component}")


class LogThrottle:
    """Whether a line about ``key`` may be logged now: once per ``every_s`` per key, for what a
    peer can cause as fast as it likes (bad frames, refused connections). At most ``max_keys``
    keys are remembered (a key per peer, and peers are free): past them it starts afresh."""

    def __init__(self, every_s: float = 60.0, max_keys: int = 10_000) -> None:
        self.every_s, self.max_keys = every_s, max_keys
        self._last: dict = {}

    def allow(self, key: object) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -self.every_s) < self.every_s:
            return False
        if len(self._last) >= self.max_keys:
            self._last.clear()
        self._last[key] = now
        return True
