"""A REST API as a `Source`: one stream reader per dataset, through the source's client."""

from __future__ import annotations

import datetime
from collections.abc import Callable
from zoneinfo import ZoneInfo

from ingestion_assets.sources.base import ChangedDays, DeclaredColumn, Source
from ingestion_assets.sources.rest.client import RestClient
from ingestion_assets.sources.rest.reader import RestStreamReader
from ingestion_assets.sources.rest.records import arrow_field_type
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, StreamSpec


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
