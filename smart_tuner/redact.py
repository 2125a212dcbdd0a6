"""The one place that knows how to hide a secret in text: a secret is replaced by ``***`` as it is written and
URL-encoded (a URL quoted in a message may carry ``123:ABC`` as ``123%3AABC``), longest first, since one may contain
another.

Two kinds of secret: those a storage or tracking URL holds (its password, secret query values; :func:`redact_url`,
:func:`redact_text`), and those registered with a :class:`SecretFilter`, a logging filter that hides them in every
record it sees (the Telegram bot token, part of every request URL of watch/alerts.py)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus

HIDDEN = "***"
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "pass", "secret", "token", "api_key", "apikey",
                               "access_token"})


def written_forms(secret: str) -> set[str]:
    """``secret`` as it is and as a URL may carry it, percent-encoded (``quote`` with and without ``/`` kept,
    ``quote_plus``); empty for an empty secret."""
    return {secret, quote(secret, safe=""), quote(secret), quote_plus(secret)} if secret else set()


def hide(text: str, secrets: Iterable[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***``, longest first (one may contain another)."""
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return text


def _parsed_url(url: str) -> Any:
    """The URL as SQLAlchemy parses it (its grammar is the one the storage connects with: a password may hold
    ``/``, ``#`` or ``?``), or None for a plain path."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def url_secrets(url: str) -> list[str]:
    """The secrets a URL holds (its password, secret query values), as parsed and as written (percent-encoded),
    longest first."""
    parsed = _parsed_url(url)
    if parsed is None:
        return []
    found = [parsed.password] if parsed.password else []
    for key, value in parsed.query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            found += [value] if isinstance(value, str) else list(value)
    return sorted({form for f in found if f for form in written_forms(f)}, key=len, reverse=True)


def redact_url(url: str) -> str:
    """A storage or tracking URL without its password, for logs, summaries, tags and errors: the URL parsed (so a
    password with ``/``, ``#``, ``?`` or ``@`` is found whole), its password and secret query parameters
    (``?password=``, ``?token=``, ...) shown as ``***``. A plain path is returned as it is."""
    parsed = _parsed_url(url)
    if parsed is None:
        return url
    marker = "SMARTTUNERHIDDEN"
    query = {k: (marker if k.lower() in SECRET_QUERY_KEYS else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True).replace(marker, HIDDEN)


def redact_text(text: str, url: str) -> str:
    """``text`` (a driver's error message, say) with every secret of ``url`` replaced by ``***``."""
    return hide(text, url_secrets(url))


class SecretFilter(logging.Filter):
    """Hides every registered secret (:meth:`add`, in all its :func:`written_forms`) in the message and the
    traceback of each record of the loggers it is added to."""

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        with self._lock:
            self._secrets |= written_forms(secret)

    def redact(self, text: str) -> str:
        """``text`` with every registered secret replaced by ``***``."""
        with self._lock:
            secrets = set(self._secrets)
        return hide(text, secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to logging's own error report
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and not record.exc_text:
            # Formatters use exc_text when set, so the traceback is written redacted too.
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True
