"""Specific error types. Each carries the offending path (when there is one) and a reason,
so the CLI can print one line and exit non-zero."""

from __future__ import annotations

from pathlib import Path


class SasanError(Exception):
    """Base class. ``str(err)`` is a single line: ``<path>: <reason>`` or ``<reason>``."""

    exit_code = 1

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = " ".join(str(reason).split())  # always one line
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {self.reason}" if self.path else self.reason)


class ConfigError(SasanError):
    """A configuration file or value is invalid (unknown key, wrong type, bad value)."""

    exit_code = 2


class DataError(SasanError):
    """An input data file or folder is unreadable, malformed or inconsistent."""


class ValidationFailed(SasanError):
    """Data validation found error-level failures (the report says which)."""

    exit_code = 3


class CheckpointError(SasanError):
    """A checkpoint is missing, corrupt or incompatible with the configuration."""
