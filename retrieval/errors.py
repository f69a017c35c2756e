"""The one marker of errors in what a user asked for (a bad path, filter, model, index or input), as opposed
to a fault in zhrag: adapters show these as a message (CLI exit 2, HTTP 4xx) and let anything else surface
with its traceback."""

from __future__ import annotations

__all__ = ["UserError", "InputError"]


class UserError(Exception):
    """Something the user can fix, said in words; every such error of zhrag derives from it."""


class InputError(UserError, ValueError):
    """A file or value the user gave cannot be used (named, with the line where there is one)."""
