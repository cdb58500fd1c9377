"""The project's one small exception tree.

Core code raises these (or a plain ``ValueError`` naming the bad parameter); the CLI turns
them into a one-line message and a non-zero exit, the service into a 4xx JSON body.
"""

from __future__ import annotations

from collections.abc import Sequence


class ArgusError(Exception):
    """Base class of every error Argus raises on purpose."""


class DataError(ArgusError, ValueError):
    """Input data is unusable: missing file, wrong column, non-numeric or NaN values."""


class ModelNotFoundError(ArgusError, LookupError):
    """No such model or version in the store."""


class ModelVerificationError(ArgusError):
    """A stored version does not match its card: missing, truncated or tampered file."""


class ModelFormatError(ArgusError, ValueError):
    """A file is not a usable ONNX classifier (not ONNX, wrong input or output shapes)."""


class ExportError(ArgusError):
    """Export to ONNX failed, or the exported graph disagrees with the trained model."""


class StateError(ArgusError):
    """The shared state store cannot be read or written."""


class DuplicateIdError(StateError, ValueError):
    """A prediction id is already in the log (ids supplied by clients must be unique)."""

    def __init__(self, message: str, ids: Sequence[str]) -> None:
        super().__init__(message)
        self.ids = list(ids)


class NoRollbackTargetError(StateError, LookupError):
    """The model has no earlier live version to roll back to."""


class SettingsError(ArgusError, ValueError):
    """An ``ARGUS_*`` variable holds a value of the wrong type or range."""
