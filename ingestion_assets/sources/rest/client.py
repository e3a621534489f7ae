"""GET JSON with timeouts and bounded retries; errors name the source, never a secret.

What a fault means decides what happens: 429, 5xx, timeouts, dropped connections, bodies cut off
and bodies that are not JSON are passing and retried with exponential backoff and full jitter,
honouring `Retry-After`, within an attempt count and a time limit; 401/403 and other 4xx are not
(a 401 first gets the authenticator one chance to refresh its token). JSON is decoded strictly in
its declared charset: bytes that are not text fail the run instead of being replaced or guessed.
The client is shared by every stream of a run (one session, one token), so the counters a stream
reports are passed in by its reader.
"""

from __future__ import annotations

import datetime
import email.message
import email.utils
import json
import random
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

import requests

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.rest.auth import ApiSession, Authenticator
from ingestion_assets.sources.rest.redaction import redact, redact_url

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# a Retry-After of 0 or a past date still waits this long, so a busy server is not hammered
MIN_RETRY_AFTER_SECONDS = 0.1
BODY_EXCERPT_CHARACTERS = 200


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with exponential backoff and full jitter."""

    max_attempts: int = 5
    backoff_seconds: float = 0.5
    max_backoff_seconds: float = 30.0
    max_elapsed_seconds: float = 300.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before attempt `attempt + 1` (Retry-After is honoured, never below 0.1 s)."""
        ceiling = min(self.max_backoff_seconds, self.backoff_seconds * 2 ** (attempt - 1))
        wait = random.uniform(ceiling / 2, ceiling)
        if retry_after is not None:
            wait = max(retry_after, MIN_RETRY_AFTER_SECONDS)
        return wait


def retry_after_seconds(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """`Retry-After` as seconds: a number, or an HTTP date (a past date gives 0)."""
    if not value:
        return None
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    current = now or datetime.datetime.now(datetime.UTC)
    return max(0.0, (moment - current).total_seconds())


@dataclass
class HttpStatistics:
    """Requests and retries of one stream's read, reported as its metadata."""

    requests: int = 0
    retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, retry: bool) -> None:
        """One more request (and one more retry)."""
        with self.lock:
            self.requests += 1
            self.retries += int(retry)


class RestClient:
    """GETs JSON with auth, timeouts and bounded retries; errors name the source, never a secret."""

    def __init__(
        self,
        source_name: str,
        base_url: str,
        auth: Authenticator | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: tuple[float, float] = (10.0, 60.0),
        retry: RetryPolicy | None = None,
        session: ApiSession | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source_name = source_name
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or ApiSession()
        # applied by the session to every request it prepares, redirects and page links included
        self.session.auth = auth
        self._sleep = sleep

    def url_for(self, path: str) -> str:
        """An endpoint path (or absolute URL) below the base URL."""
        return urljoin(self.base_url, path.lstrip("/")) if "://" not in path else path

    def _shown(self, url: str, params: Mapping[str, str] | None = None) -> str:
        separator = "&" if "?" in url else "?"
        full = url + (separator + urlencode(dict(params)) if params else "")
        return redact_url(full, self._secrets(), self.auth.secret_params if self.auth else ())

    def _secrets(self) -> list[str]:
        # read at each use: an OAuth2 authenticator adds its tokens as it fetches them
        return self.auth.secrets if self.auth is not None else []

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()

    def get_json(
        self, url: str, params: Mapping[str, str], label: str, statistics: HttpStatistics
    ) -> tuple[Any, requests.Response]:
        """GET and parse JSON, retrying 429/5xx/timeouts/drops/broken JSON within the bounds."""
        deadline = time.monotonic() + self.retry.max_elapsed_seconds
        refreshed = False
        last_problem = "no attempt"
        attempt = 0
        while attempt < self.retry.max_attempts:
            attempt += 1
            headers = {"Accept": "application/json", **self.headers}
            statistics.count(retry=attempt > 1)
            retry_after = None
            try:
                response = self.session.get(
                    url, params=params, headers=headers, timeout=self.timeout
                )
            except (
                requests.ConnectionError,
                requests.Timeout,
                # a body cut off mid-transfer (fewer bytes than Content-Length) is a dropped line too
                requests.exceptions.ChunkedEncodingError,
            ) as error:
                last_problem = _describe_transport_error(error)
            except requests.RequestException as error:
                # not a passing fault (a malformed URL, a redirect loop): retrying cannot help
                raise SourceError(
                    f"{label}: GET {self._shown(url, params)} failed: {type(error).__name__}; "
                    "check base_url and the stream's path"
                ) from None
            else:
                if (
                    response.status_code == 401
                    and not refreshed
                    and self.auth is not None
                    and self.auth.refresh(response)
                ):
                    refreshed = True
                    attempt -= 1  # a refreshed token gets a fresh try
                    continue
                if response.status_code in (401, 403):
                    raise SourceError(
                        f"{label}: HTTP {response.status_code} from {self._shown(url, params)}: "
                        f"check credentials for source '{self.source_name}' (auth settings and "
                        "the environment variables they name)"
                    )
                if response.status_code in RETRYABLE_STATUS:
                    last_problem = f"HTTP {response.status_code}"
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                elif response.status_code >= 400:
                    raise SourceError(
                        f"{label}: HTTP {response.status_code} from {self._shown(url, params)}: "
                        f"{self._excerpt(response)}"
                    )
                else:
                    try:
                        return self._json(response, label, url, params), response
                    except ValueError:
                        kind = response.headers.get("Content-Type", "no content type")
                        last_problem = (
                            f"HTTP {response.status_code} with a body that is not JSON ({kind}): "
                            f"{self._excerpt(response)}"
                        )
            if attempt >= self.retry.max_attempts:
                break
            wait = self.retry.backoff(attempt, retry_after)
            if time.monotonic() + wait > deadline:
                last_problem += f"; the next wait ({wait:.1f} s) would pass the time limit"
                break
            self._sleep(wait)
        raise SourceError(
            f"{label}: GET {self._shown(url, params)} failed after {attempt} attempt(s): "
            f"{last_problem}. Nothing was written; re-run the partition when the API is healthy "
            f"(retries: source '{self.source_name}' `retries`)."
        )

    def _json(
        self, response: requests.Response, label: str, url: str, params: Mapping[str, str]
    ) -> Any:
        """The body parsed as JSON (ValueError if it is not): JSON whose bytes are not valid text
        in its charset fails here, never replaced by U+FFFD or guessed in another encoding."""
        charset = _declared_charset(response) or "utf-8"
        try:
            text = response.content.decode(charset)
        except LookupError:
            raise SourceError(
                f"{label}: GET {self._shown(url, params)} declares the unknown charset "
                f"'{charset}' in its Content-Type; nothing was written. Fix the API's Content-Type "
                "(JSON is UTF-8)."
            ) from None
        except UnicodeDecodeError as error:
            # a body that is no JSON at all (an error page, a body cut off) is retried as such
            json.loads(response.content.decode(charset, "surrogateescape"))
            bad = response.content[error.start : error.end]
            raise SourceError(
                f"{label}: GET {self._shown(url, params)} answered bytes that are not {charset} "
                f"text ({bad!r} at byte {error.start}); nothing was written. JSON must be UTF-8 "
                "(RFC 8259): fix the text at the API, or have the API declare its real encoding "
                "in Content-Type (`application/json; charset=...`)."
            ) from None
        body = json.loads(text)
        if _ESCAPED_SURROGATE.search(text):
            try:
                json.dumps(body, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError as error:
                raise SourceError(
                    f"{label}: GET {self._shown(url, params)} answered a JSON string with the "
                    f"escape of a lone surrogate ({error.object[error.start]!r}), which is no "
                    "Unicode text and cannot be stored; nothing was written. Fix the text at the "
                    "API (a surrogate escape must be half of a pair, e.g. \\ud83d\\ude00)."
                ) from None
        return body

    def _excerpt(self, response: requests.Response) -> str:
        # redact before cutting: a secret straddling the cut would otherwise show its first part
        text = " ".join(redact(response.text, self._secrets()).split())
        return text[:BODY_EXCERPT_CHARACTERS] or "(empty body)"


# `\ud800`..`\udfff` in JSON text: half of a surrogate pair, or a lone one
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _declared_charset(response: requests.Response) -> str | None:
    message = email.message.Message()
    message["Content-Type"] = response.headers.get("Content-Type", "")
    return message.get_content_charset()


def _describe_transport_error(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"the connection broke in the middle of the response ({type(error).__name__})"
    return f"connection failed ({type(error).__name__})"
