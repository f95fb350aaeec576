"""Errors that mean the user's input is wrong (a file, a flag, a checkpoint), not that lit_ptm is.

The command line prints them as one message and exits with status 2, without a traceback
(``LIT_PTM_DEBUG=1`` shows it); any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class LitPtmError(Exception):
    """Bad input, named in the message (file:line, the config key, the value)."""


class ConfigError(LitPtmError, ValueError):
    """A config value that cannot work (out of range, unknown, contradicting another)."""
