"""Typed errors for every failure a user can cause or meet. The CLI turns each into one line and an exit code.

* :class:`InputError` (exit 2): bad input data, a bad argument or file, a checkpoint that does not fit;
* :class:`ChecksFailed` (exit 4): the Great Expectations gate refused a run;
* :class:`LstError` and its other subclasses (exit 3): any other expected failure (the feature store
  unreachable, a publish that cannot proceed).

Library callers catch :class:`LstError` to handle all of them.
"""

from __future__ import annotations


class LstError(Exception):
    """An expected failure with a message meant for a person."""

    exit_code = 3


class InputError(LstError, ValueError):
    """Input that cannot be used: data breaking the contract, a missing file, a bad setting."""

    exit_code = 2


class ChecksFailed(LstError):
    """Checks failed and the run was not published. ``report`` holds every check."""

    exit_code = 4

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


class PublishError(LstError):
    """The feature store could not take the run (unreachable, locked, refused); nothing was half-written."""


class NothingToPublish(PublishError):
    """Every listing version given is already in the feature store."""
