"""A REST API as a `Source`: the run's one HTTP session, and a reader per stream read.

RestSource lives apart from the reader because it owns what outlives one stream: the session
(pooled connections, the OAuth2 token) is made on the first request of a run, shared by every
stream and check read in that run, and closed with the source when the run's step is done
(`SourceResource.teardown_after_execution`). A reader is made per read and keeps what is that
read's own: its pagination state and the request counts its materialization reports.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Mapping
from zoneinfo import ZoneInfo

from ingestion_assets.sources.base import ChangedDays, DeclaredColumn, Source
from ingestion_assets.sources.rest.auth import ApiSession, AuthSettings, Timeout, authenticator_for
from ingestion_assets.sources.rest.client import RestClient, RetryPolicy
from ingestion_assets.sources.rest.reader import RestStreamReader
from ingestion_assets.sources.rest.records import arrow_field_type
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, StreamSpec


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
        # a run's steps and sensors may read from several threads: one client all the same
        self._lock = threading.Lock()

    def client(self) -> RestClient:
        """The run's client, made on first use: one session and one token for every stream."""
        with self._lock:
            if self._client is None:
                session = ApiSession()
                label = f"source '{self.source_name}'"
                authenticator = (
                    None
                    if self.auth is None
                    else authenticator_for(self.auth, self.base_url, session, self.timeout, label)
                )
                self._client = RestClient(
                    self.source_name,
                    self.base_url,
                    authenticator,
                    self.headers,
                    self.timeout,
                    self.retry,
                    session,
                    logger=self.logger,
                )
            return self._client

    def close(self) -> None:
        """Close the session and forget its token; a later read opens a new session."""
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

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
