"""Keep secrets out of everything the library writes or prints.

API keys live in the environment only (see :mod:`metaspo_dspy.lm.settings`), but a model server can
echo them back: an error body that repeats the ``Authorization`` header ends up in an exception
message, and from there in ``faults.jsonl``, a node's errors, a log line or a console message.
:func:`redact` is applied to every such text before it is stored or shown.

What is redacted:

* the value of every environment variable that looks like a credential (its name contains
  ``KEY``, ``TOKEN``, ``SECRET`` or ``PASSWORD``; values of at least 8 characters), which covers the
  variables named by ``api_key_env`` and LiteLLM's standard ones (``OPENAI_API_KEY``, ...);
* every value passed to :func:`register_secret` (e.g. a key read from a variable with another
  name);
* ``Bearer <token>`` and OpenAI/Anthropic-style ``sk-...`` tokens, wherever they appear;
* the credentials of a URL (``http://user:password@host/v1`` -> ``http://[REDACTED]@host/v1``), e.g. an
  ``api_base`` with a user and password in it, wherever it is printed or logged.

The environment is read on every call, so keys exported after import are covered too.
"""

from __future__ import annotations

import logging
import os
import re
import threading

MASK = "[REDACTED]"
#: Shorter values are not treated as secrets (they would mask ordinary words and numbers).
MIN_SECRET_LENGTH = 8
_CREDENTIAL_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{4,}"),
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),
    # A URL's user information (up to the last '@' before the path, so an unescaped '@' in a password
    # is covered too); the scheme is kept.
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/?#\s\"'<>]+(?=@)"),
)
_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from now on (ignored when empty or shorter than 8 characters)."""
    if value and len(value.strip()) >= MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value.strip())


def secret_values() -> list[str]:
    """The literal values :func:`redact` masks, longest first."""
    values = {v.strip() for name, v in os.environ.items() if _CREDENTIAL_NAME.search(name) and v}
    with _lock:
        values |= _registered
    return sorted((v for v in values if len(v) >= MIN_SECRET_LENGTH), key=len, reverse=True)


def redact(text: str) -> str:
    """``text`` with every known secret value and token pattern replaced by ``[REDACTED]``."""
    if not isinstance(text, str) or not text:
        return text
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (install on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to logging's own error handling
            return True
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
