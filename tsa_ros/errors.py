"""The error types that mean bad input from a user, not a bug (no heavy imports here).

``tsa`` prints these as one line and exits 2; any other exception keeps its traceback.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration file, mapping or command-line value that does not fit."""
