"""Errors the toolkit raises for bad user input.

The CLI turns an ``ErasureInputError`` into a one-line message and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations


class ErasureInputError(ValueError):
    """Bad input from the user: a missing or malformed path, an unknown name, an invalid value."""
