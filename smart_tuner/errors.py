"""The one base class of errors caused by what the user gave (a file, a key, a value, a path, a machine's state).

The command line prints such an error as one line, ``error: <message>``, and exits with status 2; anything else is
a bug and keeps its traceback. Each package raises its own subclass (``CorpusError``, ``StudyError``, ...), whose
message names the file, line or key and what to do. :class:`ConfigError` is here, beside the base class, because two
modules of the bottom layer raise it: ``config.py`` and the YAML file reader below it (``yaml_reader.py``).
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a state the user can change; the message is one line that says which and what to do."""


class ConfigError(UserError, ValueError):
    """A config file, key or value is wrong; the message says which and what to do."""
