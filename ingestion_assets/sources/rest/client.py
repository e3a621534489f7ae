"""GET JSON with timeouts and bounded retries; errors name the source, never a secret.

What a fault means decides what happens: 429, 5xx, timeouts, dropped connections, bodies cut off
and bodies that are not JSON are passing and retried with exponential backoff and full jitter,
honouring `Retry-After`, within an attempt count and a time limit; 401/403 and other 4xx are not
(a 401 first gets the authenticator one chance to refresh its token). JSON is decoded strictly in
its declared charset: bytes that are not text fail the run instead of being replaced or guessed.
A UTF-8 body is parsed by orjson (1.0 ms for a demo page of 1,000 records, `json` 3.0 ms), which
gives `json`'s values and is as strict; a body it refuses, or one with 20 digits in a row (or a minus
and 19: orjson reads an integer beyond 64 bits as a float), goes to `json`, which names the fault.
The client is shared by every stream of a run (one session, one token), so the counters a stream
reports are passed in by its reader, and so are the stream's limits (`RequestLimits`).

Every response is read as a stream, under a whole-response deadline: `requests`' read timeout
bounds each wait for bytes only, so a server that drips a byte a second (of its headers or of its
body) would hold a run for as long as it likes; a timer shuts the request's socket when the
deadline passes (a passing fault, retried), and a body larger than the size limit fails at once.
The socket is known from the moment the request is sent: the sessions' connection classes record
it for the request that uses them (`DeadlineAdapter`). Redirects are followed here, not by
`requests`, so that every hop is checked: the API's own origin gets the session (credentials,
cookies); an origin the stream allows gets a bare request (no credential, no API key, no
cookie); any other origin fails the read.
"""

from __future__ import annotations

import contextlib
import datetime
import email.message
import email.utils
import http.cookiejar
import json
import logging
import random
import re
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urljoin

import orjson
import requests
import requests.adapters
import urllib3
import urllib3.connection

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.rest.auth import (
    ApiSession,
    Authenticator,
    CredentialsRefusedError,
    Origin,
    origin_of,
    without_params,
)
from ingestion_assets.sources.rest.redaction import redact, redact_url
from ingestion_assets.specs import DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_RESPONSE_DEADLINE_SECONDS

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# a Retry-After of 0 or a past date still waits this long, so a busy server is not hammered
MIN_RETRY_AFTER_SECONDS = 0.1
BODY_EXCERPT_CHARACTERS = 200
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 10
CHUNK_BYTES = 64 * 1024


class UnexpectedBodyError(ValueError):
    """A well-formed JSON body that is not what the stream expects (an error object, a notice)."""


class ResponseTooLargeError(SourceError):
    """A response body larger than the stream's `max_response_bytes`."""


class HttpStatusError(SourceError):
    """The API answered an error status that a retry cannot change (a 4xx but 401/403)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class UnreachableError(SourceError):
    """No attempt of a request got an answer: connection refused, no such host, timeouts."""


class ForeignOriginError(SourceError):
    """A redirect or next-page link to an origin the stream does not allow."""


class _DeadlinePassed(Exception):
    """The whole response did not arrive within its deadline."""


# the connections the current thread's request has used, for its deadline to shut
_current_request = threading.local()


class _RequestConnections:
    """The sockets one request (with its redirects) went through."""

    def __init__(self) -> None:
        self.sockets: list[socket.socket] = []

    def shut(self) -> None:
        """Shut them: a read blocked on a dripping server wakes and fails."""
        for sock in list(self.sockets):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _recorded(connection: Any) -> None:
    # the socket is known once the request is sent; a response that says `Connection: close`
    # takes it over and the connection forgets it, so it is kept here
    holder = getattr(_current_request, "holder", None)
    sock = getattr(connection, "sock", None)
    if holder is not None and isinstance(sock, socket.socket):
        holder.sockets.append(sock)


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def getresponse(self) -> Any:
        _recorded(self)
        return super().getresponse()


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def getresponse(self) -> Any:
        _recorded(self)
        return super().getresponse()


class _WatchedHTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class DeadlineAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter, with connections that record their socket for the request that uses
    them, so that its deadline can shut it while the headers are still arriving."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPConnectionPool,
            "https": _WatchedHTTPSConnectionPool,
        }


def _watched(session: requests.Session) -> requests.Session:
    for prefix in ("http://", "https://"):
        session.mount(prefix, DeadlineAdapter())
    return session


@dataclass(frozen=True)
class RequestLimits:
    """One stream's bounds on each of its requests: time, size, and where links may lead."""

    deadline_seconds: float = DEFAULT_RESPONSE_DEADLINE_SECONDS
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    allowed_origins: frozenset[Origin] = frozenset()

    @classmethod
    def of(
        cls,
        deadline_seconds: float | None,
        max_bytes: int | None,
        allowed_origins: Iterable[str] = (),
    ) -> RequestLimits:
        """Limits from a stream's settings (None: the default)."""
        return cls(
            deadline_seconds or DEFAULT_RESPONSE_DEADLINE_SECONDS,
            max_bytes or DEFAULT_MAX_RESPONSE_BYTES,
            frozenset(origin_of(origin) for origin in allowed_origins),
        )


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


# loggers that write request lines (`GET /items?api_key=... HTTP/1.1` at DEBUG) of their own
HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "requests")


class _MaskedLogRecords(logging.Filter):
    """Masks a client's secrets in the records of the HTTP libraries' own loggers."""

    def __init__(self, secrets: Callable[[], list[str]]) -> None:
        super().__init__()
        # weak: a client nobody closed is not kept alive by the loggers
        self.secrets = weakref.WeakMethod(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        secrets = self.secrets()
        if secrets is None:
            return True
        text = record.getMessage()
        masked = redact(text, secrets())
        if masked != text:
            record.msg, record.args = masked, ()
        return True


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
        logger: logging.Logger | None = None,
    ) -> None:
        self.source_name = source_name
        # where each retry is reported as it happens (the run's log, when a resource passes it)
        self.logger = logger or logging.getLogger(__name__)
        self.base_url = base_url.rstrip("/") + "/"
        self.origin = origin_of(self.base_url)
        self.auth = auth
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = _watched(session or ApiSession())
        # applied by the session to every request it prepares for the API's origin
        self.session.auth = auth
        # requests to another origin a stream allows: prepared bare (no auth, no cookie, no
        # .netrc) and sent through a session that keeps no cookie either
        self._bare = _watched(requests.Session())
        self._bare.cookies.set_policy(http.cookiejar.DefaultCookiePolicy(allowed_domains=[]))
        self._sleep = sleep
        # urllib3 logs each request line, an API key in the query with it, at DEBUG
        self._log_filter = _MaskedLogRecords(self.secrets)
        for name in HTTP_LOGGERS:
            logging.getLogger(name).addFilter(self._log_filter)

    def url_for(self, path: str) -> str:
        """An endpoint path (or absolute URL) below the base URL."""
        return urljoin(self.base_url, path.lstrip("/")) if "://" not in path else path

    def shown(self, url: str, params: Mapping[str, str] | None = None) -> str:
        """A request's URL as messages show it: secrets masked."""
        separator = "&" if "?" in url else "?"
        full = url + (separator + urlencode(dict(params)) if params else "")
        return redact_url(full, self.secrets(), self._secret_params())

    def secrets(self) -> list[str]:
        """Every secret the client sends (read at each use: OAuth2 tokens arrive as it runs)."""
        return self.auth.secrets if self.auth is not None else []

    def _secret_params(self) -> tuple[str, ...]:
        return self.auth.secret_params if self.auth is not None else ()

    def close(self) -> None:
        """Close the session's pooled connections."""
        self.session.close()
        self._bare.close()
        for name in HTTP_LOGGERS:
            logging.getLogger(name).removeFilter(self._log_filter)

    def get_json(
        self,
        url: str,
        params: Mapping[str, str],
        label: str,
        statistics: HttpStatistics,
        limits: RequestLimits | None = None,
        expect: Callable[[Any], None] | None = None,
    ) -> tuple[Any, requests.Response]:
        """GET and parse JSON, retrying 429/5xx/timeouts/drops/broken JSON within the bounds.

        `expect` raises UnexpectedBodyError for JSON that is not what the caller can use (an
        error object answered with 200): such a body is retried like one that is not JSON."""
        limits = limits or RequestLimits()
        give_up_at = time.monotonic() + self.retry.max_elapsed_seconds
        refreshed = False
        last_problem = "no attempt"
        answered = False
        attempt = 0
        while attempt < self.retry.max_attempts:
            attempt += 1
            headers = {"Accept": "application/json", **self.headers}
            statistics.count(retry=attempt > 1)
            retry_after = None
            deadline_at = min(time.monotonic() + limits.deadline_seconds, give_up_at)
            try:
                response = self._fetch(url, params, headers, limits, deadline_at, label)
            except _DeadlinePassed:
                last_problem = (
                    f"the whole response did not arrive within {limits.deadline_seconds:g} s "
                    "(`response_deadline_seconds`)"
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
                    f"{label}: GET {self.shown(url, params)} failed: {type(error).__name__}; "
                    "check base_url and the stream's path"
                ) from None
            else:
                answered = True
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
                    raise CredentialsRefusedError(
                        f"{label}: HTTP {response.status_code} from {self.shown(url, params)}: "
                        f"check credentials for source '{self.source_name}' (auth settings and "
                        "the environment variables they name)",
                        response.status_code,
                    )
                if response.status_code in RETRYABLE_STATUS:
                    last_problem = f"HTTP {response.status_code}"
                    retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                elif response.status_code >= 400:
                    raise HttpStatusError(
                        f"{label}: HTTP {response.status_code} from {self.shown(url, params)}: "
                        f"{self._excerpt(response)}",
                        response.status_code,
                    )
                else:
                    try:
                        body = self._json(response, label, url, params)
                        if expect is not None:
                            expect(body)
                        return body, response
                    except UnexpectedBodyError as error:
                        last_problem = (
                            f"HTTP {response.status_code} with JSON that is no page of records: "
                            f"{redact(str(error), self.secrets())}"
                        )
                    except ValueError:
                        kind = response.headers.get("Content-Type", "no content type")
                        last_problem = (
                            f"HTTP {response.status_code} with a body that is not JSON ({kind}): "
                            f"{self._excerpt(response)}"
                        )
            if attempt >= self.retry.max_attempts:
                break
            wait = self.retry.backoff(attempt, retry_after)
            if time.monotonic() + wait > give_up_at:
                last_problem += f"; the next wait ({wait:.1f} s) would pass the time limit"
                break
            self.logger.warning(
                redact(
                    f"{label}: GET {self.shown(url, params)}: {last_problem}; retrying in "
                    f"{wait:.1f} s (attempt {attempt + 1} of {self.retry.max_attempts})",
                    self.secrets(),
                )
            )
            self._sleep(wait)
        # no answer at all: the API is not reachable (the same for every stream of the source)
        failed = SourceError if answered else UnreachableError
        raise failed(
            f"{label}: GET {self.shown(url, params)} failed after {attempt} attempt(s): "
            f"{last_problem}. Nothing was written; re-run the partition when the API is healthy "
            f"(retries: source '{self.source_name}' `retries`)."
        )

    def _fetch(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        limits: RequestLimits,
        deadline_at: float,
        label: str,
    ) -> requests.Response:
        """One attempt: GET, redirects followed hop by hop, the body read within the limits;
        headers and body both within the deadline."""
        holder = _RequestConnections()
        passed = threading.Event()

        def cut() -> None:
            passed.set()
            holder.shut()

        # one timer for the whole response: the connections the request used are shut at the
        # deadline, whether the headers or the body are arriving
        timer = threading.Timer(max(0.0, deadline_at - time.monotonic()), cut)
        timer.daemon = True
        timer.start()
        _current_request.holder = holder
        try:
            response = self._follow(url, params, headers, limits, deadline_at, label, passed)
        except (requests.RequestException, OSError):
            if passed.is_set():
                raise _DeadlinePassed from None
            raise
        finally:
            _current_request.holder = None
            timer.cancel()
        if passed.is_set():
            # the socket was shut at the deadline: a body without a length may look complete
            raise _DeadlinePassed
        return response

    def _follow(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        limits: RequestLimits,
        deadline_at: float,
        label: str,
        passed: threading.Event,
    ) -> requests.Response:
        current, current_params = url, dict(params)
        for _ in range(MAX_REDIRECTS + 1):
            response = self._send(current, current_params, headers, limits, deadline_at, label)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUS or not location:
                self._read_body(response, limits, label, current, current_params, passed)
                return response
            response.close()
            current, current_params = urljoin(response.url, location), {}
        raise SourceError(
            f"{label}: GET {self.shown(url, params)} was redirected more than {MAX_REDIRECTS} "
            "times; nothing was written. Check base_url and the stream's path."
        )

    def _send(
        self,
        url: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        limits: RequestLimits,
        deadline_at: float,
        label: str,
    ) -> requests.Response:
        """One request, as its origin allows: the API's own gets the session, an allowed other
        origin a bare request, any other origin none."""
        # a key the API echoed into a link is dropped; the authenticator adds it for its origin
        url = without_params(url, self._secret_params())
        remaining = deadline_at - time.monotonic()
        if remaining <= 0:
            raise _DeadlinePassed
        timeout = (self.timeout[0], min(self.timeout[1], remaining))
        origin = origin_of(url)
        if origin == self.origin:
            return self.session.get(
                url,
                params=params,
                headers=dict(headers),
                timeout=timeout,
                stream=True,
                allow_redirects=False,
            )
        shown = self.shown(url, params)
        if origin not in limits.allowed_origins:
            raise ForeignOriginError(
                f"{label}: the API sent the read to {_origin_text(origin)} ({shown}), another "
                f"origin than its own ({_origin_text(self.origin)}); nothing was sent there. If "
                "that origin is trusted, list it in the stream's `allowed_origins` (it is sent "
                "no credential, API key or cookie); otherwise fix the API's links or the "
                "stream's path."
            )
        prepared = requests.Request("GET", url, params=dict(params), headers=dict(headers))
        ready = prepared.prepare()
        if ready.url is not None and redact(ready.url, self.secrets()) != ready.url:
            raise ForeignOriginError(
                f"{label}: the link to {_origin_text(origin)} ({shown}) carries one of the "
                "source's credentials; it was not followed. Fix the API's links."
            )
        return self._bare.send(ready, timeout=timeout, stream=True, allow_redirects=False)

    def _read_body(
        self,
        response: requests.Response,
        limits: RequestLimits,
        label: str,
        url: str,
        params: Mapping[str, str],
        passed: threading.Event,
    ) -> None:
        """Read the body into the response within the size limit (the request's deadline timer,
        `passed` once it fired, shuts the socket of a body that drips)."""
        declared = response.headers.get("Content-Length", "").strip()
        if declared.isdigit() and int(declared) > limits.max_bytes:
            response.close()
            raise self._too_large(label, url, params, limits, f"declares {int(declared)} bytes")
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_content(CHUNK_BYTES):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise self._too_large(label, url, params, limits, f"sent over {size} bytes")
                chunks.append(chunk)
                if passed.is_set():
                    raise _DeadlinePassed
        finally:
            response.close()
        response._content = b"".join(chunks)

    def _too_large(
        self,
        label: str,
        url: str,
        params: Mapping[str, str],
        limits: RequestLimits,
        what: str,
    ) -> ResponseTooLargeError:
        return ResponseTooLargeError(
            f"{label}: GET {self.shown(url, params)} {what}, more than the stream's "
            f"max_response_bytes ({limits.max_bytes} bytes); nothing was written. Ask for "
            "smaller pages (the pagination's limit or size), or raise max_response_bytes on "
            "the stream or the source if such pages are right."
        )

    def _json(
        self, response: requests.Response, label: str, url: str, params: Mapping[str, str]
    ) -> Any:
        """The body parsed as JSON (ValueError if it is not): JSON whose bytes are not valid text
        in its charset fails here, never replaced by U+FFFD or guessed in another encoding."""
        charset = _declared_charset(response) or "utf-8"
        content = response.content
        if _UTF8.fullmatch(charset) and not _LONG_DIGITS.search(content):
            try:
                # ~3x faster than `json`, the same values, and as strict (bytes that are not
                # UTF-8, a lone surrogate escape, NaN fail it); any failure takes the path below,
                # which parses what `json` can and names the fault as it always did
                return orjson.loads(content)
            except orjson.JSONDecodeError:
                pass
        try:
            text = response.content.decode(charset)
        except LookupError:
            raise SourceError(
                f"{label}: GET {self.shown(url, params)} declares the unknown charset "
                f"'{charset}' in its Content-Type; nothing was written. Fix the API's Content-Type "
                "(JSON is UTF-8)."
            ) from None
        except UnicodeDecodeError as error:
            # a body that is no JSON at all (an error page, a body cut off) is retried as such
            json.loads(response.content.decode(charset, "surrogateescape"))
            bad = response.content[error.start : error.end]
            raise SourceError(
                f"{label}: GET {self.shown(url, params)} answered bytes that are not {charset} "
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
                    f"{label}: GET {self.shown(url, params)} answered a JSON string with the "
                    f"escape of a lone surrogate ({error.object[error.start]!r}), which is no "
                    "Unicode text and cannot be stored; nothing was written. Fix the text at the "
                    "API (a surrogate escape must be half of a pair, e.g. \\ud83d\\ude00)."
                ) from None
        return body

    def _excerpt(self, response: requests.Response) -> str:
        # redact before cutting: a secret straddling the cut would otherwise show its first part
        text = " ".join(redact(response.text, self.secrets()).split())
        return text[:BODY_EXCERPT_CHARACTERS] or "(empty body)"


# orjson reads an integer beyond 64 bits as a float: a body with 20 digits in a row, or a minus
# and 19 (below -2**63: -9223372036854775809 has 19 digits), goes to `json`, whose integers are
# exact (so does a long fraction, or digits in a text, which orjson would have read right)
_LONG_DIGITS = re.compile(rb"[0-9]{20}|-[0-9]{19}")
_UTF8 = re.compile(r"utf-?8", re.IGNORECASE)
# `\ud800`..`\udfff` in JSON text: half of a surrogate pair, or a lone one
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")


def _declared_charset(response: requests.Response) -> str | None:
    message = email.message.Message()
    message["Content-Type"] = response.headers.get("Content-Type", "")
    return message.get_content_charset()


def _origin_text(origin: Origin) -> str:
    scheme, host, port = origin
    return f"{scheme}://{host}:{port}" if port is not None else f"{scheme}://{host}"


def _describe_transport_error(error: requests.RequestException) -> str:
    if isinstance(error, requests.Timeout):
        return f"timed out ({type(error).__name__})"
    if isinstance(error, requests.exceptions.ChunkedEncodingError):
        return f"the connection broke in the middle of the response ({type(error).__name__})"
    return f"connection failed ({type(error).__name__})"
