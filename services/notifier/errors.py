"""The notifier's own failures; third-party errors are wrapped with ``raise ... from``."""

from __future__ import annotations


class NotifierError(Exception):
    """Base of every error the notifier raises on purpose."""


class CredentialKeyError(NotifierError):
    """The credentials key is missing, malformed or its file cannot be read or written."""


class CredentialUnreadable(NotifierError):
    """A stored credential does not decrypt with the configured key (stored under another key, or altered)."""
