"""Logging set-up for entry points: JSON lines when not on a terminal, readable text when on one."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

NOISY = (
    "mlflow",
    "alembic",
    "urllib3",
    "optuna",
    "matplotlib",
    "PIL",
    "filelock",
    "httpx",
    "httpcore",
)


class _TextFormatter(logging.Formatter):
    """Message first, then the structured fields, so a person can still read them."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {k: v for k, v in vars(record).items() if k not in self._skip}
        if not extra:
            return base
        return base + "  " + " ".join(f"{k}={v}" for k, v in extra.items())


def configure(*, level: str = "INFO", fmt: str = "auto") -> None:
    """Configure the root logger once; called by entry points only."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    if use_json:
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{name}{message}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level"},
            )
        )
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
