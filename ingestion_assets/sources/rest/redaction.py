"""Secrets masked in every text a person may see: error messages, shown URLs, body excerpts.

Kept apart from the authenticators that hold the secrets so that every module that builds a
message (client, token request) masks the same way: a secret value becomes `***`, a URL loses its
user info, and the values of secret query parameters (an API key sent as `?api_key=`) are hidden.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value replaced by `***`."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return text


def redact_url(url: str, secrets: Iterable[str], secret_params: Iterable[str] = ()) -> str:
    """A URL safe to show: no password in it, secret query values masked."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    hidden = {name.lower() for name in secret_params}
    query = urlencode(
        [
            (key, "***" if key.lower() in hidden else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ],
        safe="*",  # `api_key=***`, not `api_key=%2A%2A%2A`
    )
    return redact(urlunsplit((parts.scheme, netloc, parts.path, query, "")), secrets)
