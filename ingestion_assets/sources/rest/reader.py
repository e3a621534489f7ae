"""One stream's window as Arrow batches: pages fetched, then converted, never all held at once.

The reader joins the pieces for one read: the window's query parameters, the stream's paginator,
the run's shared client, and the record converter. When the first page tells the total, the other
pages are fetched in parallel (a bounded window of requests in flight) and yielded in request
order, so the result is the same as one page after another; otherwise it follows the paginator
page by page up to `max_pages`. Declared fields stream batch by batch; an inferred schema needs
every page first, since a later page may widen a column.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import requests

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources.rest.client import HttpStatistics, RestClient
from ingestion_assets.sources.rest.paginators import (
    PageRequest,
    PaginationError,
    Paginator,
    paginator_for,
)
from ingestion_assets.sources.rest.records import RecordConverter, infer_table, within_window
from ingestion_assets.sources.rest.templates import json_path, window_params
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import Pagination, StreamSpec


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
        # this stream's own counts: the client and its session serve every stream of the run
        self.statistics = HttpStatistics()

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
        body, response = self.client.get_json(request.url, request.params, label, self.statistics)
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
            body, response = self.client.get_json(
                request.url, request.params, label, self.statistics
            )
            records = self._records(body, label)
            self.pages += 1
            yield records

    def _parallel(
        self, requests_left: list[PageRequest], paginator: Paginator, label: str
    ) -> Iterator[list[Any]]:
        # a bounded window of pages in flight, yielded in request order: same result as one by one
        def fetch(request: PageRequest) -> tuple[Any, requests.Response]:
            return self.client.get_json(request.url, request.params, label, self.statistics)

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
        label = self._label(window)
        paginator = paginator_for(self.pagination, label)
        if not paginator.reports_total:
            return None
        params = window_params(self.stream.params, window, label)
        request = paginator.first(PageRequest(self.client.url_for(self.stream.path), params))
        body, response = self.client.get_json(request.url, request.params, label, self.statistics)
        return paginator.total(body, response)

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
            "api_requests": self.statistics.requests,
            "api_retries": self.statistics.retries,
            "records_received": records,
            "records_outside_window": outside_window,
            "records_rejected": rejected,
        }
