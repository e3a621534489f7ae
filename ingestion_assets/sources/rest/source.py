"""A REST API as a `Source`: the run's one HTTP session, and a reader per stream read.

RestSource lives apart from the reader because it owns what outlives one stream: the session
(pooled connections, the OAuth2 token) is made on the first request of a run, shared by every
stream and check read in that run, and closed with the source when the run's step is done
(`SourceResource.teardown_after_execution`). A reader is made per read and keeps what is that
read's own: its pagination state and the request counts its materialization reports.
"""

from __future__ import annotations

import datetime
import decimal
import difflib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources.base import ChangedDays, DeclaredColumn, Finding, Source, did_you_mean
from ingestion_assets.sources.rest.auth import (
    ApiSession,
    AuthSettings,
    CredentialsRefusedError,
    Timeout,
    authenticator_for,
)
from ingestion_assets.sources.rest.client import (
    HttpStatusError,
    RestClient,
    RetryPolicy,
    UnreachableError,
)
from ingestion_assets.sources.rest.paginators import PageRequest
from ingestion_assets.sources.rest.reader import RestStreamReader
from ingestion_assets.sources.rest.records import arrow_field_type
from ingestion_assets.sources.rest.templates import json_path, since_params, window_params
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import (
    DatasetSpec,
    OffsetPagination,
    PagePagination,
    Pagination,
    StreamSpec,
)


class RestSource(Source):
    """A REST API as a Source: one client (session, token) per run, one reader per stream read."""

    def __init__(
        self,
        source_name: str,
        base_url: str,
        auth: AuthSettings | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: Timeout = (10.0, 60.0),
        retry: RetryPolicy | None = None,
        timezone: str = "UTC",
        parallel_requests: int = 4,
        batch_size: int = 10_000,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__(source_name)
        self.logger = logger
        self.base_url = base_url
        self.auth = auth
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.timezone = timezone
        self.parallel_requests = parallel_requests
        self.batch_size = batch_size
        self._client: RestClient | None = None
        self._probe: RestClient | None = None
        # a run's steps and sensors may read from several threads: one client all the same
        self._lock = threading.Lock()

    def client(self) -> RestClient:
        """The run's client, made on first use: one session and one token for every stream."""
        with self._lock:
            if self._client is None:
                self._client = self._new_client(self.retry)
            return self._client

    def _probe_client(self) -> RestClient:
        """The client of `verify`: its own session and token, and few, short retries."""
        with self._lock:
            if self._probe is None:
                self._probe = self._new_client(
                    RetryPolicy(
                        min(PROBE_ATTEMPTS, self.retry.max_attempts),
                        self.retry.backoff_seconds,
                        min(self.retry.max_backoff_seconds, PROBE_SECONDS / 10),
                        min(self.retry.max_elapsed_seconds, PROBE_SECONDS),
                    )
                )
            return self._probe

    def _new_client(self, retry: RetryPolicy) -> RestClient:
        session = ApiSession()
        label = f"source '{self.source_name}'"
        authenticator = (
            None
            if self.auth is None
            else authenticator_for(self.auth, self.base_url, session, self.timeout, label)
        )
        return RestClient(
            self.source_name,
            self.base_url,
            authenticator,
            self.headers,
            self.timeout,
            retry,
            session,
            logger=self.logger,
        )

    def close(self) -> None:
        """Close the sessions and forget their tokens; a later read opens a new session."""
        with self._lock:
            for client in (self._client, self._probe):
                if client is not None:
                    client.close()
            self._client = self._probe = None

    def reader(self, stream: DatasetSpec) -> RestStreamReader:
        """A reader for one of the source's streams."""
        if not isinstance(stream, StreamSpec):
            raise TypeError(f"a REST source reads streams, not {type(stream).__name__}")
        assert stream.pagination is not None  # RestSourceSpec gives every stream its own
        return RestStreamReader(
            self.client(),
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

    def read_changes(self, dataset: DatasetSpec, since: str | None) -> SourceStream:
        """A merge stream's records changed since the cursor: `params` with `changes_params`
        filled from `since` (every record, `params` alone, when None)."""
        return self.read(self._since(dataset, since), None)

    def newest_change(self, dataset: DatasetSpec, since: str | None) -> str | None:
        """The highest cursor value past `since` among the records the API sends as changed
        since it; None: nothing new (or never loaded: the first run is the schedule's)."""
        assert isinstance(dataset, StreamSpec)
        column = dataset.change_field
        if since is None or column is None:
            return None
        stream = self.read_changes(dataset, since)
        newest: Any = None
        for batch in stream.reader:
            values = [v for v in batch.column(column).to_pylist() if v is not None]
            if values:
                newest = max(values) if newest is None else max(newest, *values)
        if newest is None:
            return None
        text = newest.isoformat() if isinstance(newest, datetime.date) else str(newest)
        return text if _past(text, since) else None

    def _since(self, dataset: DatasetSpec, since: str | None) -> StreamSpec:
        assert isinstance(dataset, StreamSpec)
        if since is None or not dataset.changes_params:
            return dataset
        label = where(self.source_name, dataset.name, f"changes since {since}")
        added = since_params(dataset.changes_params, since, label)
        return dataset.model_copy(update={"params": {**dataset.params, **added}})

    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        """Days with records changed since the cursor, through the API's date filter.

        The stream's window parameters select records by their partition field, so that field is
        the change field; a first call (no cursor) marks the present moment. Records the API
        sends from before the cursor are dropped, not a fault: its filter may be coarser."""
        zone = ZoneInfo(self.timezone)
        now = datetime.datetime.now(zone)
        if since is None:
            return ChangedDays([], now.replace(tzinfo=None).isoformat())
        start = datetime.datetime.fromisoformat(since)
        start = (start if start.tzinfo else start.replace(tzinfo=zone)) + datetime.timedelta(
            microseconds=1
        )
        window = PartitionWindow(start, now + datetime.timedelta(days=1), f"changes since {since}")
        # this window is no partition: an API that filters by whole days answers more than it
        # asks for, rightly, and what is before the cursor is already known
        assert isinstance(dataset, StreamSpec)
        stream_data = self.read(dataset.model_copy(update={"outside_window": "drop"}), window)
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
                DeclaredColumn(
                    name, str(arrow_field_type(kind)), f"{kind} (declared in the project file)"
                )
                for name, kind in dataset.fields.items()
            ]
        return super().declared_columns(dataset)

    def verify(self, dataset: DatasetSpec, window: PartitionWindow | None = None) -> list[Finding]:
        """One request for the stream's first page of `window`, at the smallest page size its
        pagination allows and with one retry at most: the window's parameters, the credentials,
        the path, the records path and the declared fields checked against the answer."""
        if not isinstance(dataset, StreamSpec):
            raise TypeError(f"a REST source reads streams, not {type(dataset).__name__}")
        assert dataset.pagination is not None  # RestSourceSpec gives every stream its own
        label = where(self.source_name, dataset.name, window.label if window else None)

        def finding(problem: str, fix: str = "", key: str | None = None, **extra: Any) -> Finding:
            return Finding(self.source_name, dataset.name, problem, fix, key, **extra)

        try:
            window_params(dataset.params, window, label)
        except SourceError as error:
            fix = (
                "write the window as {start}, {end} or {end_inclusive}, with a format if the "
                "API needs one ({start:%Y-%m-%d})"
                if window is not None
                else "a stream without partition_field has no window: leave the placeholders "
                "out of `params`, or set partition_field"
            )
            return [finding(_without(label, error), fix, "params")]
        deadline = min(dataset.response_deadline_seconds or PROBE_SECONDS, PROBE_SECONDS)
        stream = dataset.model_copy(update={"response_deadline_seconds": deadline})
        try:
            request, body = self._first_page(stream, window)
        except CredentialsRefusedError as error:
            return [self._refused(error, dataset)]
        except UnreachableError as error:
            return [
                Finding(
                    self.source_name,
                    None,
                    _without(label, error).split(". Nothing was written")[0],
                    "check `base_url` and that the API is up",
                    source_key="base_url",
                )
            ]
        except HttpStatusError as error:
            if error.status in (404, 410):
                return [finding(_without(label, error), "check the stream's `path`", "path")]
            return [finding(_without(label, error), "check the stream's `params`", "params")]
        except SourceError as error:
            return [
                finding(
                    _without(label, error).split(". Nothing was written")[0],
                    "check the stream's settings, or check again once the API is healthy",
                )
            ]
        shown = _readable(self._probe_client().shown(request.url, request.params))
        return _first_page_findings(stream, body, shown, window, finding)

    def _first_page(
        self, stream: StreamSpec, window: PartitionWindow | None
    ) -> tuple[PageRequest, Any]:
        """The first page at one record; at the stream's own page size when the API refuses
        that (some APIs have a smallest page)."""
        assert stream.pagination is not None
        smallest = _smallest_page(stream.pagination)
        client = self._probe_client()
        try:
            return RestStreamReader(client, stream, smallest, self.timezone, 1).first_page(window)
        except HttpStatusError as error:
            if smallest == stream.pagination or error.status in (404, 410):
                raise
        return RestStreamReader(client, stream, stream.pagination, self.timezone, 1).first_page(
            window
        )

    def _refused(self, error: CredentialsRefusedError, stream: StreamSpec) -> Finding:
        """The credentials refused: a finding of the whole source, naming its `auth`."""
        if self.auth is None:
            problem = f"{error.refused_by} asks for credentials (HTTP {error.status})"
            return Finding(
                self.source_name,
                None,
                f"{problem} for GET {stream.path}, and the source has no `auth`",
                "add `auth` to the source (basic, bearer, api_key or oauth2_client_credentials)",
                source_key="auth",
            )
        return Finding(
            self.source_name,
            None,
            f"{error.refused_by} refused the source's {self.auth.type} credentials "
            f"(HTTP {error.status}, GET {stream.path})",
            "set the credentials the API expects in `auth`",
            source_key="auth",
        )


PROBE_ATTEMPTS = 2
# the longest a check waits for one answer, retries included
PROBE_SECONDS = 30.0


def _past(value: str, since: str) -> bool:
    """Whether a cursor value is past `since`: as instants when both are times, as numbers
    when both are, as text otherwise."""
    for parse in (datetime.datetime.fromisoformat, decimal.Decimal):
        try:
            return bool(parse(value) > parse(since))  # type: ignore[operator]
        except (ValueError, TypeError, decimal.InvalidOperation):
            continue
    return value > since


def _without(label: str, error: SourceError) -> str:
    """An error's message without the `source ..., table ..., ...:` it begins with."""
    return str(error).removeprefix(f"{label}: ")


def _readable(url: str) -> str:
    """A shown URL as a person reads it: its path and query, decoded (secrets stay masked)."""
    parts = urlsplit(url)
    return unquote(parts.path + (f"?{parts.query}" if parts.query else ""))


def _smallest_page(pagination: Pagination) -> Pagination:
    """The pagination asking for one record per page, where it sets a page size."""
    if isinstance(pagination, OffsetPagination):
        return pagination.model_copy(update={"limit": 1})
    if isinstance(pagination, PagePagination):
        return pagination.model_copy(update={"size": 1})
    return pagination


def _list_paths(body: Any, prefix: str = "", depth: int = 2) -> list[str]:
    """The dot paths of the lists in a body, two levels down at most."""
    if not isinstance(body, dict) or depth == 0:
        return []
    paths = []
    for key, value in body.items():
        path = f"{prefix}{key}"
        if isinstance(value, list):
            paths.append(path)
        paths += _list_paths(value, f"{path}.", depth - 1)
    return paths


def _first_page_findings(
    stream: StreamSpec,
    body: Any,
    shown: str,
    window: PartitionWindow | None,
    finding: Callable[..., Finding],
) -> list[Finding]:
    """The records path looked up in the first page, and its first record's fields compared
    with the partition field, the key, the order field and the declared fields."""
    path = stream.records_path
    records = json_path(body, path) if path else body
    if not isinstance(records, list):
        found = (
            f"an object with keys {', '.join(map(str, list(body)[:12]))}"
            if isinstance(body, dict)
            else f"a JSON {type(body).__name__}"
        )
        if isinstance(body, list):
            fix = "the body itself is the list of records: leave `records_path` out"
        else:
            fix = did_you_mean("records_path", path, _list_paths(body), "lists in the body")
        return [
            finding(
                f"no list of records at records_path '{path or '(the body)'}' of GET {shown}; "
                f"the body is {found}",
                fix,
                "records_path",
            )
        ]
    if not records:
        day = f" for {window.days_text}" if window is not None else ""
        return [
            finding(
                f"GET {shown} answered no record{day}, so its fields were not compared",
                "check again for a day with records",
                severity="warning",
            )
        ]
    first = records[0]
    if not isinstance(first, dict):
        return [
            finding(
                f"the records at records_path '{path}' are not objects (the first is a JSON "
                f"{type(first).__name__})",
                "point `records_path` at the list of record objects",
                "records_path",
            )
        ]
    present = [str(name) for name in first]
    needed = [
        *([(stream.partition_field, "partition_field")] if stream.partition_field else []),
        *[(name, "primary_key") for name in stream.primary_key],
        *([(stream.order_by.field, "order_by")] if stream.order_by else []),
    ]
    findings = [
        finding(
            f"'{name}' ({key}) is not a field of the first record",
            did_you_mean(key, name, present, "fields of the first record"),
            key,
        )
        for name, key in dict.fromkeys(needed)
        if name not in first
    ]
    if stream.fields is not None:
        needed_names = {name for name, _ in needed}
        missing = [n for n in stream.fields if n not in first and n not in needed_names]
        extra = [name for name in present if name not in stream.fields]
        if missing:
            hints = [
                f"{name}: {did_you_mean('fields', name, extra, 'other fields')}"
                for name in missing
                if difflib.get_close_matches(name.lower(), [e.lower() for e in extra], n=1)
            ]
            findings.append(
                finding(
                    f"declared field(s) {', '.join(missing)} are not in the first record (they "
                    "land as null)",
                    "; ".join(hints)
                    or "fine if the API leaves empty fields out; otherwise fix "
                    "their names in `fields`",
                    "fields",
                    severity="warning",
                )
            )
        if extra:
            findings.append(
                finding(
                    f"the first record has field(s) {', '.join(extra)} that `fields` does not "
                    "declare; they are not ingested",
                    "declare them in `fields` to ingest them",
                    "fields",
                    severity="warning",
                )
            )
    schema = "declared" if stream.fields is not None else "inferred"
    findings.append(
        finding(f"GET {shown}: {len(present)} fields, schema {schema}", severity="note")
    )
    return findings
