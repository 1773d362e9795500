"""User-facing errors.

Anything raised as an :class:`EdgekitError` is a user error: the CLI prints it as one
line with its hint and exits with code 2, without a traceback. Anything else is a bug.
"""

from __future__ import annotations


class EdgekitError(Exception):
    """A user error: bad input, missing runtime, failed check."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ConfigError(EdgekitError):
    """An invalid option, recipe or device-profile field."""


class CheckpointError(EdgekitError):
    """A model directory that is missing, corrupt or unsupported."""


class DataError(EdgekitError):
    """A data file that is missing, unreadable or has the wrong schema."""


class MissingDependency(EdgekitError):
    """An optional runtime or library is not installed."""


class TargetError(EdgekitError):
    """A target that is unknown, unusable here, or failed to compile or load."""


class ArtifactError(EdgekitError):
    """An artifact directory that is missing, incomplete or tampered with."""


class ParityError(EdgekitError):
    """A runtime's outputs differ from PyTorch's beyond the stated tolerance."""


class TrainingError(EdgekitError):
    """Training that cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


def first_error(err) -> str:
    """``field.path: message`` of a pydantic ``ValidationError``'s first entry (one line)."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if not isinstance(p, int))
    msg = str(first.get("msg")).removeprefix("Value error, ")
    return f"{loc}: {msg}" if loc else msg
