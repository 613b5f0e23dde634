"""How the package's warnings reach a user: the ``tune_study`` loggers, one line each on stderr as
``WARNING: <message>``. Modules log with ``logging.getLogger(__name__)``; each command-line entry
point calls ``show_warnings()`` once (a library user keeps their own logging setup)."""
from __future__ import annotations

import logging
import sys

_HANDLER_NAME = "tune_study.console"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (a notebook or a test may swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _):
        pass


def show_warnings() -> None:
    """Warnings (and worse) of the ``tune_study`` loggers to stderr, once however often called."""
    logger = logging.getLogger("tune_study")
    if any(h.get_name() == _HANDLER_NAME for h in logger.handlers):
        return
    handler = _CurrentStderr()
    handler.set_name(_HANDLER_NAME)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.addHandler(handler)
