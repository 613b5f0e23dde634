"""One error type for bad input: the CLIs print it on one line and exit 2."""
from __future__ import annotations


class StudyError(ValueError):
    """Bad input (config, file, flag). The message names the culprit on one line."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(" ".join(str(message).split()))  # always one line
        # The config key at fault, when there is one: lets a YAML loader say "file: key 'fixed.lr'".
        self.key = key if key is not None else _leading_key(str(message))


def _leading_key(message: str) -> str | None:
    head = message.split(":", 1)[0]
    return head if head and " " not in head and len(head) < 40 else None


EXIT_BAD_INPUT = 2
