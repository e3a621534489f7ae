"""Secrets masked in every text a person may see: error messages, shown URLs, body excerpts.

Kept apart from the authenticators that hold the secrets so that every module that builds a
message (client, token request, reader) masks the same way: a secret value becomes `***`, a URL
loses its user info, and the values of secret query parameters (an API key sent as `?api_key=`)
are hidden. A secret is found in every form an API may echo it back in: as it is, URL-encoded
(`%XX` in either case, once or twice, `+` for a space) or JSON-escaped (`\\u00XX`, `\\/`), and any
mix of those character by character; an exception chain is masked the same way.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

# shorter values would mask ordinary text (and are no secrets worth the name)
MIN_SECRET_LENGTH = 3


def _character_forms(character: str) -> str:
    """A pattern for one character in any of the forms it can be echoed in."""
    forms = [re.escape(character)]
    # %XX of each UTF-8 byte, its `%` itself encoded once more (%25XX) in a URL inside a URL
    encoded = "".join(
        f"(?:%|%25)(?i:{byte:02x})" for byte in character.encode("utf-8", "surrogatepass")
    )
    forms.append(encoded)
    if character == " ":
        forms.append(r"\+")
    # JSON: \uXXXX (a surrogate pair above U+FFFF), and the short escapes
    units = character.encode("utf-16-be", "surrogatepass")
    forms.append(
        "".join(
            rf"\\u(?i:{int.from_bytes(units[i : i + 2], 'big'):04x})"
            for i in range(0, len(units), 2)
        )
    )
    if character in _JSON_SHORT_ESCAPES:
        forms.append(re.escape(_JSON_SHORT_ESCAPES[character]))
    return "(?:" + "|".join(forms) + ")"


_JSON_SHORT_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "/": "\\/",
    "\b": "\\b",
    "\f": "\\f",
    "\n": "\\n",
    "\r": "\\r",
    "\t": "\\t",
}


@functools.lru_cache(maxsize=256)
def _secret_pattern(secret: str) -> re.Pattern[str]:
    return re.compile("".join(_character_forms(character) for character in secret))


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value, in any encoding, replaced by `***`."""
    for secret in sorted({secret for secret in secrets if secret}, key=len, reverse=True):
        if len(secret) >= MIN_SECRET_LENGTH:
            text = _secret_pattern(secret).sub("***", text)
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


def redact_exception(error: BaseException, secrets: Iterable[str]) -> BaseException:
    """`error` with its message and every exception it chains to masked, in place.

    A chained exception whose text still shows a secret after masking (its message is built
    from attributes, not from its arguments) is cut off the chain, so a traceback cannot show it.
    """
    known = [secret for secret in secrets if secret and len(secret) >= MIN_SECRET_LENGTH]
    if not known:
        return error
    current: BaseException | None = error
    previous: BaseException | None = None
    seen: set[int] = set()
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        masked = redact(text, known)
        if masked != text:
            current.args = (masked,)
            if redact(str(current), known) != str(current) and previous is not None:
                previous.__cause__ = None
                previous.__context__ = None
                previous.__suppress_context__ = True
                break
        previous = current
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return error
