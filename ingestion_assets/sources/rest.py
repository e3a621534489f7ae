"""Read a REST stream's partition window as Arrow batches: auth, retries, pagination, coercion."""

from __future__ import annotations

import base64
import datetime
import decimal
import email.message
import email.utils
import json
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import requests

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources.base import ChangedDays, DeclaredColumn, Source
from ingestion_assets.sources.stream import RejectedRecord, SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import (
    FIELD_TYPE,
    CursorPagination,
    DatasetSpec,
    LinkHeaderPagination,
    NextUrlPagination,
    OffsetPagination,
    PagePagination,
    Pagination,
    StreamSpec,
)

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
# a Retry-After of 0 or a past date still waits this long, so a busy server is not hammered
MIN_RETRY_AFTER_SECONDS = 0.1
TOKEN_EXPIRY_MARGIN_SECONDS = 30.0
BODY_EXCERPT_CHARACTERS = 200


class PaginationError(SourceError):
    """The API's pages do not add up: a loop, a changing total, or too many pages."""


# ---- JSON paths and window templates -----------------------------------------------------------


def json_path(body: Any, path: str) -> Any:
    """The value at a dot path (`data.items`, `meta.0.total`); None when any step is missing."""
    value = body
    for part in filter(None, path.split(".")):
        if isinstance(value, Mapping):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


class _Instant(datetime.datetime):
    """A window bound in a template: ISO 8601 by default, strftime with a format spec."""

    def __format__(self, spec: str) -> str:
        return self.strftime(spec) if spec else self.isoformat()

    def __str__(self) -> str:
        return self.isoformat()


def _instant(value: datetime.datetime) -> _Instant:
    return _Instant(
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond,
        tzinfo=value.tzinfo,
    )


def window_params(
    params: Mapping[str, str], window: PartitionWindow | None, label: str
) -> dict[str, str]:
    """Query parameters with `{start}`, `{end}`, `{end_inclusive}` filled from the window."""
    values: dict[str, Any] = {}
    if window is not None:
        values = {
            "start": _instant(window.start),
            "end": _instant(window.end),
            "end_inclusive": _instant(window.end - datetime.timedelta(microseconds=1)),
        }
    resolved: dict[str, str] = {}
    for name, template in params.items():
        try:
            resolved[name] = template.format(**values)
        except (KeyError, IndexError, ValueError) as error:
            available = ", ".join("{" + key + "}" for key in values) or "none (unpartitioned)"
            raise SourceError(
                f"{label}: query parameter {name}='{template}' cannot be filled ({error}); "
                f"placeholders available: {available}"
            ) from None
    return resolved


# ---- secrets never leave this module in clear ---------------------------------------------------


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


# ---- authentication ----------------------------------------------------------------------------


class Authenticator:
    """Adds credentials to requests; may refresh them once after a 401."""

    secret_params: tuple[str, ...] = ()

    def __init__(self, secrets: Sequence[str] = ()) -> None:
        self.secrets = [secret for secret in secrets if secret]

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        """Put the credentials on one request."""

    def refresh(self) -> bool:
        """Get new credentials after a 401; False when there is nothing to refresh."""
        return False


class BasicAuthenticator(Authenticator):
    """HTTP basic authentication."""

    def __init__(self, username: str, password: str) -> None:
        super().__init__([password])
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        self._header = f"Basic {token}"
        self.secrets.append(token)

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        headers["Authorization"] = self._header


class BearerAuthenticator(Authenticator):
    """A static bearer token."""

    def __init__(self, token: str) -> None:
        super().__init__([token])
        self._token = token

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        headers["Authorization"] = f"Bearer {self._token}"


class ApiKeyAuthenticator(Authenticator):
    """An API key in a header or a query parameter."""

    def __init__(self, name: str, value: str, location: str) -> None:
        super().__init__([value])
        self._name, self._value, self._location = name, value, location
        if location == "query":
            self.secret_params = (name,)

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        target = params if self._location == "query" else headers
        target[self._name] = self._value


class OAuth2ClientCredentialsAuthenticator(Authenticator):
    """OAuth2 client credentials: fetches a token, refreshes it before expiry or after a 401."""

    def __init__(
        self,
        session: requests.Session,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None,
        credentials_in: str,
        timeout: tuple[float, float],
        label: str,
    ) -> None:
        super().__init__([client_secret])
        self._session, self._token_url = session, token_url
        self._client_id, self._client_secret = client_id, client_secret
        self._scope, self._credentials_in, self._timeout = scope, credentials_in, timeout
        self._label = label
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock = threading.Lock()
        self.token_requests = 0

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials"}
        if self._scope:
            data["scope"] = self._scope
        auth = None
        if self._credentials_in == "basic":
            auth = (self._client_id, self._client_secret)
        else:
            data.update(client_id=self._client_id, client_secret=self._client_secret)
        self.token_requests += 1
        try:
            response = self._session.post(
                self._token_url, data=data, auth=auth, timeout=self._timeout
            )
        except requests.RequestException as error:
            raise SourceError(
                f"{self._label}: the OAuth2 token request to "
                f"{redact_url(self._token_url, self.secrets)} failed: "
                f"{redact(type(error).__name__, self.secrets)}"
            ) from None
        if response.status_code in (400, 401, 403):
            raise SourceError(
                f"{self._label}: the token endpoint refused the client credentials "
                f"(HTTP {response.status_code}); check credentials for {self._label} (client_id "
                "and the client secret's environment variable)"
            )
        if not response.ok:
            raise SourceError(
                f"{self._label}: the token endpoint answered HTTP {response.status_code}"
            )
        try:
            body = response.json()
            token = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise SourceError(
                f"{self._label}: the token endpoint's answer has no access_token"
            ) from None
        self.secrets.append(token)
        self._token = token
        # no expires_in: an hour, the common default; 0 means already expired
        expires_in = float(body["expires_in"]) if body.get("expires_in") is not None else 3600.0
        self._expires_at = time.monotonic() + max(0.0, expires_in - TOKEN_EXPIRY_MARGIN_SECONDS)

    def apply(self, headers: dict[str, str], params: dict[str, str]) -> None:
        with self._lock:
            if self._token is None or time.monotonic() >= self._expires_at:
                self._fetch()
            headers["Authorization"] = f"Bearer {self._token}"

    def refresh(self) -> bool:
        with self._lock:
            self._fetch()
        return True


# ---- HTTP with retries --------------------------------------------------------------------------


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
    """Counters a run reports as metadata."""

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
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.source_name = source_name
        self.base_url = base_url.rstrip("/") + "/"
        self.auth = auth or Authenticator()
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        self.statistics = HttpStatistics()
        self._sleep = sleep

    def url_for(self, path: str) -> str:
        """An endpoint path (or absolute URL) below the base URL."""
        return urljoin(self.base_url, path.lstrip("/")) if "://" not in path else path

    def _shown(self, url: str, params: Mapping[str, str] | None = None) -> str:
        separator = "&" if "?" in url else "?"
        full = url + (separator + urlencode(dict(params)) if params else "")
        return redact_url(full, self.auth.secrets, self.auth.secret_params)

    def get_json(
        self, url: str, params: Mapping[str, str], label: str
    ) -> tuple[Any, requests.Response]:
        """GET and parse JSON, retrying 429/5xx/timeouts/drops/broken JSON within the bounds."""
        deadline = time.monotonic() + self.retry.max_elapsed_seconds
        refreshed = False
        last_problem = "no attempt"
        attempt = 0
        while attempt < self.retry.max_attempts:
            attempt += 1
            headers = {"Accept": "application/json", **self.headers}
            request_params = dict(params)
            self.auth.apply(headers, request_params)
            self.statistics.count(retry=attempt > 1)
            retry_after = None
            try:
                response = self.session.get(
                    url, params=request_params, headers=headers, timeout=self.timeout
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
                if response.status_code == 401 and not refreshed and self.auth.refresh():
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
        text = " ".join(redact(response.text, self.auth.secrets).split())
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


# ---- paginators --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PageRequest:
    """One page's URL and query parameters."""

    url: str
    params: dict[str, str]


class Paginator(ABC):
    """Pagination state for one stream run: first request, next request, or all the rest."""

    def __init__(self, max_pages: int, label: str) -> None:
        self.max_pages = max_pages
        self.label = label

    def first(self, request: PageRequest) -> PageRequest:
        """The first page's request."""
        return request

    @abstractmethod
    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        """The next page's request, or None after the last page."""

    def remaining(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> list[PageRequest] | None:
        """After the first page: every other page's request when the total is known, else None."""
        return None

    def check(self, body: Any, response: requests.Response) -> None:  # noqa: B027 - optional hook
        """Raise if a page contradicts an earlier one (e.g. the total changed)."""


def _total(
    body: Any, response: requests.Response, path: str | None, header: str | None
) -> int | None:
    value: Any = None
    if path:
        value = json_path(body, path)
    if value is None and header:
        value = response.headers.get(header)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


class _CountingPaginator(Paginator):
    """Shared by offset and page pagination: a known total, a flag, or a short page ends it."""

    total_path: str | None
    total_header: str | None
    has_more_path: str | None
    page_size: int

    def __init__(self, max_pages: int, label: str) -> None:
        super().__init__(max_pages, label)
        self.first_total: int | None = None

    def check(self, body: Any, response: requests.Response) -> None:
        total = _total(body, response, self.total_path, self.total_header)
        if total is None:
            return
        if self.first_total is None:
            self.first_total = total
            # an absurd total fails now, not after max_pages requests one by one
            self._page_count()
        elif total != self.first_total:
            raise PaginationError(
                f"{self.label}: the API's total changed from {self.first_total} to {total} "
                "during the run, so pages would overlap or skip records; nothing was written. "
                "Re-run the partition once the source is quiet for it."
            )

    def _ends(self, body: Any, response: requests.Response, records: int, fetched: int) -> bool:
        self.check(body, response)
        more = json_path(body, self.has_more_path) if self.has_more_path is not None else None
        if more is False or records == 0:
            return True
        if self.first_total is not None:
            return fetched >= self.first_total
        # a short page ends the stream, unless the API says there is more
        return records < self.page_size and more is not True

    def _page_count(self) -> int:
        assert self.first_total is not None
        pages = -(-self.first_total // self.page_size)
        if pages > self.max_pages:
            raise PaginationError(
                f"{self.label}: the API reports {self.first_total} records, {pages} pages of "
                f"{self.page_size}, more than max_pages ({self.max_pages}); raise max_pages or "
                "the page size if that is right"
            )
        return pages


class OffsetPaginator(_CountingPaginator):
    """`offset`/`limit` parameters."""

    def __init__(self, spec: OffsetPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec
        self.total_path, self.total_header = spec.total_path, spec.total_header
        self.has_more_path, self.page_size = spec.has_more_path, spec.limit

    def _request(self, request: PageRequest, offset: int) -> PageRequest:
        params = {
            **request.params,
            self.spec.offset_param: str(offset),
            self.spec.limit_param: str(self.spec.limit),
        }
        return PageRequest(request.url, params)

    def first(self, request: PageRequest) -> PageRequest:
        return self._request(request, self.spec.start_offset)

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        # advance by what arrived: an API that caps the page size below `limit` loses nothing
        offset = int(request.params[self.spec.offset_param]) + records
        if self._ends(body, response, records, offset - self.spec.start_offset):
            return None
        return self._request(request, offset)

    def remaining(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> list[PageRequest] | None:
        if self._ends(body, response, records, records):
            return []
        if self.first_total is None or self.has_more_path is not None:
            return None
        if records < self.spec.limit:
            # the API capped the page size: the offsets of the other pages are not known
            return None
        start = self.spec.start_offset
        return [
            self._request(request, start + page * self.spec.limit)
            for page in range(1, self._page_count())
        ]


class PageNumberPaginator(_CountingPaginator):
    """`page`/`page_size` parameters."""

    def __init__(self, spec: PagePagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec
        self.total_path, self.total_header = spec.total_path, spec.total_header
        self.has_more_path, self.page_size = spec.has_more_path, spec.size
        self.total_pages: int | None = None

    def _request(self, request: PageRequest, page: int) -> PageRequest:
        params = {
            **request.params,
            self.spec.page_param: str(page),
            self.spec.size_param: str(self.spec.size),
        }
        return PageRequest(request.url, params)

    def first(self, request: PageRequest) -> PageRequest:
        return self._request(request, self.spec.first_page)

    def check(self, body: Any, response: requests.Response) -> None:
        self._note_pages(body)
        super().check(body, response)

    def _note_pages(self, body: Any) -> None:
        if not self.spec.total_pages_path:
            return
        value = json_path(body, self.spec.total_pages_path)
        pages = int(value) if isinstance(value, int | str) and str(value).isdigit() else None
        if pages is not None and self.total_pages is not None and pages != self.total_pages:
            raise PaginationError(
                f"{self.label}: the API's total changed from {self.total_pages} to {pages} "
                "pages during the run, so pages would overlap or skip records; nothing was "
                "written. Re-run the partition once the source is quiet for it."
            )
        if self.total_pages is None:
            self.total_pages = pages
            if self.total_pages is not None and self.total_pages > self.max_pages:
                raise PaginationError(
                    f"{self.label}: the API reports {self.total_pages} pages, more than "
                    f"max_pages ({self.max_pages})"
                )

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        self._note_pages(body)
        page = int(request.params[self.spec.page_param])
        pages_done = page - self.spec.first_page + 1
        if self.total_pages is not None and pages_done >= self.total_pages:
            return None
        if self._ends(body, response, records, pages_done * self.spec.size):
            return None
        return self._request(request, page + 1)

    def remaining(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> list[PageRequest] | None:
        self._note_pages(body)
        if self.total_pages is None:
            if self._ends(body, response, records, self.spec.size):
                return []
            if self.first_total is None or self.has_more_path is not None:
                return None
            pages = self._page_count()
        else:
            pages = self.total_pages
        return [self._request(request, self.spec.first_page + page) for page in range(1, pages)]


class _LoopGuard:
    """Remembers where pagination has been, to stop an API that points back at itself."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.seen: set[str] = set()

    def visit(self, marker: str, what: str) -> None:
        if marker in self.seen:
            raise PaginationError(
                f"{self.label}: the API sent the same {what} twice ({marker[:120]}); its "
                "pagination loops, so the run stops instead of reading pages forever"
            )
        self.seen.add(marker)


class CursorPaginator(Paginator):
    """A continuation token sent back as a parameter."""

    def __init__(self, spec: CursorPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec
        self.guard = _LoopGuard(label)

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        if (
            self.spec.has_more_path is not None
            and json_path(body, self.spec.has_more_path) is False
        ):
            return None
        cursor = json_path(body, self.spec.cursor_path)
        if cursor in (None, "", False):
            return None
        self.guard.visit(str(cursor), "cursor")
        return PageRequest(request.url, {**request.params, self.spec.cursor_param: str(cursor)})


class _FollowingPaginator(Paginator):
    """Follows a URL the API gives for the next page, refusing to visit one twice."""

    what = "next link"

    def __init__(self, max_pages: int, label: str) -> None:
        super().__init__(max_pages, label)
        self.guard = _LoopGuard(label)

    @abstractmethod
    def link(self, body: Any, response: requests.Response) -> str | None:
        """The next page's URL (absolute or relative), or None after the last page."""

    def next(
        self, request: PageRequest, body: Any, response: requests.Response, records: int
    ) -> PageRequest | None:
        link = self.link(body, response)
        if not link:
            return None
        url = urljoin(response.url, link)
        self.guard.visit(url, self.what)
        return PageRequest(url, {})


class LinkHeaderPaginator(_FollowingPaginator):
    """RFC 8288 `Link` headers."""

    def __init__(self, spec: LinkHeaderPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec

    def link(self, body: Any, response: requests.Response) -> str | None:
        link = response.links.get(self.spec.rel, {}).get("url")
        return str(link) if link else None


class NextUrlPaginator(_FollowingPaginator):
    """The next page's URL in the body."""

    what = "next URL"

    def __init__(self, spec: NextUrlPagination, label: str) -> None:
        super().__init__(spec.max_pages, label)
        self.spec = spec

    def link(self, body: Any, response: requests.Response) -> str | None:
        link = json_path(body, self.spec.next_path)
        return str(link) if link else None


def paginator_for(spec: Pagination, label: str) -> Paginator:
    """The paginator class for a pagination spec."""
    if isinstance(spec, OffsetPagination):
        return OffsetPaginator(spec, label)
    if isinstance(spec, PagePagination):
        return PageNumberPaginator(spec, label)
    if isinstance(spec, CursorPagination):
        return CursorPaginator(spec, label)
    if isinstance(spec, LinkHeaderPagination):
        return LinkHeaderPaginator(spec, label)
    return NextUrlPaginator(spec, label)


# ---- records to Arrow --------------------------------------------------------------------------


class RecordError(ValueError):
    """A value that does not fit its declared type."""

    def __init__(self, field_name: str, value: Any, reason: str) -> None:
        super().__init__(f"field {field_name}: {reason}")
        self.field_name, self.value, self.reason = field_name, value, reason


def arrow_field_type(kind: str) -> pa.DataType:
    """A declared field type (`decimal(19,4)`, `timestamp_tz`, ...) as an Arrow type."""
    match = FIELD_TYPE.match(kind)
    if match is None:
        raise ValueError(f"unknown field type {kind}")
    if match.group(2):
        return pa.decimal128(int(match.group(2)), int(match.group(3)))
    return {
        "string": pa.string(),
        "json": pa.string(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamp_tz": pa.timestamp("us", "UTC"),
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
    }[kind]


def _parse_datetime(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time string")
    return datetime.datetime.fromisoformat(value.strip())


def coercer(kind: str, zone: ZoneInfo) -> Callable[[Any], Any]:
    """A function from a JSON value to the Python value Arrow stores for `kind`; raises ValueError."""
    arrow = arrow_field_type(kind)
    if kind == "json":
        return lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True)
    if kind == "string":

        def text(value: Any) -> str:
            if isinstance(value, dict | list):
                raise ValueError("expected text, got a nested object (declare it as json)")
            return value if isinstance(value, str) else json.dumps(value)

        return text
    if kind == "bool":

        def boolean(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise ValueError("expected true or false")

        return boolean
    if pa.types.is_integer(arrow):
        low, high = -(2 ** (arrow.bit_width - 1)), 2 ** (arrow.bit_width - 1) - 1

        def integer(value: Any) -> int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            number = int(value) if not isinstance(value, str) else int(value.strip())
            if not low <= number <= high:
                raise ValueError(f"{number} is out of range for {kind}")
            return number

        return integer
    if pa.types.is_floating(arrow):
        return lambda value: float(value) if not isinstance(value, bool) else _fail("a number")
    if pa.types.is_decimal(arrow):
        exponent = decimal.Decimal(1).scaleb(-arrow.scale)
        limit = decimal.Decimal(10) ** (arrow.precision - arrow.scale)

        def exact(value: Any) -> decimal.Decimal:
            if isinstance(value, bool):
                raise ValueError("expected a decimal number")
            try:
                number = decimal.Decimal(str(value).strip())
            except decimal.InvalidOperation:
                # its own message is `[<class 'decimal.ConversionSyntax'>]`
                raise ValueError("expected a decimal number") from None
            if not number.is_finite():
                raise ValueError("not a finite number")
            try:
                quantized = number.quantize(
                    exponent, context=decimal.Context(traps=[decimal.Inexact])
                )
            except decimal.Inexact:
                raise ValueError(f"{number} has more than {arrow.scale} decimal places") from None
            if abs(quantized) >= limit:
                raise ValueError(f"{number} does not fit decimal({arrow.precision},{arrow.scale})")
            return quantized

        return exact
    if kind == "date":
        return lambda value: datetime.date.fromisoformat(str(value).strip()[:10])
    if kind == "timestamp":

        def local(value: Any) -> datetime.datetime:
            moment = _parse_datetime(value)
            # an instant with an offset becomes the source zone's local time, like a naive column
            return moment.astimezone(zone).replace(tzinfo=None) if moment.tzinfo else moment

        return local

    def instant(value: Any) -> datetime.datetime:
        moment = _parse_datetime(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(datetime.UTC)

    return instant


def _fail(what: str) -> Any:
    raise ValueError(f"expected {what}")


@dataclass
class ConversionStatistics:
    """What happened to the records of a run."""

    records: int = 0
    outside_window: int = 0
    rejected: list[RejectedRecord] = field(default_factory=list)


def _plain_column(
    raw: list[Any], kind: pa.DataType, coerce: Callable[[Any], Any]
) -> pa.Array | None:
    """A column whose values all have the JSON form the declared type expects (integers as
    numbers, text and decimals as strings), converted by Arrow: exact or an error, never rounded.
    Other kinds go value by value through the same coercer the record path uses."""
    present = [value for value in raw if value is not None]
    try:
        if pa.types.is_integer(kind) and all(type(value) is int for value in present):
            return pa.array(raw, kind)
        if pa.types.is_string(kind) and all(type(value) is str for value in present):
            return pa.array(raw, kind)
        if pa.types.is_decimal(kind) and all(type(value) is str for value in present):
            return pa.array(raw, pa.string()).cast(kind)
        return pa.array([None if value is None else coerce(value) for value in raw], kind)
    except (ValueError, TypeError, ArithmeticError, OverflowError, pa.ArrowException):
        return None


class RecordConverter:
    """Records (dicts) -> Arrow batches of the declared schema; bad records fail or are rejected."""

    def __init__(
        self,
        stream: StreamSpec,
        zone: ZoneInfo,
        window: PartitionWindow | None,
        label: str,
    ) -> None:
        assert stream.fields is not None
        self.stream, self.window, self.label = stream, window, label
        self.schema = pa.schema(
            [pa.field(name, arrow_field_type(kind)) for name, kind in stream.fields.items()]
        )
        self.coercers = {name: coercer(kind, zone) for name, kind in stream.fields.items()}
        self.statistics = ConversionStatistics()

    def _key(self, record: Mapping[str, Any]) -> str:
        if not self.stream.primary_key:
            return "(no primary key declared)"
        return ", ".join(f"{name}={record.get(name)!r}" for name in self.stream.primary_key)

    def _in_window(self, value: Any) -> bool:
        if self.window is None or value is None:
            return True
        if isinstance(value, datetime.datetime) and value.tzinfo is not None:
            return bool(self.window.start <= value < self.window.end)
        if isinstance(value, datetime.datetime):
            start = self.window.start.replace(tzinfo=None)
            return bool(start <= value < self.window.end.replace(tzinfo=None))
        return bool(self.window.start.date() <= value < self.window.end.date())

    def convert(self, records: Sequence[Any]) -> pa.RecordBatch:
        """One page's records as a batch; records outside the window are dropped and counted."""
        batch = self._convert_columns(records)
        if batch is not None:
            return batch
        return self._convert_records(records)

    def _convert_columns(self, records: Sequence[Any]) -> pa.RecordBatch | None:
        """The page converted column by column, or None when any value is not in its plain JSON
        form (or fails), so the record-by-record path names the record and field."""
        if not all(type(record) is dict for record in records):
            return None
        arrays = []
        partition_values: list[Any] | None = None
        for field_spec in self.schema:
            name = field_spec.name
            raw = [record.get(name) for record in records]
            if name == self.stream.partition_field:
                if any(value is None for value in raw):
                    return None
                try:
                    partition_values = [self.coercers[name](value) for value in raw]
                except (ValueError, TypeError, ArithmeticError):
                    return None
                arrays.append(pa.array(partition_values, field_spec.type))
                continue
            array = _plain_column(raw, field_spec.type, self.coercers[name])
            if array is None:
                return None
            arrays.append(array)
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self.statistics.records += len(records)
        if partition_values is not None and self.window is not None:
            inside = [self._in_window(value) for value in partition_values]
            outside = inside.count(False)
            if outside:
                self.statistics.outside_window += outside
                batch = batch.filter(pa.array(inside))
        return batch

    def _convert_records(self, records: Sequence[Any]) -> pa.RecordBatch:
        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        partition_field = self.stream.partition_field
        for record in records:
            self.statistics.records += 1
            if not isinstance(record, Mapping):
                self._invalid(record, "(record)", "a record must be a JSON object", None)
                continue
            try:
                values = self._coerce(record)
            except RecordError as error:
                self._invalid(record, error.field_name, error.reason, error.value)
                continue
            if partition_field is not None:
                if values[partition_field] is None:
                    self._invalid(record, partition_field, "the partition field is empty", None)
                    continue
                if not self._in_window(values[partition_field]):
                    self.statistics.outside_window += 1
                    continue
            for name, value in values.items():
                columns[name].append(value)
        return pa.RecordBatch.from_pydict(columns, schema=self.schema)

    def _coerce(self, record: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, coerce in self.coercers.items():
            raw = record.get(name)
            if raw is None:
                values[name] = None
                continue
            try:
                values[name] = coerce(raw)
            except (ValueError, TypeError, ArithmeticError) as error:
                raise RecordError(name, raw, str(error) or type(error).__name__) from None
        return values

    def _invalid(self, record: Any, field_name: str, reason: str, value: Any) -> None:
        shown = f" value {value!r}" if value is not None else ""
        if self.stream.on_invalid == "fail":
            raise SourceError(
                f"{self.label}: record {self._key(record) if isinstance(record, Mapping) else ''} "
                f"field {field_name}:{shown} {reason}. Fix the data at the API, declare the "
                "field's type to match it, or set `on_invalid: quarantine` on the stream to "
                "keep such records in its _rejected table."
            )
        day = self.window.first_day if self.window is not None else None
        self.statistics.rejected.append(
            RejectedRecord(
                record=json.dumps(record, ensure_ascii=False, sort_keys=True, default=str),
                field=field_name,
                reason=f"{shown.strip()} {reason}".strip(),
                day=day,
            )
        )


def infer_table(
    pages: Sequence[Sequence[Any]], partition_field: str | None, zone: ZoneInfo
) -> pa.Table:
    """Without declared fields: infer each page, widen across pages, parse the partition field."""
    tables = []
    for records in pages:
        if records:
            tables.append(pa.Table.from_pylist([dict(record) for record in records]))
    if not tables:
        return pa.table({})
    schema = pa.unify_schemas([table.schema for table in tables], promote_options="permissive")
    table = pa.concat_tables(
        [t.select([n for n in schema.names if n in t.schema.names]) for t in tables],
        promote_options="permissive",
    )
    if partition_field and partition_field in table.schema.names:
        local = coercer("timestamp", zone)
        parsed = pa.array(
            [None if v is None else local(v) for v in table.column(partition_field).to_pylist()],
            pa.timestamp("us"),
        )
        table = table.set_column(
            table.schema.get_field_index(partition_field), partition_field, parsed
        )
    return table


def within_window(
    table: pa.Table, partition_field: str | None, window: PartitionWindow | None
) -> pa.Table:
    """The rows whose (local, naive) partition value falls in the window."""
    if window is None or not partition_field or partition_field not in table.schema.names:
        return table
    values = table.column(partition_field)
    start = pa.scalar(window.start.replace(tzinfo=None), pa.timestamp("us"))
    end = pa.scalar(window.end.replace(tzinfo=None), pa.timestamp("us"))
    keep = pc.and_(pc.greater_equal(values, start), pc.less(values, end))
    return table.filter(pc.fill_null(keep, True))


# ---- the stream reader ---------------------------------------------------------------------------


class RestStreamReader:
    """Streams one endpoint's records for a partition window as Arrow batches."""

    def __init__(
        self,
        client: RestClient,
        stream: StreamSpec,
        pagination: Pagination,
        timezone: str = "UTC",
        parallel_requests: int = 4,
        batch_size: int = 10_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.pagination = pagination
        self.zone = ZoneInfo(timezone)
        self.parallel_requests = parallel_requests
        self.batch_size = batch_size
        self.pages = 0

    def _label(self, window: PartitionWindow | None) -> str:
        return where(self.client.source_name, self.stream.name, window.label if window else None)

    def _records(self, body: Any, label: str) -> list[Any]:
        records = json_path(body, self.stream.records_path)
        if records is None and self.stream.records_path:
            records = []
        if not isinstance(records, list):
            raise SourceError(
                f"{label}: expected a list of records at "
                f"'{self.stream.records_path or '(the body)'}', got {type(records).__name__}; "
                "fix `records_path` for the stream"
            )
        return records

    def pages_of(self, window: PartitionWindow | None) -> Iterator[list[Any]]:
        """Every page's records in order; parallel when the total is known, bounded in count."""
        label = self._label(window)
        paginator = paginator_for(self.pagination, label)
        params = window_params(self.stream.params, window, label)
        request = paginator.first(PageRequest(self.client.url_for(self.stream.path), params))
        body, response = self.client.get_json(request.url, request.params, label)
        records = self._records(body, label)
        self.pages = 1
        yield records
        rest = (
            paginator.remaining(request, body, response, len(records))
            if self.parallel_requests > 1
            else None
        )
        if rest is not None:
            yield from self._parallel(rest, paginator, label)
            return
        while True:
            following = paginator.next(request, body, response, len(records))
            if following is None:
                return
            if self.pages >= paginator.max_pages:
                raise PaginationError(
                    f"{label}: more than max_pages ({paginator.max_pages}) pages; the API keeps "
                    "answering with more. Raise max_pages if that is right."
                )
            request = following
            body, response = self.client.get_json(request.url, request.params, label)
            records = self._records(body, label)
            self.pages += 1
            yield records

    def _parallel(
        self, requests_left: list[PageRequest], paginator: Paginator, label: str
    ) -> Iterator[list[Any]]:
        # a bounded window of pages in flight, yielded in request order: same result as one by one
        def fetch(request: PageRequest) -> tuple[Any, requests.Response]:
            return self.client.get_json(request.url, request.params, label)

        pending: deque[Future[tuple[Any, requests.Response]]] = deque()
        queue = iter(requests_left)
        with ThreadPoolExecutor(max_workers=self.parallel_requests) as executor:
            try:
                for request in queue:
                    pending.append(executor.submit(fetch, request))
                    if len(pending) >= self.parallel_requests * 2:
                        break
                while pending:
                    body, response = pending.popleft().result()
                    following = next(queue, None)
                    if following is not None:
                        pending.append(executor.submit(fetch, following))
                    paginator.check(body, response)
                    self.pages += 1
                    yield self._records(body, label)
            finally:
                for future in pending:
                    future.cancel()

    def count(self, window: PartitionWindow | None) -> int | None:
        """The total the API reports for the window (first page only), None if it reports none."""
        if not isinstance(self.pagination, OffsetPagination | PagePagination):
            return None
        label = self._label(window)
        paginator = paginator_for(self.pagination, label)
        params = window_params(self.stream.params, window, label)
        request = paginator.first(PageRequest(self.client.url_for(self.stream.path), params))
        body, response = self.client.get_json(request.url, request.params, label)
        return _total(body, response, self.pagination.total_path, self.pagination.total_header)

    def read(self, window: PartitionWindow | None) -> SourceStream:
        """The window's records as Arrow batches (streamed when the fields are declared)."""
        label = self._label(window)
        if self.stream.fields is None:
            received = infer_table(
                list(self.pages_of(window)), self.stream.partition_field, self.zone
            )
            # an API that ignores the date filter cannot pollute other days
            table = within_window(received, self.stream.partition_field, window)
            outside = received.num_rows - table.num_rows
            return SourceStream(
                reader=table.to_reader(),
                path="api pages",
                metadata=lambda: self._metadata(received.num_rows, outside, 0),
            )
        converter = RecordConverter(self.stream, self.zone, window, label)
        stream = SourceStream(
            reader=pa.RecordBatchReader.from_batches(
                converter.schema, self._batches(window, converter)
            ),
            metadata=lambda: self._metadata(
                converter.statistics.records,
                converter.statistics.outside_window,
                len(converter.statistics.rejected),
            ),
            path="api pages",
            rejected=converter.statistics.rejected,
            quarantine=self.stream.on_invalid == "quarantine",
        )
        return stream

    def _batches(
        self, window: PartitionWindow | None, converter: RecordConverter
    ) -> Iterator[pa.RecordBatch]:
        buffered: list[pa.RecordBatch] = []
        rows = 0
        for records in self.pages_of(window):
            batch = converter.convert(records)
            buffered.append(batch)
            rows += batch.num_rows
            if rows >= self.batch_size:
                yield from (
                    pa.Table.from_batches(buffered, converter.schema).combine_chunks().to_batches()
                )
                buffered, rows = [], 0
        if buffered:
            yield from (
                pa.Table.from_batches(buffered, converter.schema).combine_chunks().to_batches()
            )

    def _metadata(self, records: int, outside_window: int, rejected: int) -> dict[str, Any]:
        return {
            "api_pages": self.pages,
            "api_requests": self.client.statistics.requests,
            "api_retries": self.client.statistics.retries,
            "records_received": records,
            "records_outside_window": outside_window,
            "records_rejected": rejected,
        }


# ---- the source ----------------------------------------------------------------------------------


class RestSource(Source):
    """A REST API as a Source: one stream reader per dataset, through the source's client."""

    def __init__(
        self,
        source_name: str,
        client: Callable[[], RestClient],
        timezone: str = "UTC",
        parallel_requests: int = 4,
        batch_size: int = 10_000,
    ) -> None:
        super().__init__(source_name)
        self._client = client
        self.timezone = timezone
        self.parallel_requests = parallel_requests
        self.batch_size = batch_size

    def reader(self, stream: DatasetSpec) -> RestStreamReader:
        """A reader for one of the source's streams."""
        if not isinstance(stream, StreamSpec):
            raise TypeError(f"a REST source reads streams, not {type(stream).__name__}")
        assert stream.pagination is not None  # RestSourceSpec gives every stream its own
        return RestStreamReader(
            self._client(),
            stream,
            stream.pagination,
            self.timezone,
            self.parallel_requests,
            self.batch_size,
        )

    def read(self, dataset: DatasetSpec, window: PartitionWindow | None) -> SourceStream:
        """The stream's window as Arrow batches."""
        return self.reader(dataset).read(window)

    def count(self, dataset: DatasetSpec, window: PartitionWindow | None) -> int | None:
        """The total the API reports for the window, None if it reports none."""
        return self.reader(dataset).count(window)

    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        """Days with records changed since the cursor, through the API's date filter.

        The stream's window parameters select records by their partition field, so that field is
        the change field; a first call (no cursor) marks the present moment."""
        zone = ZoneInfo(self.timezone)
        now = datetime.datetime.now(zone)
        if since is None:
            return ChangedDays([], now.replace(tzinfo=None).isoformat())
        start = datetime.datetime.fromisoformat(since)
        start = (start if start.tzinfo else start.replace(tzinfo=zone)) + datetime.timedelta(
            microseconds=1
        )
        window = PartitionWindow(start, now + datetime.timedelta(days=1), f"changes since {since}")
        stream_data = self.read(dataset, window)
        values = [
            value
            for batch in stream_data.reader
            for value in batch.column(dataset.partition_column or "").to_pylist()
            if value is not None
        ]
        if not values:
            return ChangedDays([], since)
        newest = max(values)
        days = sorted({v.astimezone(zone).date() if v.tzinfo else v.date() for v in values})
        return ChangedDays(days, newest.isoformat())

    @classmethod
    def declared_columns(cls, dataset: DatasetSpec) -> list[DeclaredColumn]:
        """The declared fields with their Arrow types (the key alone when they are inferred)."""
        if isinstance(dataset, StreamSpec) and dataset.fields is not None:
            return [
                DeclaredColumn(name, str(arrow_field_type(kind)), f"declared {kind}")
                for name, kind in dataset.fields.items()
            ]
        return super().declared_columns(dataset)
