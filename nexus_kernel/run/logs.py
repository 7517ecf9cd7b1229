"""structlog set-up: readable lines on stderr for people, JSON lines in the run for machines."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import structlog

LOGGER_NAME = "nexus"

_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_logger_name,
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def _drop_for_console(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    event.pop("timestamp", None)
    event.pop("logger", None)
    return event


def configure_logging(events_file: Path | None = None, *, verbose: bool = False, quiet_console: bool = False
                      ) -> None:
    """Route every `nexus.*` logger to stderr and, when given, to `events_file` as JSON lines.
    `quiet_console`: only warnings and errors reach stderr (a rank other than 0 under torchrun,
    whose lines would repeat the leader's; its file keeps them all).

    Calling it again replaces the handlers, so one process can start several runs.
    """
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger(LOGGER_NAME)
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_SHARED,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _drop_for_console,
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
    ))
    if quiet_console:
        console.setLevel(logging.WARNING)
    root.addHandler(console)
    if events_file is not None:
        events_file.parent.mkdir(parents=True, exist_ok=True)
        machine = logging.FileHandler(events_file, encoding="utf-8")
        machine.setFormatter(structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.JSONRenderer(sort_keys=True),
            ],
        ))
        root.addHandler(machine)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A logger under the `nexus` namespace, e.g. `get_logger("runner")`."""
    return structlog.stdlib.get_logger(f"{LOGGER_NAME}.{name}")
