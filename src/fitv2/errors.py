"""The project's error types. The ``fitv2`` command prints any :class:`UserError` as one
``error:`` line and exits with status 2; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A request the user can fix: a bad option, a missing file, a checkpoint that does not fit."""


class ConfigError(UserError):
    """An option or config value that is out of range, of the wrong type, or not one of its choices."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist (or is not what it should be)."""


class UnknownNameError(UserError, KeyError):
    """An unknown preset, method or other name; the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


__all__ = ["ConfigError", "MissingFileError", "UnknownNameError", "UserError"]
