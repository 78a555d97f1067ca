"""User-facing errors.

`UserError` is for bad input a user can fix (unknown model, missing file, corrupt
artifact, bad config). The CLI prints its one-line message and exits with code 2;
anything else is a bug and keeps its traceback. `is_our_bug` tells an optimization run's
failed step (a candidate an engine cannot take) from a bug of ours, which stops the run.
"""
from __future__ import annotations

import traceback
from pathlib import Path


class UserError(ValueError):
    """Bad input from the user; the message says what is wrong and what to do."""


class ArtifactError(UserError):
    """An artifact directory is incomplete, tampered with, or holds unsafe files."""


class UserTypeError(UserError, TypeError):
    """Something of the user's has the wrong type (a metric that returns no number): a
    TypeError to the caller, and a user's error, not ours, to `is_our_bug`."""


# What a slip in our own code raises (a wrong name, attribute, key or index, a broken
# invariant, a call with the wrong arguments). Engines and transforms refuse a candidate
# with other types (RuntimeError from onnxruntime, OpenVINO, llama.cpp and torch,
# NotImplementedError, ValueError, MemoryError, UserError): those are a failed step.
BUG_TYPES: tuple[type[BaseException], ...] = (AssertionError, NameError, AttributeError,
                                              TypeError, KeyError, IndexError)
_PACKAGE = Path(__file__).resolve().parents[1]  # src/reactinfer


def _ours(filename: str) -> bool:
    return Path(filename).resolve().is_relative_to(_PACKAGE)


def is_our_bug(exc: BaseException) -> bool:
    """Whether `exc` is a bug in ReAct itself: a bug type raised in a frame of the
    reactinfer package. The same type raised inside a library (an AttributeError in
    transformers, an AssertionError in an exporter) is the engine's refusal. One exception:
    an attribute our code asked for that the object's own `__getattr__` refused
    (torch.nn.Module raises from torch's frame) is our lookup, so our bug."""
    if isinstance(exc, UserError) or not isinstance(exc, BUG_TYPES):
        return False
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return False
    inner = frames[-1]
    if isinstance(exc, AttributeError) and inner.name in ("__getattr__", "__getattribute__") \
            and len(frames) > 1:
        inner = frames[-2]
    return _ours(inner.filename)
