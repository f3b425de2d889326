"""The two ways talking to kcd fails, as kcctl's commands see them. A module of its own so
that the exit-code mapping can name them without importing the socket client."""

from __future__ import annotations


class DaemonUnreachable(Exception):
    """No daemon answers, or it died mid-answer; the message says what to do about it."""


class DaemonError(Exception):
    """The daemon answered with an error status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message
