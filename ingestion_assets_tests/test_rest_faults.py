"""REST faults a live API causes, against real HTTP servers on 127.0.0.1: bodies that are no page,
data that moves while it is paged, slow and huge responses, links off the origin, windows the API
misreads, and the source count."""

from __future__ import annotations

import contextlib
import datetime
import json
import pathlib
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from dagster import DagsterInstance
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from pydantic import ValidationError
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ingestion_assets.errors import SourceError
from ingestion_assets.resources import OAuth2ClientCredentialsConfig
from ingestion_assets.sources.rest.client import (
    ForeignOriginError,
    ResponseTooLargeError,
    RestClient,
    RetryPolicy,
)
from ingestion_assets.sources.rest.paginators import PaginationError
from ingestion_assets.sources.rest.reader import RestStreamReader
from ingestion_assets.sources.rest.records import OutsideWindowError
from ingestion_assets.sources.rest.source import RestSource
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import RestSourceSpec, StreamSpec
from ingestion_assets_tests.conftest import SOURCE, failure_message, started_http_server
from ingestion_assets_tests.test_rest_source import (
    API_KEY,
    AUTH_CASES,
    DAY,
    PAGINATION,
    credentials_sent,
    json_body,
    orders,
    read_ids,
    resource_reader,
    rest_project,
)

PAGE = 10
# every wait on a server thread is bounded by this, so no test can hang
SERVER_DEADLINE_SECONDS = 10.0
KEYED = StreamSpec(
    name="items", path="/items", records_path="data", primary_key=("id",), fields={"id": "int64"}
)


def reader_of(
    server: HTTPServer | str,
    pagination: Mapping[str, Any],
    stream: StreamSpec = KEYED,
    parallel_requests: int = 1,
    attempts: int = 2,
    read_timeout: float = 5.0,
) -> RestStreamReader:
    """A reader of `stream` on the server (a base URL or a pytest-httpserver)."""
    base_url = server if isinstance(server, str) else server.url_for("/")
    client = RestClient(
        SOURCE,
        base_url,
        timeout=(5.0, read_timeout),
        retry=RetryPolicy(max_attempts=attempts, backoff_seconds=0.01),
    )
    return RestStreamReader(
        client,
        stream,
        PAGINATION.validate_python(dict(pagination)),
        parallel_requests=parallel_requests,
    )


@pytest.fixture
def elsewhere() -> Iterator[HTTPServer]:
    """A second server on another port of 127.0.0.1: another origin than the API's."""
    with started_http_server() as server:
        yield server


# ---- 1. a 200 that is no page of records ----------------------------------------------------------

NOT_A_PAGE = {
    "error_object": {"error": "maintenance"},
    "notice": {"status": "down for maintenance", "retry": "later"},
    "null_records": {"data": None},
    "records_not_a_list": {"data": {"error": "maintenance"}},
    "json_string": "maintenance",
    "bare_list": [{"id": 1}],
}


@pytest.mark.parametrize("body", list(NOT_A_PAGE))
def test_a_200_without_a_list_at_records_path_fails_naming_stream_window_url_and_fix(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
) -> None:
    monkeypatch.setenv("REST_FAULTS_KEY", API_KEY)
    httpserver.expect_request("/orders").respond_with_json(NOT_A_PAGE[body])
    auth = {
        "type": "api_key",
        "name": "api_key",
        "value": "${REST_FAULTS_KEY}",
        "location": "query",
    }
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [_orders()], auth=auth)

    result = project.materialize(["orders"], instance, partition=DAY, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert f"source '{SOURCE}', table 'orders', partition {DAY}" in message
    assert "no list of records at 'data'" in message
    assert f"GET {httpserver.url_for('/orders')}?since=" in message
    assert "fix the stream's `records_path`" in message
    assert API_KEY not in message
    # retried like any passing fault, within the attempts
    assert len(httpserver.log) == 4
    with pytest.raises(TableNotFoundError):
        DeltaTable(project.table_uri("orders"))


def test_a_maintenance_answer_then_a_good_page_lands_the_day(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_ordered_request("/orders").respond_with_json({"error": "maintenance"})
    httpserver.expect_ordered_request("/orders").respond_with_json({"data": orders(DAY, [1, 2])})
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [_orders()])

    project.materialize(["orders"], instance, partition=DAY)

    assert project.delta("orders").to_pyarrow_table().column("id").to_pylist() == [1, 2]


def test_only_an_empty_list_at_records_path_is_an_empty_day(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_request("/orders").respond_with_json({"data": []})
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [_orders()])

    project.materialize(["orders"], instance, partition=DAY)

    assert project.delta("orders").to_pyarrow_table().num_rows == 0
    assert len(httpserver.log) == 1


def _orders(**overrides: Any) -> dict[str, Any]:
    stream: dict[str, Any] = {
        "name": "orders",
        "path": "/orders",
        "records_path": "data",
        "params": {"since": "{start}", "until": "{end}"},
        "partition_field": "modified",
        "primary_key": ["id"],
        "fields": {"id": "int64", "modified": "timestamp_tz", "amount": "decimal(19,4)"},
    }
    stream.update(overrides)
    return stream


# ---- 2. data that moves while it is paged ---------------------------------------------------------


@dataclass
class MovingApi:
    """An offset (or page) API over a list of ids sorted as the API likes, with a total; `moves`
    changes the list after the given request (1-based), as a live source does while paged."""

    ids: list[int]
    moves: dict[int, Any] = field(default_factory=dict)
    style: str = "offset"
    # what a page holds at most, whatever size was asked for
    cap: int | None = None
    # served offsets are shifted by this from the second page on: a paging bug that skips records
    skew: int = 0
    requests: list[dict[str, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Request) -> Response:
        with self.lock:
            args = dict(request.args)
            self.requests.append(args)
            ids = list(self.ids)
            change = self.moves.get(len(self.requests))
            if change is not None:
                self.ids = change(self.ids)
        if self.style == "offset":
            start, size = int(args["offset"]), int(args["limit"])
        else:
            size = int(args["page_size"])
            start = (int(args["page"]) - 1) * size
        if start:
            start += self.skew
        served = ids[start : start + min(size, self.cap or size)]
        meta = {"total": len(ids), "pages": -(-len(ids) // size)}
        return json_body({"data": [{"id": i} for i in served], "meta": meta})


def moved_forward(ids: list[int]) -> list[int]:
    """The record at position 15 (page 2) is updated and sorts first now: same total."""
    moved = list(ids)
    moved.insert(0, moved.pop(15))
    return moved


def one_more(ids: list[int]) -> list[int]:
    """A record is added at the front: the total moves by one."""
    return [-1, *ids]


OFFSET_TOTAL = {"type": "offset", "limit": PAGE, "total_path": "meta.total"}


@pytest.mark.parametrize("parallel_requests", [1, 4])
def test_a_total_that_moves_once_restarts_the_window_and_lands_each_record_once(
    httpserver: HTTPServer, parallel_requests: int
) -> None:
    api = MovingApi(list(range(30)), moves={1: one_more})
    httpserver.expect_request("/items").respond_with_handler(api)
    reader = reader_of(httpserver, OFFSET_TOTAL, parallel_requests=parallel_requests)

    ids = read_ids(reader)

    assert ids == [-1, *range(30)]
    assert reader.restarts == 1


@pytest.mark.parametrize("parallel_requests", [1, 4])
def test_a_record_that_moves_between_pages_is_caught_by_its_key_and_the_window_read_again(
    httpserver: HTTPServer, parallel_requests: int
) -> None:
    # after page 1, record 15 sorts first: page 2 repeats record 9, record 15 would be skipped
    api = MovingApi(list(range(30)), moves={1: moved_forward})
    httpserver.expect_request("/items").respond_with_handler(api)
    reader = reader_of(httpserver, OFFSET_TOTAL, parallel_requests=parallel_requests)

    ids = read_ids(reader)

    assert sorted(ids) == list(range(30))
    assert len(ids) == len(set(ids))
    assert reader.restarts == 1


def test_pages_that_skip_records_fail_against_the_reported_total(httpserver: HTTPServer) -> None:
    api = MovingApi(list(range(25)), skew=1)
    httpserver.expect_request("/items").respond_with_handler(api)
    reader = reader_of(httpserver, OFFSET_TOTAL)

    with pytest.raises(PaginationError) as caught:
        read_ids(reader)

    message = str(caught.value)
    assert "reported 25 records for the window but its pages held 24" in message
    assert f"source '{SOURCE}', table 'items'" in message
    assert "did not agree in 3 reading(s)" in message
    # three readings of four requests each (the last finds nothing): bounded, then it fails
    assert len(api.requests) == 12


@pytest.mark.parametrize("parallel_requests", [1, 4])
def test_a_page_api_that_caps_its_page_size_fails_instead_of_skipping_records(
    httpserver: HTTPServer, parallel_requests: int
) -> None:
    api = MovingApi(list(range(45)), style="page", cap=8)
    httpserver.expect_request("/items").respond_with_handler(api)
    pagination = {"type": "page", "size": PAGE, "total_pages_path": "meta.pages", "max_pages": 20}
    stream = KEYED.model_copy(update={"max_restarts": 0})
    reader = reader_of(httpserver, pagination, stream, parallel_requests=parallel_requests)

    with pytest.raises(PaginationError, match="fewer than the page size 10, before the last page"):
        read_ids(reader)


def test_pages_that_never_agree_fail_after_max_restarts(httpserver: HTTPServer) -> None:
    api = MovingApi(list(range(30)), moves={n: one_more for n in range(1, 100)})
    httpserver.expect_request("/items").respond_with_handler(api)
    stream = KEYED.model_copy(update={"max_restarts": 1})
    reader = reader_of(httpserver, OFFSET_TOTAL, stream)

    with pytest.raises(PaginationError, match="total changed") as caught:
        read_ids(reader)

    assert "did not agree in 2 reading(s)" in str(caught.value)
    assert "order_by" in str(caught.value)
    assert len(api.requests) == 4


def test_a_restart_hands_the_writer_no_row_twice(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    api = MovingApi(list(range(30)), moves={1: moved_forward})
    httpserver.expect_request("/items").respond_with_handler(api)
    stream = {
        "name": "items",
        "path": "/items",
        "records_path": "data",
        "primary_key": ["id"],
        "fields": {"id": "int64"},
        "pagination": OFFSET_TOTAL,
    }
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [stream])

    result = project.materialize(["items"], instance)

    ids = project.delta("items").to_pyarrow_table().column("id").to_pylist()
    assert sorted(ids) == list(range(30))
    materialization = result.asset_materializations_for_node(f"{SOURCE}__items")[0]
    assert materialization.metadata["api_restarts"].value == 1
    assert materialization.metadata["dagster/row_count"].value == 30


@dataclass
class SortingApi:
    """An offset API that sorts by id when asked (`sort=id`), or ignores the parameter."""

    honours: bool
    ids: list[int] = field(default_factory=lambda: [5, 3, 9, 1, 7, 2, 8, 4, 6, 0, 11, 10])
    requests: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, request: Request) -> Response:
        args = dict(request.args)
        self.requests.append(args)
        ids = sorted(self.ids) if self.honours and args.get("sort") == "id" else self.ids
        start, size = int(args["offset"]), int(args["limit"])
        return json_body({"data": [{"id": i} for i in ids[start : start + size]]})


@pytest.mark.parametrize("honours", [True, False])
def test_order_by_is_asked_for_on_every_page_and_an_api_that_ignores_it_fails(
    httpserver: HTTPServer, honours: bool
) -> None:
    api = SortingApi(honours)
    httpserver.expect_request("/items").respond_with_handler(api)
    stream = StreamSpec.model_validate(
        {**KEYED.model_dump(exclude_none=True), "order_by": {"field": "id", "param": "sort"}}
    )
    reader = reader_of(httpserver, {"type": "offset", "limit": 5}, stream)

    if honours:
        assert read_ids(reader) == list(range(12))
    else:
        with pytest.raises(PaginationError, match="does not return records in the order") as caught:
            read_ids(reader)
        assert "sort=id" in str(caught.value)
        assert "5 came before 3" in str(caught.value)
    assert all(args["sort"] == "id" for args in api.requests)


# ---- 3. a whole-response deadline and a size limit ------------------------------------------------


@dataclass
class DrippingServer:
    """An HTTP server that sends its headers at once, then its body a byte at a time (with
    `headers_too`, its status line and headers as well)."""

    body: bytes
    seconds_per_byte: float
    headers_too: bool = False
    sent: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def head(self) -> bytes:
        """The status line and headers, long enough to take a while a byte at a time."""
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(self.body)}\r\nX-Padding: {'a' * 200}\r\n\r\n".encode()
        )

    @contextlib.contextmanager
    def running(self) -> Iterator[str]:
        drip = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                """Quiet."""

            def do_GET(self) -> None:
                dripped = drip.body
                if drip.headers_too:
                    dripped = drip.head() + drip.body
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(drip.body)))
                    self.end_headers()
                sent = 0
                try:
                    for byte in dripped:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        sent += 1
                        if drip.stop.wait(drip.seconds_per_byte):
                            break
                except OSError:
                    pass  # the client hung up: what it had is recorded below
                drip.sent.append(sent)

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            self.stop.set()
            server.shutdown()
            server.server_close()
            thread.join(SERVER_DEADLINE_SECONDS)


def test_a_body_dripped_a_byte_at_a_time_is_cut_off_at_the_response_deadline() -> None:
    body = json.dumps({"data": [{"id": i} for i in range(40)]}).encode()
    drip = DrippingServer(body, seconds_per_byte=0.05)
    stream = KEYED.model_copy(update={"response_deadline_seconds": 0.5})
    with drip.running() as url:
        # each byte comes well within the read timeout: only the deadline can stop this
        reader = reader_of(url, {"type": "offset", "limit": 100}, stream, read_timeout=5.0)
        with pytest.raises(SourceError) as caught:
            read_ids(reader)
        deadline = time.monotonic() + SERVER_DEADLINE_SECONDS
        while len(drip.sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

    message = str(caught.value)
    assert "did not arrive within 0.5 s (`response_deadline_seconds`)" in message
    assert "after 2 attempt(s)" in message
    assert f"source '{SOURCE}', table 'items'" in message
    # two attempts, each hung up on long before the body's end
    assert len(drip.sent) == 2
    assert all(sent < len(body) // 2 for sent in drip.sent)


def test_headers_dripped_a_byte_at_a_time_are_cut_off_at_the_response_deadline() -> None:
    body = json.dumps({"data": [{"id": i} for i in range(3)]}).encode()
    drip = DrippingServer(body, seconds_per_byte=0.05, headers_too=True)
    stream = KEYED.model_copy(update={"response_deadline_seconds": 0.5})
    with drip.running() as url:
        # no response object exists yet while the headers arrive: the socket is shut all the same
        reader = reader_of(url, {"type": "offset", "limit": 100}, stream, read_timeout=5.0)
        started = time.monotonic()
        with pytest.raises(SourceError) as caught:
            read_ids(reader)
        elapsed = time.monotonic() - started
        deadline = time.monotonic() + SERVER_DEADLINE_SECONDS
        while len(drip.sent) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

    assert "did not arrive within 0.5 s (`response_deadline_seconds`)" in str(caught.value)
    assert len(drip.sent) == 2
    assert all(sent < len(drip.head()) for sent in drip.sent), "cut off inside the headers"
    # two attempts of half a second and a backoff, far below the 12 s the headers would take
    assert elapsed < 5


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_max_response_bytes_fails_naming_the_stream_and_the_limit(
    httpserver: HTTPServer, declared: bool
) -> None:
    big = json.dumps({"data": [{"id": i} for i in range(500)]}).encode()
    if declared:
        httpserver.expect_request("/items").respond_with_data(big, content_type="application/json")
    else:
        # chunked, no Content-Length: the limit is counted while the body arrives
        httpserver.expect_request("/items").respond_with_response(
            Response(
                iter([big[i : i + 1000] for i in range(0, len(big), 1000)]),
                content_type="application/json",
            )
        )
    stream = KEYED.model_copy(update={"max_response_bytes": 2000})
    reader = reader_of(httpserver, {"type": "offset", "limit": 500}, stream)

    with pytest.raises(ResponseTooLargeError) as caught:
        read_ids(reader)

    message = str(caught.value)
    assert "max_response_bytes (2000 bytes)" in message
    assert f"source '{SOURCE}', table 'items'" in message
    # a body that large will not shrink: not retried
    assert len(httpserver.log) == 1


def test_the_limits_are_set_on_the_source_and_overridden_per_stream() -> None:
    spec = RestSourceSpec.model_validate(
        {
            "type": "rest",
            "base_url": "http://127.0.0.1:1",
            "start_date": "2024-01-01",
            "response_deadline_seconds": 30,
            "max_response_bytes": 1_000_000,
            "streams": [
                {"name": "a", "path": "/a"},
                {
                    "name": "b",
                    "path": "/b",
                    "response_deadline_seconds": 5,
                    "max_response_bytes": 10,
                },
            ],
        }
    )
    default = RestSourceSpec.model_validate(
        {"type": "rest", "base_url": "http://127.0.0.1:1", "streams": [{"name": "a", "path": "/a"}]}
    )

    assert [(s.response_deadline_seconds, s.max_response_bytes) for s in spec.streams] == [
        (30, 1_000_000),
        (5, 10),
    ]
    assert (
        default.streams[0].response_deadline_seconds,
        default.streams[0].max_response_bytes,
    ) == (
        300.0,
        256 * 1024 * 1024,
    )


# ---- 4. credentials never leave the origin --------------------------------------------------------

HOPS = ["redirect", "link_header", "next_url"]


def _away(style: str, target: str) -> Response:
    if style == "redirect":
        return Response(status=302, headers={"Location": target})
    if style == "link_header":
        return json_body({"data": [{"id": 0}]}, Link=f'<{target}>; rel="next"')
    return json_body({"data": [{"id": 0}], "next": target})


def _pagination(style: str) -> Any:
    if style == "redirect":
        return PAGINATION.validate_python({"type": "offset", "limit": 1})
    return PAGINATION.validate_python({"type": style})


@pytest.mark.parametrize("style", HOPS)
@pytest.mark.parametrize("kind", list(AUTH_CASES))
def test_a_hop_to_an_origin_the_stream_does_not_allow_fails_and_sends_it_nothing(
    httpserver: HTTPServer, elsewhere: HTTPServer, kind: str, style: str
) -> None:
    case = AUTH_CASES[kind]
    target = elsewhere.url_for("/items") + "?from=1"
    httpserver.expect_request("/items").respond_with_handler(lambda request: _away(style, target))
    elsewhere.expect_request("/items").respond_with_json({"data": [{"id": 1}]})
    reader = resource_reader(httpserver, _pagination(style), **case.settings(case.right))

    with pytest.raises(ForeignOriginError) as caught:
        read_ids(reader)

    message = str(caught.value)
    assert f"http://127.0.0.1:{elsewhere.port}" in message
    assert "allowed_origins" in message
    assert case.right not in message
    assert len(elsewhere.log) == 0


@pytest.mark.parametrize("target", ["https", "ftp"])
def test_a_redirect_to_another_scheme_on_the_same_host_and_port_is_refused(
    httpserver: HTTPServer, target: str
) -> None:
    location = httpserver.url_for("/items").replace("http://", f"{target}://")
    httpserver.expect_request("/items").respond_with_response(
        Response(status=307, headers={"Location": location})
    )
    case = AUTH_CASES["bearer"]
    reader = resource_reader(httpserver, **case.settings(case.right))

    with pytest.raises(ForeignOriginError, match="another origin"):
        read_ids(reader)

    assert len(httpserver.log) == 1


@pytest.mark.parametrize("style", HOPS)
def test_an_allowed_origin_gets_no_cookie_and_no_api_key_the_api_echoed_into_the_link(
    httpserver: HTTPServer, elsewhere: HTTPServer, style: str
) -> None:
    # the API sets a session cookie and echoes the key into its link, as careless ones do
    target = elsewhere.url_for("/items") + f"?from=1&api_key={API_KEY}"

    def first(request: Request) -> Response:
        response = _away(style, target)
        response.set_cookie("session", "cookie-Secret-4d1e9b")
        return response

    httpserver.expect_request("/items").respond_with_handler(first)
    elsewhere.expect_request("/items").respond_with_json(
        {"data": [{"id": 1}] if style != "redirect" else []}
    )
    case = AUTH_CASES["api_key_query"]
    stream = KEYED.model_copy(update={"allowed_origins": (elsewhere.url_for("/"),)})
    reader = resource_reader(httpserver, _pagination(style), stream, **case.settings(case.right))

    read_ids(reader)

    assert len(elsewhere.log) == 1
    sent = elsewhere.log[0][0]
    assert credentials_sent(sent) == []
    assert "Cookie" not in sent.headers
    assert API_KEY not in sent.query_string.decode()
    assert sent.args.get("from") == "1"


def test_allowed_origins_must_be_origins() -> None:
    for wrong in [
        "files.example.com",
        "https://files.example.com/path",
        "https://u:p@host",
        "ftp://host",
    ]:
        with pytest.raises(ValidationError, match="scheme://host"):
            StreamSpec(name="a", path="/a", allowed_origins=(wrong,))
    assert StreamSpec(
        name="a", path="/a", allowed_origins=("HTTPS://Files.Example.com/",)
    ).allowed_origins == ("https://files.example.com:443",)


# ---- 6. the window the API answered, and the source count ----------------------------------------


def test_records_outside_the_window_fail_naming_stream_window_a_sample_and_the_fix(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    stored = [
        {"id": 1, "modified": "2011-05-31 10:00:00", "amount": "1"},
        {"id": 2, "modified": "2011-06-01 02:00:00", "amount": "2"},
        {"id": 3, "modified": "2011-06-01 09:30:00", "amount": "3"},
    ]

    def text_comparing(request: Request) -> Response:
        # an API that compares its text timestamps with the ISO bounds it is given: ' ' < 'T'
        since, until = request.args["since"], request.args["until"]
        return json_body({"data": [r for r in stored if since <= r["modified"] < until]})

    httpserver.expect_request("/orders").respond_with_handler(text_comparing)
    stream = _orders(fields={"id": "int64", "modified": "timestamp", "amount": "decimal(19,4)"})
    project = rest_project(
        tmp_path / "lake", httpserver.url_for("/"), [stream], start_date="2011-05-01"
    )

    result = project.materialize(["orders"], instance, partition="2011-05-31", raise_on_error=False)

    message = failure_message(result)
    assert f"source '{SOURCE}', table 'orders', partition 2011-05-31" in message
    assert "2 record(s) whose modified is outside the window" in message
    assert "2011-06-01 02:00:00" in message
    assert "check the stream's window parameters" in message
    with pytest.raises(TableNotFoundError):
        DeltaTable(project.table_uri("orders"))


def test_an_inferred_stream_fails_on_records_outside_the_window_too(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_json(
        {"data": [{"id": 1, "at": "2024-01-03T10:00:00"}, {"id": 2, "at": "2024-01-04T00:00:00"}]}
    )
    stream = StreamSpec(name="items", path="/items", records_path="data", partition_field="at")
    window = PartitionWindow.of_days(datetime.date(2024, 1, 3), datetime.date(2024, 1, 3))
    reader = reader_of(httpserver, {"type": "offset"}, stream)

    with pytest.raises(OutsideWindowError, match="2024-01-04T00:00:00"):
        reader.read(window)


TOTAL_API = {"type": "offset", "limit": PAGE, "total_path": "meta.total"}


def test_count_is_the_total_of_a_request_of_its_own_not_the_rows_read(
    httpserver: HTTPServer,
) -> None:
    api = MovingApi(list(range(12)))
    httpserver.expect_request("/items").respond_with_handler(api)
    reader = reader_of(httpserver, TOTAL_API)
    assert len(read_ids(reader)) == 12
    api.ids = list(range(15))

    assert reader.count(None) == 15
    assert len(api.requests) == 3


@pytest.mark.parametrize("body", ["error_object", "no_total"])
def test_count_fails_on_an_answer_without_its_total_instead_of_reporting_none(
    httpserver: HTTPServer, body: str
) -> None:
    answer = {"error": "maintenance"} if body == "error_object" else {"data": [], "meta": {}}
    httpserver.expect_request("/items").respond_with_json(answer)
    reader = reader_of(httpserver, TOTAL_API)

    with pytest.raises(SourceError) as caught:
        reader.count(None)

    assert f"source '{SOURCE}', table 'items'" in str(caught.value)
    assert ("no list of records" if body == "error_object" else "reports no total") in str(
        caught.value
    )


def test_a_pagination_without_a_total_is_not_counted_and_the_api_not_asked(
    httpserver: HTTPServer,
) -> None:
    reader = reader_of(httpserver, {"type": "offset", "limit": PAGE})

    assert reader.count(None) is None
    assert len(httpserver.log) == 0


def test_the_new_data_sensor_drops_what_a_day_granular_filter_sends_from_before_its_cursor(
    httpserver: HTTPServer,
) -> None:
    day = datetime.date.today() - datetime.timedelta(days=1)
    records = [
        {"id": 1, "modified": f"{day}T01:00:00"},
        {"id": 2, "modified": f"{day}T12:00:00"},
    ]
    # the API filters by whole days only: it answers the cursor's whole day
    httpserver.expect_request("/orders").respond_with_json({"data": records})
    stream = StreamSpec(
        name="orders",
        path="/orders",
        records_path="data",
        params={"day": "{start:%Y-%m-%d}"},
        partition_field="modified",
        fields={"id": "int64", "modified": "timestamp"},
        pagination=PAGINATION.validate_python({"type": "offset"}),
    )
    source = RestSource(SOURCE, httpserver.url_for("/"))

    changed = source.changed_days(stream, f"{day}T06:00:00")

    assert changed.days == [day]
    assert changed.newest == f"{day}T12:00:00"
    source.close()


def test_a_token_endpoint_that_redirects_elsewhere_is_not_followed_with_the_client_secret(
    httpserver: HTTPServer, elsewhere: HTTPServer
) -> None:
    secret = "client-Secret-7e21c4"
    # a 307 keeps the method and the body: the form with the client secret would go along
    httpserver.expect_request("/oauth/token", method="POST").respond_with_response(
        Response(status=307, headers={"Location": elsewhere.url_for("/oauth/token")})
    )
    elsewhere.expect_request("/oauth/token").respond_with_json({"access_token": "stolen"})
    auth = OAuth2ClientCredentialsConfig(
        token_url=httpserver.url_for("/oauth/token"), client_id="ingest", client_secret=secret
    )
    reader = resource_reader(httpserver, auth=auth)

    with pytest.raises(SourceError, match="token endpoint answered HTTP 307") as caught:
        read_ids(reader)

    assert secret not in str(caught.value)
    assert len(elsewhere.log) == 0
