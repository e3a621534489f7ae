"""One stream's window as Arrow batches: pages fetched, checked, then released, never all in memory.

The reader joins the pieces for one read: the window's query parameters, the stream's paginator,
the run's shared client, and the record converter. When the first page tells the total, the other
pages are fetched in parallel (a bounded window of requests in flight) and taken in request
order, so the result is the same as one page after another; otherwise it follows the paginator
page by page up to `max_pages`.

A window's pages must agree before any of its rows is released: the records add up to the total
the API reported, no page before the last is short where pages sit at fixed positions, no primary
key comes twice, and the records come in the stream's `order_by` order when it asks for one. Data
that moves while it is paged breaks one of these; the window is then read again from its first
page, up to `max_restarts` times, and the read fails if its pages still disagree. So that a
restart never hands the writer a row twice, converted batches wait in a temporary Arrow file
(memory stays one batch) until the window's pages agree. Declared fields stream that way batch by
batch; an inferred schema needs every page first, since a later page may widen a column.

A page whose body has no list at `records_path` (an error object or notice answered with 200)
is a fault, retried and then failed; an empty day is only an empty list there. Every error the
read raises is masked of the source's secrets, its chained causes too.
"""

from __future__ import annotations

import functools
import json
import pathlib
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
import requests

from ingestion_assets.errors import SourceError, where
from ingestion_assets.sources.rest.client import (
    HttpStatistics,
    RequestLimits,
    RestClient,
    UnexpectedBodyError,
)
from ingestion_assets.sources.rest.paginators import (
    InconsistentPagesError,
    PageRequest,
    PaginationError,
    Paginator,
    paginator_for,
)
from ingestion_assets.sources.rest.records import (
    RecordConverter,
    infer_table,
    outside_window_error,
    outside_window_values,
    within_window,
)
from ingestion_assets.sources.rest.redaction import redact_exception
from ingestion_assets.sources.rest.templates import json_path, window_params
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import Pagination, StreamSpec

BODY_SAMPLE_CHARACTERS = 160
KEY_SAMPLE_SIZE = 5
T = TypeVar("T")


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {', '.join(list(map(str, value))[:8]) or '(none)'}"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (no such key, or null)"
    return f"a JSON {type(value).__name__}"


@dataclass
class _WindowPages:
    """What one attempt at a window's pages has seen, to check that they agree."""

    label: str
    stream: StreamSpec
    received: int = 0
    keys: list[pa.Table] = field(default_factory=list)
    order_last: Any = None
    # the total the API reported for the window, once the last page agreed with it
    expected: int | None = None

    def page(self, records: list[Any], fixed_size: int | None, last: bool) -> None:
        """One page's records arrived (`last`: no page follows it; `fixed_size`: the size of
        every page but the last, where pages sit at fixed positions)."""
        self.received += len(records)
        if not last and fixed_size is not None and len(records) < fixed_size:
            raise InconsistentPagesError(
                f"{self.label}: a page held {len(records)} records, fewer than the page size "
                f"{fixed_size}, before the last page, so the pages after it skip records; either "
                "records moved while the window was paged, or the API caps its page size below "
                f"{fixed_size} (then lower the pagination's size to that cap)"
            )

    def rows(self, table: pa.Table | pa.RecordBatch) -> None:
        """Rows that will land: their keys and their order are checked."""
        key = list(self.stream.record_key)
        if key and all(name in table.schema.names for name in key):
            selected = table.select(key)
            self.keys.append(
                selected if isinstance(selected, pa.Table) else pa.Table.from_batches([selected])
            )
        order = self.stream.order_by
        if order is not None and order.field in table.schema.names:
            column = table.column(order.field)
            values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            self._ordered(values.drop_null())

    def _ordered(self, values: pa.Array) -> None:
        order = self.stream.order_by
        assert order is not None
        if len(values) == 0:
            return
        try:
            if self.order_last is not None:
                values = pa.concat_arrays([pa.array([self.order_last], values.type), values])
            earlier, later = values.slice(0, len(values) - 1), values.slice(1)
            wrong = pc.less(earlier, later) if order.descending else pc.greater(earlier, later)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            raise PaginationError(
                f"{self.label}: order_by field '{order.field}' holds values that cannot be "
                "compared; choose a field of one type (a number or a text key)"
            ) from None
        if len(wrong) and pc.any(wrong).as_py():
            index = pc.index(wrong, True).as_py()
            raise PaginationError(
                f"{self.label}: the API does not return records in the order asked for "
                f"({order.param}={order.value or order.field}: {order.field} "
                f"{'descending' if order.descending else 'ascending'}); "
                f"{values[index].as_py()!r} came before {values[index + 1].as_py()!r}; nothing "
                "was written. Fix the stream's order_by (the API's sort parameter and value)."
            )
        self.order_last = values[len(values) - 1].as_py()

    def finish(self, expected: int | None) -> None:
        """The last page arrived: the records add up to the total, no key came twice."""
        self.expected = expected
        if expected is not None and self.received != expected:
            raise InconsistentPagesError(
                f"{self.label}: the API reported {expected} records for the window but its "
                f"pages held {self.received}, so pages overlapped or skipped records"
            )
        self.unique_keys()

    def unique_keys(self) -> None:
        """No primary key among the rows seen came twice."""
        if self.keys:
            self._unique(pa.concat_tables(self.keys))

    def _unique(self, keys: pa.Table) -> None:
        names = keys.schema.names
        present = keys.filter(
            pc.and_kleene(*[pc.is_valid(keys.column(n)) for n in names])
            if len(names) > 1
            else pc.is_valid(keys.column(names[0]))
        )
        counts = present.group_by(names).aggregate([([], "count_all")])
        repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
        if repeated.num_rows:
            sample = repeated.slice(0, KEY_SAMPLE_SIZE).select(names).to_pylist()
            raise InconsistentPagesError(
                f"{self.label}: {repeated.num_rows} primary key(s) ({', '.join(names)}) came "
                f"more than once in the window's pages (e.g. {sample}), so a page repeated "
                "records of another"
            )


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
        self.limits = RequestLimits.of(
            stream.response_deadline_seconds, stream.max_response_bytes, stream.allowed_origins
        )
        self.pages = 0
        self.restarts = 0
        # this stream's own counts: the client and its session serve every stream of the run
        self.statistics = HttpStatistics()

    def _label(self, window: PartitionWindow | None) -> str:
        return where(self.client.source_name, self.stream.name, window.label if window else None)

    @contextmanager
    def _masked(self) -> Iterator[None]:
        """Errors leave masked of every secret of the source, their chained causes too."""
        try:
            yield
        except Exception as error:
            redact_exception(error, self.client.secrets())
            raise

    def _masked_iter(self, items: Iterator[T]) -> Iterator[T]:
        with self._masked():
            yield from items

    def _records(self, body: Any, label: str) -> list[Any]:
        path = self.stream.records_path
        records = json_path(body, path) if path else body
        if not isinstance(records, list):
            sample = json.dumps(body, ensure_ascii=False, default=str)[:BODY_SAMPLE_CHARACTERS]
            raise UnexpectedBodyError(
                f"no list of records at '{path or '(the body)'}', found {_describe(records)} "
                f"(the body: {sample}); if this is the API's error or maintenance answer, re-run "
                "when it is healthy, and if its records moved, fix the stream's `records_path`"
            )
        return records

    def _expect(self, label: str) -> Callable[[Any], None]:
        def expect(body: Any) -> None:
            self._records(body, label)

        return expect

    def _get(self, request: PageRequest, label: str) -> tuple[Any, requests.Response]:
        return self.client.get_json(
            request.url,
            request.params,
            label,
            self.statistics,
            self.limits,
            self._expect(label),
        )

    def _params(self, window: PartitionWindow | None, label: str) -> dict[str, str]:
        params = window_params(self.stream.params, window, label)
        order = self.stream.order_by
        if order is not None:
            params[order.param] = order.value or order.field
        return params

    def _first_request(
        self, paginator: Paginator, window: PartitionWindow | None, label: str
    ) -> PageRequest:
        return paginator.first(
            PageRequest(self.client.url_for(self.stream.path), self._params(window, label))
        )

    def pages_of(
        self, window: PartitionWindow | None, pages: _WindowPages | None = None
    ) -> Iterator[list[Any]]:
        """Every page's records in order, one attempt; parallel when the total is known.

        Raises InconsistentPagesError after the last page when the pages do not add up."""
        label = self._label(window)
        seen = pages or _WindowPages(label, self.stream)
        paginator = paginator_for(self.pagination, label)
        request = self._first_request(paginator, window, label)
        body, response = self._get(request, label)
        records = self._records(body, label)
        self.pages = 1
        rest = (
            paginator.remaining(request, body, response, len(records))
            if self.parallel_requests > 1
            else None
        )
        if rest is not None:
            seen.page(records, paginator.page_size, last=not rest)
            yield records
            yield from self._parallel(rest, paginator, label, seen)
            seen.finish(paginator.expected_records())
            return
        fixed_size = paginator.page_size if paginator.fixed_positions else None
        while True:
            following = paginator.next(request, body, response, len(records))
            seen.page(records, fixed_size, last=following is None)
            yield records
            if following is None:
                seen.finish(paginator.expected_records())
                return
            if self.pages >= paginator.max_pages:
                raise PaginationError(
                    f"{label}: more than max_pages ({paginator.max_pages}) pages; the API keeps "
                    "answering with more. Raise max_pages if that is right."
                )
            request = following
            body, response = self._get(request, label)
            records = self._records(body, label)
            self.pages += 1

    def _parallel(
        self,
        requests_left: list[PageRequest],
        paginator: Paginator,
        label: str,
        seen: _WindowPages,
    ) -> Iterator[list[Any]]:
        # a bounded window of pages in flight, taken in request order: same result as one by one
        pending: deque[Future[tuple[Any, requests.Response]]] = deque()
        queue = iter(requests_left)
        left = len(requests_left)
        with ThreadPoolExecutor(max_workers=self.parallel_requests) as executor:
            try:
                for request in queue:
                    pending.append(executor.submit(self._get, request, label))
                    if len(pending) >= self.parallel_requests * 2:
                        break
                while pending:
                    body, response = pending.popleft().result()
                    following = next(queue, None)
                    if following is not None:
                        pending.append(executor.submit(self._get, following, label))
                    paginator.check(body, response)
                    self.pages += 1
                    left -= 1
                    records = self._records(body, label)
                    # pages at precomputed positions: only the last may be short
                    seen.page(records, paginator.page_size, last=left == 0)
                    yield records
            finally:
                for future in pending:
                    future.cancel()

    def _gave_up(self, label: str, error: InconsistentPagesError) -> PaginationError:
        attempts = self.stream.max_restarts + 1
        return PaginationError(
            f"{label}: the API's pages did not agree in {attempts} reading(s) of the window "
            f"(last: {error}); nothing was written. Ask the API for a stable order (the stream's "
            "`order_by` on a unique key), re-run the partition when the source is quiet for "
            "it, or raise the stream's `max_restarts`."
        )

    def count(self, window: PartitionWindow | None) -> int | None:
        """The total the API reports for the window, from a request of its own (never the rows
        a read collected); None for a pagination style that reports no total."""
        with self._masked():
            label = self._label(window)
            paginator = paginator_for(self.pagination, label)
            if not paginator.reports_total:
                return None
            request = self._first_request(paginator, window, label)
            body, response = self._get(request, label)
            total = paginator.total(body, response)
            if total is None:
                raise SourceError(
                    f"{label}: GET {self.client.shown(request.url, request.params)} reports no "
                    "total (the pagination's total_path / total_header), so the row count "
                    "cannot be reconciled; fix total_path or total_header, or turn off the "
                    "row_count check's `reconcile` for the stream"
                )
            return total

    def first_page(self, window: PartitionWindow | None) -> tuple[PageRequest, Any]:
        """The window's first request and the body it answered, as it came: no records path
        is looked for (a check of the stream's settings reports it); errors masked."""
        with self._masked():
            label = self._label(window)
            request = self._first_request(paginator_for(self.pagination, label), window, label)
            body, _ = self.client.get_json(
                request.url, request.params, label, self.statistics, self.limits
            )
            return request, body

    def read(self, window: PartitionWindow | None) -> SourceStream:
        """The window's records as Arrow batches (streamed when the fields are declared)."""
        with self._masked():
            label = self._label(window)
            if self.stream.fields is None:
                return self._read_inferred(window, label)
            converter = RecordConverter(self.stream, self.zone, window, label)

            def reported(total: int | None) -> None:
                # the API's own filtered total, less the records dropped outside the window:
                # what the audit reconciles the window's rows with, without asking again
                if total is not None:
                    stream.reported_total = total - converter.statistics.outside_window

            stream = SourceStream(
                reader=pa.RecordBatchReader.from_batches(
                    converter.schema,
                    self._masked_iter(self._batches(window, converter, label, reported)),
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

    def _read_inferred(self, window: PartitionWindow | None, label: str) -> SourceStream:
        for _ in range(self.stream.max_restarts + 1):
            seen = _WindowPages(label, self.stream)
            try:
                pages = list(self.pages_of(window, seen))
                received = infer_table(pages, self.stream.partition_field, self.zone)
                # an API that ignores the date filter cannot pollute other days
                table = within_window(received, self.stream.partition_field, window)
                outside = received.num_rows - table.num_rows
                if outside and self.stream.outside_window == "fail" and window is not None:
                    sample = outside_window_values(received, self.stream.partition_field, window)
                    raise outside_window_error(label, self.stream, window, outside, sample)
                seen.rows(table)
                seen.unique_keys()
            except InconsistentPagesError as error:
                if self.restarts >= self.stream.max_restarts:
                    raise self._gave_up(label, error) from None
                self.restarts += 1
                continue
            return SourceStream(
                reader=table.to_reader(),
                path="api pages",
                metadata=functools.partial(self._metadata, received.num_rows, outside, 0),
                reported_total=None if seen.expected is None else seen.expected - outside,
                source_types={name: "inferred from the records" for name in table.column_names},
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _batches(
        self,
        window: PartitionWindow | None,
        converter: RecordConverter,
        label: str,
        reported: Callable[[int | None], None] | None = None,
    ) -> Iterator[pa.RecordBatch]:
        with tempfile.TemporaryDirectory(prefix="rest-window-") as directory:
            for attempt in range(self.stream.max_restarts + 1):
                spill = pathlib.Path(directory) / f"attempt-{attempt}.arrow"
                converter.statistics.reset()
                seen = _WindowPages(label, self.stream)
                try:
                    with (
                        pa.OSFile(str(spill), "wb") as sink,
                        pa.ipc.new_stream(sink, converter.schema) as writer,
                    ):
                        for batch in self._converted(window, converter, seen):
                            writer.write_batch(batch)
                except InconsistentPagesError as error:
                    spill.unlink(missing_ok=True)
                    if self.restarts >= self.stream.max_restarts:
                        raise self._gave_up(label, error) from None
                    self.restarts += 1
                    continue
                # the window's pages agree: only now does the writer see its rows
                if reported is not None:
                    reported(seen.expected)
                with pa.OSFile(str(spill), "rb") as source:
                    yield from pa.ipc.open_stream(source)
                return

    def _converted(
        self, window: PartitionWindow | None, converter: RecordConverter, seen: _WindowPages
    ) -> Iterator[pa.RecordBatch]:
        buffered: list[pa.RecordBatch] = []
        rows = 0
        for records in self.pages_of(window, seen):
            batch = converter.convert(records)
            seen.rows(batch)
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
            "api_restarts": self.restarts,
            "records_received": records,
            "records_outside_window": outside_window,
            "records_rejected": rejected,
        }
