"""User-facing errors.

`UserError` is for bad input a user can fix (unknown model, missing file, corrupt
artifact, bad config). The CLI prints its one-line message and exits with code 2;
anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class UserError(ValueError):
    """Bad input from the user; the message says what is wrong and what to do."""


class ArtifactError(UserError):
    """An artifact directory is incomplete, tampered with, or holds unsafe files."""
