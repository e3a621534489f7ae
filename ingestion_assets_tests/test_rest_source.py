"""REST streams against real HTTP servers on 127.0.0.1: paginators, auth, faults, windows, coercion."""

from __future__ import annotations

import base64
import datetime
import decimal
import json
import math
import pathlib
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pytest
import yaml
from dagster import (
    AssetKey,
    Config,
    DagsterInstance,
    EnvVar,
    ExecuteInProcessResult,
    build_resources,
    build_sensor_context,
    materialize,
    serialize_value,
)
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ingestion_assets.definitions import build_definitions
from ingestion_assets.errors import ConfigError, SourceError
from ingestion_assets.lake.rows import PARTITION_DATE, RUN_ID
from ingestion_assets.merge_asset import FULL_REFRESH_TAG
from ingestion_assets.project import parse_project
from ingestion_assets.resources import (
    ApiKeyAuthConfig,
    BasicAuthConfig,
    BearerAuthConfig,
    OAuth2ClientCredentialsConfig,
    RestSourceResource,
)
from ingestion_assets.sources.rest.client import (
    BODY_EXCERPT_CHARACTERS,
    MIN_RETRY_AFTER_SECONDS,
    RestClient,
    RetryPolicy,
    retry_after_seconds,
)
from ingestion_assets.sources.rest.paginators import PaginationError
from ingestion_assets.sources.rest.reader import RestStreamReader
from ingestion_assets.sources.rest.redaction import redact_url
from ingestion_assets.sources.rest.source import RestSource
from ingestion_assets.specs import (
    NextUrlPagination,
    OffsetPagination,
    Pagination,
    PaginationSpec,
    RestSourceSpec,
    StreamSpec,
)
from ingestion_assets_tests.conftest import (
    SOURCE,
    IngestProject,
    failure_message,
    started_http_server,
)

PAGE_SIZE = 10
DAY = "2024-01-03"
NEXT_DAY = "2024-01-04"
MAX_ATTEMPTS = 4
FAST_RETRIES = {"backoff_seconds": 0.01, "max_attempts": MAX_ATTEMPTS}
# bounds every wait on a server thread or on the server's log, so no test can hang
SERVER_DEADLINE_SECONDS = 10.0
PAGINATION = TypeAdapter(PaginationSpec)

# ---- the servers ----------------------------------------------------------------------------------


def wait_for_requests(server: HTTPServer, count: int) -> None:
    """Poll (with a deadline) until the server has answered `count` requests."""
    deadline = time.monotonic() + SERVER_DEADLINE_SECONDS
    while len(server.log) < count:
        assert time.monotonic() < deadline, f"the server answered {len(server.log)} of {count}"
        time.sleep(0.01)


# the pagination styles the paginators support, with the settings a stream gives each
STYLES: dict[str, dict[str, Any]] = {
    "offset_total_body": {"type": "offset", "total_path": "meta.total"},
    "offset_total_header": {"type": "offset", "total_header": "X-Total-Count"},
    "offset_short_page": {"type": "offset"},
    "offset_from_one": {"type": "offset", "start_offset": 1, "total_path": "meta.total"},
    "page_total_pages": {"type": "page", "total_pages_path": "meta.pages"},
    "cursor": {"type": "cursor", "cursor_path": "meta.next_cursor"},
    "has_more": {"type": "page", "has_more_path": "meta.has_more"},
    "link_header": {"type": "link_header"},
    "next_url": {"type": "next_url", "next_path": "meta.next"},
}
TOTAL_STYLES = ["offset_total_body", "offset_total_header", "offset_from_one", "page_total_pages"]
OPEN_ENDED_STYLES = ["offset_short_page", "has_more", "cursor", "link_header", "next_url"]
LINKED_STYLES = ["cursor", "link_header", "next_url"]


def pagination_spec(style: str, size: int = PAGE_SIZE, **extra: Any) -> dict[str, Any]:
    """The `pagination:` block for a style with `size` records per page."""
    spec = dict(STYLES[style])
    if spec["type"] == "offset":
        spec["limit"] = size
    elif spec["type"] == "page":
        spec["size"] = size
    return {**spec, **extra}


@dataclass
class FakeApi:
    """A paged API over records `{"id": 0..total-1}` in one style; `total` None: it never ends."""

    style: str
    total: int | None
    page_size: int = PAGE_SIZE
    claimed_total: int | None = None
    grows_after_first_request: bool = False
    # a page more at every request: no two pages ever agree, however often the window restarts
    grows_with_every_request: bool = False
    loops_back: bool = False
    requests: list[dict[str, str]] = field(default_factory=list)

    def _asked(self, args: Mapping[str, str]) -> tuple[int, int]:
        """The first record's index and the page size a request asks for."""
        kind = STYLES[self.style]["type"]
        if kind == "offset":
            start_offset = STYLES[self.style].get("start_offset", 0)
            return int(args["offset"]) - start_offset, int(args["limit"])
        if kind == "page":
            size = int(args["page_size"])
            return (int(args["page"]) - 1) * size, size
        if kind == "cursor":
            cursor = args.get("cursor")
            return (int(cursor.removeprefix("c")) if cursor else 0), self.page_size
        return int(args.get("from", "0")), self.page_size

    def __call__(self, request: Request) -> Response:
        args = dict(request.args)
        self.requests.append(args)
        start, size = self._asked(args)
        if self.total is None:
            count = start + size + 1
        else:
            count = self.total + int(self.grows_after_first_request and len(self.requests) > 1)
            if self.grows_with_every_request:
                count = self.total + (len(self.requests) - 1) * self.page_size
        claimed = self.claimed_total if self.claimed_total is not None else count
        following: int | None = start + size if start + size < count else None
        if self.loops_back and following is not None and start >= 2 * size:
            following = size
        meta: dict[str, Any] = {}
        headers: dict[str, str] = {}
        if self.style in ("offset_total_body", "offset_from_one"):
            meta["total"] = claimed
        elif self.style == "offset_total_header":
            headers["X-Total-Count"] = str(claimed)
        elif self.style == "page_total_pages":
            meta["pages"] = math.ceil(claimed / size)
        elif self.style == "has_more":
            meta["has_more"] = following is not None
        elif self.style == "cursor":
            meta["next_cursor"] = None if following is None else f"c{following}"
        elif self.style == "link_header" and following is not None:
            headers["Link"] = f'</items?from={following}>; rel="next"'
        elif self.style == "next_url" and following is not None:
            meta["next"] = f"{request.host_url}items?from={following}"
        body = {"data": [{"id": index} for index in range(start, min(start + size, count))]}
        return Response(
            json.dumps({**body, "meta": meta}), headers=headers, content_type="application/json"
        )


ITEMS = StreamSpec(name="items", path="/items", records_path="data", fields={"id": "int64"})


def stream_reader(
    server: HTTPServer,
    pagination: Mapping[str, Any],
    parallel_requests: int,
    stream: StreamSpec = ITEMS,
) -> RestStreamReader:
    """A reader of `stream` on the server, built directly from a client and specs."""
    client = RestClient(
        SOURCE, server.url_for("/"), retry=RetryPolicy(max_attempts=2, backoff_seconds=0.01)
    )
    spec: Pagination = PAGINATION.validate_python(dict(pagination))
    return RestStreamReader(client, stream, spec, parallel_requests=parallel_requests)


def read_ids(reader: RestStreamReader) -> list[int]:
    """Every id the reader yields, in order."""
    ids: list[int] = reader.read(None).reader.read_all().column("id").to_pylist()
    return ids


def serve(server: HTTPServer, api: FakeApi) -> FakeApi:
    """Let `api` answer every request to /items."""
    server.expect_request("/items").respond_with_handler(api)
    return api


# ---- end-to-end projects ---------------------------------------------------------------------------


def rest_project(
    lake: pathlib.Path,
    base_url: str,
    streams: Sequence[Mapping[str, Any]],
    **source_options: Any,
) -> IngestProject:
    """Write a project file with one REST source and load it the way Dagster would."""
    source: dict[str, Any] = {
        "type": "rest",
        "base_url": base_url,
        "start_date": "2024-01-01",
        "retries": FAST_RETRIES,
        "pagination": {"type": "offset", "limit": 100},
        "streams": list(streams),
    }
    source.update(source_options)
    text = yaml.safe_dump({"lake": {"root": str(lake)}, "sources": {SOURCE: source}})
    spec = parse_project(text, "test-rest-project.yaml")
    return IngestProject(spec, build_definitions(spec), lake)


def orders_stream(**overrides: Any) -> dict[str, Any]:
    """A partitioned `orders` stream with a declared schema."""
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


def orders(day: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """Records of `day` as the API sends them."""
    return [
        {"id": order, "modified": f"{day}T{order % 24:02d}:30:00Z", "amount": f"{order}.25"}
        for order in ids
    ]


def expected_orders(day: str, ids: Sequence[int]) -> list[dict[str, Any]]:
    """The rows `orders(day, ids)` must become in Delta."""
    moment = datetime.datetime.fromisoformat(day).replace(tzinfo=datetime.UTC)
    return [
        {
            "id": order,
            "modified": moment + datetime.timedelta(hours=order % 24, minutes=30),
            "amount": decimal.Decimal(f"{order}.2500"),
        }
        for order in ids
    ]


def lake_rows(project: IngestProject, name: str, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Some columns of a Delta table's rows, ordered by id."""
    table = project.delta(name).to_pyarrow_table().select(list(columns))
    return sorted(table.to_pylist(), key=lambda row: row["id"])


def run_metadata(result: ExecuteInProcessResult, name: str = "orders") -> dict[str, Any]:
    """The metadata of the run's materialization of `[src, name]`, as plain values."""
    materializations = result.asset_materializations_for_node(f"{SOURCE}__{name}")
    assert len(materializations) == 1
    return {
        key: getattr(value, "value", value) for key, value in materializations[0].metadata.items()
    }


def json_body(payload: Any, status: int = 200, **headers: str) -> Response:
    """A JSON response."""
    return Response(
        json.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


# ---- 1. paginators -------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel_requests", [1, 4])
@pytest.mark.parametrize("total", [0, 3 * PAGE_SIZE, 2 * PAGE_SIZE + 3])
@pytest.mark.parametrize("style", list(STYLES))
def test_every_paginator_reads_each_record_once(
    httpserver: HTTPServer, style: str, total: int, parallel_requests: int
) -> None:
    api = serve(httpserver, FakeApi(style, total))
    reader = stream_reader(httpserver, pagination_spec(style), parallel_requests)

    assert read_ids(reader) == list(range(total))
    # only an API that gives no total nor flag needs one empty page to see the end
    empty_last_page = style == "offset_short_page" and total > 0 and total % PAGE_SIZE == 0
    assert len(api.requests) == max(1, math.ceil(total / PAGE_SIZE)) + int(empty_last_page)


@pytest.mark.parametrize("parallel_requests", [1, 4])
@pytest.mark.parametrize("style", TOTAL_STYLES)
def test_a_total_that_changes_during_the_run_fails_it_and_writes_nothing(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    style: str,
    parallel_requests: int,
) -> None:
    serve(httpserver, FakeApi(style, 3 * PAGE_SIZE, grows_with_every_request=True))
    stream = {
        "name": "items",
        "path": "/items",
        "records_path": "data",
        "fields": {"id": "int64"},
        "pagination": pagination_spec(style),
    }
    project = rest_project(
        tmp_path / "lake",
        httpserver.url_for("/"),
        [stream],
        parallel_requests=parallel_requests,
    )

    result = project.materialize(["items"], instance, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert "total changed" in message
    assert "source 'src', table 'items'" in message
    with pytest.raises(TableNotFoundError):
        DeltaTable(project.table_uri("items"))


@pytest.mark.parametrize("style", LINKED_STYLES)
def test_a_cursor_or_link_that_loops_is_stopped_naming_the_loop(
    httpserver: HTTPServer, style: str
) -> None:
    api = serve(httpserver, FakeApi(style, 10 * PAGE_SIZE, loops_back=True))
    reader = stream_reader(httpserver, pagination_spec(style), parallel_requests=4)

    with pytest.raises(PaginationError, match="loops") as caught:
        read_ids(reader)

    assert "sent the same" in str(caught.value)
    # pages 1, 2, 3; page 3 points back at page 2
    assert len(api.requests) == 3


@pytest.mark.parametrize("parallel_requests", [1, 4])
@pytest.mark.parametrize("style", TOTAL_STYLES)
def test_an_absurd_total_fails_on_max_pages_before_fetching_the_pages(
    httpserver: HTTPServer, style: str, parallel_requests: int
) -> None:
    api = serve(httpserver, FakeApi(style, 10**9, claimed_total=10**9))
    reader = stream_reader(httpserver, pagination_spec(style), parallel_requests)

    with pytest.raises(PaginationError, match=r"max_pages \(10000\)"):
        read_ids(reader)

    assert len(api.requests) == 1


@pytest.mark.parametrize("style", OPEN_ENDED_STYLES)
def test_an_api_that_always_has_more_is_stopped_at_max_pages(
    httpserver: HTTPServer, style: str
) -> None:
    api = serve(httpserver, FakeApi(style, None))
    reader = stream_reader(httpserver, pagination_spec(style, max_pages=5), parallel_requests=4)

    with pytest.raises(PaginationError, match=r"max_pages \(5\)"):
        read_ids(reader)

    assert len(api.requests) == 5


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(total=st.integers(0, 45), page_size=st.integers(1, 12))
@pytest.mark.parametrize("style", TOTAL_STYLES)
def test_parallel_pages_equal_sequential_pages_and_cover_every_record_once(
    httpserver: HTTPServer, style: str, total: int, page_size: int
) -> None:
    spec = pagination_spec(style, page_size)
    httpserver.clear()
    serve(httpserver, FakeApi(style, total, page_size))
    sequential = read_ids(stream_reader(httpserver, spec, parallel_requests=1))
    httpserver.clear()
    api = serve(httpserver, FakeApi(style, total, page_size))
    parallel = read_ids(stream_reader(httpserver, spec, parallel_requests=4))

    assert parallel == sequential == list(range(total))
    assert len(api.requests) == max(1, math.ceil(total / page_size))


# ---- 2. auth ---------------------------------------------------------------------------------------

USERNAME = "reader"
PASSWORD = "pw-Right-7c3e9a"
TOKEN = "tok-Right-41f0b2"
API_KEY = "key-Right-0d8a5c"
WRONG = "wrong-Secret-93be17"


def basic_header(username: str, password: str) -> str:
    """The Authorization header of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()


@dataclass(frozen=True)
class AuthCase:
    """One way to authenticate: resource settings with a secret, and how the server checks it."""

    settings: Callable[[str], dict[str, Any]]
    accepts: Callable[[Request], bool]
    right: str


AUTH_CASES = {
    "basic": AuthCase(
        lambda secret: {"auth": BasicAuthConfig(username=USERNAME, password=secret)},
        lambda request: request.headers.get("Authorization") == basic_header(USERNAME, PASSWORD),
        PASSWORD,
    ),
    "bearer": AuthCase(
        lambda secret: {"auth": BearerAuthConfig(token=secret)},
        lambda request: request.headers.get("Authorization") == f"Bearer {TOKEN}",
        TOKEN,
    ),
    "api_key_header": AuthCase(
        lambda secret: {"auth": ApiKeyAuthConfig(name="X-API-Key", value=secret)},
        lambda request: request.headers.get("X-API-Key") == API_KEY,
        API_KEY,
    ),
    "api_key_query": AuthCase(
        lambda secret: {"auth": ApiKeyAuthConfig(name="api_key", value=secret, location="query")},
        lambda request: request.args.get("api_key") == API_KEY,
        API_KEY,
    ),
}


def guarded(accepts: Callable[[Request], bool], pages: int = 2) -> Callable[[Request], Response]:
    """An API of `pages` pages of one record that answers 401 to bad credentials."""

    def handle(request: Request) -> Response:
        if not accepts(request):
            return json_body({"error": "unauthorized"}, status=401)
        offset = int(request.args.get("offset", "0"))
        return json_body({"data": [{"id": offset}] if offset < pages else []})

    return handle


def resource_reader(
    server: HTTPServer,
    pagination: Pagination | None = None,
    stream: StreamSpec = ITEMS,
    **settings: Any,
) -> RestStreamReader:
    """A reader of `stream` (/items) through the source resource (one record per page by
    default)."""
    resource = RestSourceResource(
        source_name=SOURCE,
        base_url=server.url_for("/"),
        max_attempts=2,
        backoff_seconds=0.01,
        parallel_requests=1,
        **settings,
    )
    return resource.reader(stream, pagination or OffsetPagination(limit=1))


@pytest.mark.parametrize("kind", list(AUTH_CASES))
def test_each_auth_kind_sends_the_credentials_the_server_checks(
    httpserver: HTTPServer, kind: str
) -> None:
    case = AUTH_CASES[kind]
    httpserver.expect_request("/items").respond_with_handler(guarded(case.accepts))

    assert read_ids(resource_reader(httpserver, **case.settings(case.right))) == [0, 1]
    assert len(httpserver.log) == 3
    assert all(response.status_code == 200 for _, response in httpserver.log)


@pytest.mark.parametrize("kind", list(AUTH_CASES))
def test_wrong_credentials_fail_without_showing_the_secret(
    httpserver: HTTPServer, kind: str
) -> None:
    case = AUTH_CASES[kind]
    httpserver.expect_request("/items").respond_with_handler(guarded(case.accepts))

    with pytest.raises(SourceError) as caught:
        read_ids(resource_reader(httpserver, **case.settings(WRONG)))

    message = str(caught.value)
    assert f"check credentials for source '{SOURCE}'" in message
    assert "HTTP 401" in message
    assert WRONG not in message
    assert basic_header(USERNAME, WRONG).split()[1] not in message
    # a 401 is not retried: the credentials will not get better
    assert len(httpserver.log) == 1


def test_an_api_key_in_a_next_url_is_masked_in_the_error(httpserver: HTTPServer) -> None:
    def handle(request: Request) -> Response:
        if request.args.get("from") == "1":
            return json_body({"error": "key revoked"}, status=401)
        # the API echoes the key into its next link, as many do
        return json_body({"data": [{"id": 0}], "next": f"/items?from=1&api_key={API_KEY}"})

    httpserver.expect_request("/items").respond_with_handler(handle)
    settings = AUTH_CASES["api_key_query"].settings(API_KEY)
    reader = resource_reader(httpserver, NextUrlPagination(), **settings)

    with pytest.raises(SourceError) as caught:
        read_ids(reader)

    message = str(caught.value)
    assert "check credentials for source" in message
    assert "api_key=***" in message
    assert "from=1" in message
    assert API_KEY not in message
    assert API_KEY in httpserver.log[1][0].query_string.decode()


def test_redact_url_masks_secret_parameters_passwords_and_secret_values() -> None:
    url = f"https://reader:{PASSWORD}@api.example.com/items?api_key={API_KEY}&page=2&q={TOKEN}"

    shown = redact_url(url, [PASSWORD, TOKEN], ["API_KEY"])

    assert shown == "https://api.example.com/items?api_key=***&page=2&q=***"


ENV_SECRET = "REST_TEST_SECRET"
# each kind as the project file writes it, its secret a ${VAR} reference; and that secret's field
ENV_AUTH: dict[str, tuple[dict[str, Any], type[Config], str]] = {
    "basic": (
        {"type": "basic", "username": USERNAME, "password": f"${{{ENV_SECRET}}}"},
        BasicAuthConfig,
        "password",
    ),
    "bearer": ({"type": "bearer", "token": f"${{{ENV_SECRET}}}"}, BearerAuthConfig, "token"),
    "api_key_header": (
        {"type": "api_key", "name": "X-API-Key", "value": f"${{{ENV_SECRET}}}"},
        ApiKeyAuthConfig,
        "value",
    ),
    "api_key_query": (
        {"type": "api_key", "name": "api_key", "value": f"${{{ENV_SECRET}}}", "location": "query"},
        ApiKeyAuthConfig,
        "value",
    ),
}


def rest_source_spec(server: HTTPServer, auth: Mapping[str, Any]) -> RestSourceSpec:
    """A REST source on the server with this `auth:` block."""
    return RestSourceSpec.model_validate(
        {
            "type": "rest",
            "base_url": server.url_for("/"),
            "start_date": "2024-01-01",
            "auth": dict(auth),
            "streams": [ITEMS.model_dump(exclude_none=True)],
        }
    )


@pytest.mark.parametrize("kind", list(ENV_AUTH))
def test_an_env_var_secret_in_the_nested_auth_config_is_read_only_when_a_run_initializes_it(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    case = AUTH_CASES[kind]
    auth, config_class, secret_field = ENV_AUTH[kind]
    monkeypatch.setenv(ENV_SECRET, case.right)
    httpserver.expect_request("/items").respond_with_handler(guarded(case.accepts))

    resource = RestSourceResource.from_spec(SOURCE, rest_source_spec(httpserver, auth))

    assert type(resource.auth) is config_class
    assert getattr(resource.auth, secret_field) == EnvVar(ENV_SECRET)
    with build_resources({"api": resource}) as initialized:
        reader = initialized.api.reader(ITEMS, OffsetPagination(limit=1))
        assert read_ids(reader) == [0, 1]
    assert all(response.status_code == 200 for _, response in httpserver.log)


@pytest.fixture
def elsewhere() -> Iterator[HTTPServer]:
    """A second server on another port of 127.0.0.1: another origin than the API's."""
    with started_http_server() as server:
        yield server


def credentials_sent(request: Request) -> list[str]:
    """Every credential a request carries: an Authorization or API key header, a key parameter."""
    headers = [request.headers.get(name) for name in ("Authorization", "X-API-Key")]
    return [value for value in headers if value] + request.args.getlist("api_key")


@pytest.mark.parametrize("style", ["next_url", "link_header"])
@pytest.mark.parametrize("kind", list(AUTH_CASES))
def test_a_page_link_to_another_origin_is_followed_without_the_credentials(
    httpserver: HTTPServer, elsewhere: HTTPServer, kind: str, style: str
) -> None:
    case = AUTH_CASES[kind]
    foreign = elsewhere.url_for("/items") + "?from=1"

    def first_page(request: Request) -> Response:
        if not case.accepts(request):
            return json_body({"error": "unauthorized"}, status=401)
        if style == "next_url":
            return json_body({"data": [{"id": 0}], "next": foreign})
        return json_body({"data": [{"id": 0}]}, Link=f'<{foreign}>; rel="next"')

    httpserver.expect_request("/items").respond_with_handler(first_page)
    elsewhere.expect_request("/items").respond_with_json({"data": [{"id": 1}]})
    pagination = PAGINATION.validate_python({"type": style})
    stream = ITEMS.model_copy(update={"allowed_origins": (elsewhere.url_for("/"),)})
    reader = resource_reader(httpserver, pagination, stream, **case.settings(case.right))

    assert read_ids(reader) == [0, 1]
    assert credentials_sent(httpserver.log[0][0])
    assert len(elsewhere.log) == 1
    assert credentials_sent(elsewhere.log[0][0]) == []


@pytest.mark.parametrize("kind", list(AUTH_CASES))
def test_a_redirect_to_another_origin_gets_no_credentials_not_even_an_api_key_header(
    httpserver: HTTPServer, elsewhere: HTTPServer, kind: str
) -> None:
    case = AUTH_CASES[kind]

    def moved_away(request: Request) -> Response:
        # the whole query goes along, an API key in it too, as a careless proxy forwards it
        location = elsewhere.url_for("/items") + "?" + request.query_string.decode()
        return Response(status=302, headers={"Location": location})

    # requests itself strips only Authorization on such a hop; an X-API-Key header would follow
    httpserver.expect_request("/items").respond_with_handler(moved_away)
    elsewhere.expect_request("/items").respond_with_json({"data": []})

    stream = ITEMS.model_copy(update={"allowed_origins": (elsewhere.url_for("/"),)})
    assert read_ids(resource_reader(httpserver, None, stream, **case.settings(case.right))) == []
    assert credentials_sent(httpserver.log[0][0])
    assert len(elsewhere.log) == 1
    assert credentials_sent(elsewhere.log[0][0]) == []
    assert elsewhere.log[0][0].args.get("offset") == "0"


@pytest.mark.parametrize("kind", list(AUTH_CASES))
def test_a_redirect_within_the_origin_keeps_the_credentials(
    httpserver: HTTPServer, kind: str
) -> None:
    case = AUTH_CASES[kind]

    def moved(request: Request) -> Response:
        # the query goes along, as a server moving a path keeps it
        location = "/items?" + request.query_string.decode()
        return Response(status=301, headers={"Location": location})

    httpserver.expect_request("/old/items").respond_with_handler(moved)
    httpserver.expect_request("/items").respond_with_handler(guarded(case.accepts, pages=1))
    stream = ITEMS.model_copy(update={"path": "/old/items"})
    resource = RestSourceResource(
        source_name=SOURCE,
        base_url=httpserver.url_for("/"),
        max_attempts=1,
        parallel_requests=1,
        **case.settings(case.right),
    )

    reader = resource.reader(stream, OffsetPagination(limit=1))

    assert read_ids(reader) == [0]
    assert [response.status_code for _, response in httpserver.log] == [301, 200, 301, 200]


CLIENT_ID = "ingest-client"
CLIENT_SECRET = "client-Secret-5a7d21"


@dataclass
class OAuthServer:
    """A token endpoint and an API that accepts only tokens it has issued and not revoked."""

    expires_in: int = 3600
    revoke_after_first_api_call: bool = False
    refuse_every_token: bool = False
    # past this many tokens the endpoint refuses the client, so a client that keeps asking stops
    max_tokens: int = 5
    issued: list[str] = field(default_factory=list)
    valid: set[str] = field(default_factory=set)
    api_calls: list[str] = field(default_factory=list)
    refusals: int = 0

    def token(self, request: Request) -> Response:
        form = request.form
        if (
            form.get("grant_type") != "client_credentials"
            or form.get("client_id") != CLIENT_ID
            or form.get("client_secret") != CLIENT_SECRET
            or len(self.issued) >= self.max_tokens
        ):
            return json_body({"error": "invalid_client"}, status=401)
        token = f"access-{len(self.issued) + 1}-9f2c"
        self.issued.append(token)
        self.valid.add(token)
        return json_body({"access_token": token, "expires_in": self.expires_in})

    def api(self, request: Request) -> Response:
        header = request.headers.get("Authorization", "")
        self.api_calls.append(header)
        token = header.removeprefix("Bearer ")
        if token not in self.valid or self.refuse_every_token:
            self.refusals += 1
            return json_body({"error": "invalid_token"}, status=401)
        if self.revoke_after_first_api_call and len(self.api_calls) == 1:
            self.valid.discard(token)
        offset = int(request.args["offset"])
        return json_body({"data": [{"id": offset}] if offset < 2 else []})

    def install(self, server: HTTPServer) -> None:
        server.expect_request("/oauth/token", method="POST").respond_with_handler(self.token)
        server.expect_request("/items", method="GET").respond_with_handler(self.api)


def oauth_reader(server: HTTPServer, client_secret: str = CLIENT_SECRET) -> RestStreamReader:
    """A reader with OAuth2 client credentials against the server's token endpoint."""
    auth = OAuth2ClientCredentialsConfig(
        token_url=server.url_for("/oauth/token"), client_id=CLIENT_ID, client_secret=client_secret
    )
    return resource_reader(server, auth=auth)


def test_oauth2_token_is_fetched_once_and_sent_as_bearer(httpserver: HTTPServer) -> None:
    oauth = OAuthServer()
    oauth.install(httpserver)

    assert read_ids(oauth_reader(httpserver)) == [0, 1]
    assert oauth.issued == ["access-1-9f2c"]
    assert oauth.api_calls == ["Bearer access-1-9f2c"] * 3
    assert oauth.refusals == 0


def test_oauth2_token_refused_as_expired_is_refreshed_exactly_once(
    httpserver: HTTPServer,
) -> None:
    oauth = OAuthServer(revoke_after_first_api_call=True)
    oauth.install(httpserver)

    assert read_ids(oauth_reader(httpserver)) == [0, 1]
    assert len(oauth.issued) == 2
    assert oauth.refusals == 1
    assert oauth.api_calls == [
        "Bearer access-1-9f2c",
        "Bearer access-1-9f2c",
        "Bearer access-2-9f2c",
        "Bearer access-2-9f2c",
    ]


def test_oauth2_refresh_happens_once_per_request_then_the_401_fails_the_read(
    httpserver: HTTPServer,
) -> None:
    oauth = OAuthServer(refuse_every_token=True)
    oauth.install(httpserver)

    with pytest.raises(SourceError, match="check credentials for source 'src'"):
        read_ids(oauth_reader(httpserver))

    assert len(oauth.issued) == 2
    assert oauth.refusals == 2


def test_pages_in_parallel_refused_the_same_expired_token_fetch_only_one_new_token(
    httpserver: HTTPServer,
) -> None:
    oauth = OAuthServer(revoke_after_first_api_call=True)
    total = 5 * PAGE_SIZE

    def api(request: Request) -> Response:
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        oauth.api_calls.append(token)
        if token not in oauth.valid:
            oauth.refusals += 1
            return json_body({"error": "invalid_token"}, status=401)
        if len(oauth.api_calls) == 1:
            oauth.valid.discard(token)
        offset = int(request.args["offset"])
        page = [{"id": index} for index in range(offset, min(offset + PAGE_SIZE, total))]
        return json_body({"data": page, "meta": {"total": total}})

    httpserver.expect_request("/oauth/token", method="POST").respond_with_handler(oauth.token)
    httpserver.expect_request("/items").respond_with_handler(api)
    auth = OAuth2ClientCredentialsConfig(
        token_url=httpserver.url_for("/oauth/token"),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    source = RestSource(SOURCE, httpserver.url_for("/"), auth, parallel_requests=4)
    pagination = OffsetPagination(limit=PAGE_SIZE, total_path="meta.total")
    stream = ITEMS.model_copy(update={"pagination": pagination})

    try:
        assert read_ids(source.reader(stream)) == list(range(total))
    finally:
        source.close()
    # the first page with the first token; the other four refused it, then sent the second
    assert oauth.issued == ["access-1-9f2c", "access-2-9f2c"]
    assert oauth.refusals >= 1
    assert oauth.api_calls.count("access-2-9f2c") == 4


def test_oauth2_token_expiring_within_the_margin_is_fetched_again_on_the_next_request(
    httpserver: HTTPServer,
) -> None:
    oauth = OAuthServer(expires_in=5)
    oauth.install(httpserver)

    assert read_ids(oauth_reader(httpserver)) == [0, 1]
    assert len(oauth.issued) == 3
    assert oauth.api_calls == [f"Bearer {token}" for token in oauth.issued]
    assert oauth.refusals == 0


def test_oauth2_wrong_client_secret_fails_without_showing_it(httpserver: HTTPServer) -> None:
    oauth = OAuthServer()
    oauth.install(httpserver)

    with pytest.raises(SourceError) as caught:
        read_ids(oauth_reader(httpserver, client_secret=WRONG))

    message = str(caught.value)
    assert f"source '{SOURCE}'" in message
    assert "client secret" in message
    assert WRONG not in message
    assert oauth.api_calls == []


def test_an_env_var_client_secret_is_read_when_a_run_initializes_the_resource(
    httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_SECRET, CLIENT_SECRET)
    oauth = OAuthServer()
    oauth.install(httpserver)
    auth = {
        "type": "oauth2_client_credentials",
        "token_url": httpserver.url_for("/oauth/token"),
        "client_id": CLIENT_ID,
        "client_secret": f"${{{ENV_SECRET}}}",
    }

    resource = RestSourceResource.from_spec(SOURCE, rest_source_spec(httpserver, auth))

    assert isinstance(resource.auth, OAuth2ClientCredentialsConfig)
    assert resource.auth.client_secret == EnvVar(ENV_SECRET)
    with build_resources({"api": resource}) as initialized:
        assert read_ids(initialized.api.reader(ITEMS, OffsetPagination(limit=1))) == [0, 1]
    assert oauth.issued == ["access-1-9f2c"]


# ---- one session per run --------------------------------------------------------------------------


def test_the_streams_of_a_run_share_one_token_and_each_reports_only_its_own_requests(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_SECRET, CLIENT_SECRET)
    oauth = OAuthServer()
    httpserver.expect_request("/oauth/token", method="POST").respond_with_handler(oauth.token)
    served = {"orders": ORDER_IDS, "refunds": [7]}

    def stream_pages(request: Request) -> Response:
        if request.headers.get("Authorization", "").removeprefix("Bearer ") not in oauth.valid:
            return json_body({"error": "invalid_token"}, status=401)
        ids = served[request.path.strip("/")]
        offset = int(request.args["offset"])
        return json_body({"data": orders(DAY, ids[offset : offset + 1])})

    for name in served:
        httpserver.expect_request(f"/{name}").respond_with_handler(stream_pages)
    one_per_page = {"type": "offset", "limit": 1}
    project = rest_project(
        tmp_path / "lake",
        httpserver.url_for("/"),
        [
            orders_stream(pagination=one_per_page),
            orders_stream(name="refunds", path="/refunds", pagination=one_per_page),
        ],
        auth={
            "type": "oauth2_client_credentials",
            "token_url": httpserver.url_for("/oauth/token"),
            "client_id": CLIENT_ID,
            "client_secret": f"${{{ENV_SECRET}}}",
        },
    )

    result = project.materialize(["orders", "refunds"], instance, partition=DAY)

    assert oauth.issued == ["access-1-9f2c"]
    # a page per record, then the empty page that ends the stream
    assert run_metadata(result, "orders")["api_requests"] == len(ORDER_IDS) + 1
    assert run_metadata(result, "refunds")["api_requests"] == 2
    assert lake_rows(project, "refunds", ORDER_COLUMNS) == expected_orders(DAY, [7])


def test_close_ends_the_session_and_a_later_read_opens_a_new_one_with_a_new_token(
    httpserver: HTTPServer,
) -> None:
    oauth = OAuthServer()
    oauth.install(httpserver)
    auth = OAuth2ClientCredentialsConfig(
        token_url=httpserver.url_for("/oauth/token"),
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    source = RestSource(SOURCE, httpserver.url_for("/"), auth, parallel_requests=1)
    stream = ITEMS.model_copy(update={"pagination": OffsetPagination(limit=1)})

    assert read_ids(source.reader(stream)) == [0, 1]
    first = source.client()
    assert source.reader(stream).client is first
    connections = first.session.get_adapter(httpserver.url_for("/")).poolmanager.pools
    assert len(connections) == 1

    source.close()

    assert len(connections) == 0
    assert read_ids(source.reader(stream)) == [0, 1]
    assert source.client() is not first
    assert oauth.issued == ["access-1-9f2c", "access-2-9f2c"]
    source.close()


# ---- 3. faults, end to end -----------------------------------------------------------------------


def day_project(tmp_path: pathlib.Path, server: HTTPServer, **options: Any) -> IngestProject:
    """The `orders` stream of a REST source on the server."""
    return rest_project(tmp_path / "lake", server.url_for("/"), [orders_stream()], **options)


ORDER_IDS = [1, 2, 3]
ORDER_COLUMNS = ["id", "modified", "amount"]


def test_429_with_retry_after_zero_is_retried_and_writes_exactly_the_rows(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_ordered_request("/orders").respond_with_response(
        json_body({"error": "slow down"}, status=429, **{"Retry-After": "0"})
    )
    httpserver.expect_ordered_request("/orders").respond_with_json({"data": orders(DAY, ORDER_IDS)})
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY)

    assert lake_rows(project, "orders", ORDER_COLUMNS) == expected_orders(DAY, ORDER_IDS)
    assert run_metadata(result)["api_retries"] == 1
    assert len(httpserver.log) == 2
    httpserver.check_assertions()


def test_503_twice_then_200_writes_the_rows_and_reports_two_retries(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    for _ in range(2):
        httpserver.expect_ordered_request("/orders").respond_with_response(
            Response("upstream unavailable", status=503)
        )
    httpserver.expect_ordered_request("/orders").respond_with_json({"data": orders(DAY, ORDER_IDS)})
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY)

    assert lake_rows(project, "orders", ORDER_COLUMNS) == expected_orders(DAY, ORDER_IDS)
    metadata = run_metadata(result)
    assert metadata["api_retries"] == 2
    assert metadata["api_requests"] == 3
    assert metadata["dagster/row_count"] == len(ORDER_IDS)
    httpserver.check_assertions()
    # each retry is in the run's log as it happens: where, what and how long it waits
    retries = [
        str(entry.user_message)
        for entry in instance.all_logs(result.run_id)
        if "retrying in" in str(entry.user_message)
    ]
    assert len(retries) == 2, retries
    for number, line in enumerate(retries, start=2):
        assert f"source '{SOURCE}', table 'orders', partition {DAY}: GET " in line
        assert ": HTTP 503; retrying in " in line
        assert f"s (attempt {number} of " in line


def hang_up(request: Request) -> Response:
    """Close the connection without an answer (werkzeug treats ConnectionError as a drop)."""
    raise ConnectionResetError("the test server hangs up")


def test_a_dropped_connection_is_retried(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_ordered_request("/orders").respond_with_handler(hang_up)
    httpserver.expect_ordered_request("/orders").respond_with_json({"data": orders(DAY, ORDER_IDS)})
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY)

    assert lake_rows(project, "orders", ORDER_COLUMNS) == expected_orders(DAY, ORDER_IDS)
    assert run_metadata(result)["api_retries"] == 1
    assert len(httpserver.handler_errors) == 1
    httpserver.check_assertions()


def test_a_body_cut_off_mid_transfer_is_retried(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    body = json.dumps({"data": orders(DAY, ORDER_IDS)}).encode()
    # an iterable body keeps the promised Content-Length: the connection closes short of it
    httpserver.expect_ordered_request("/orders").respond_with_response(
        Response(
            iter([body[: len(body) // 2]]),
            headers={"Content-Length": str(len(body))},
            content_type="application/json",
        )
    )
    httpserver.expect_ordered_request("/orders").respond_with_json({"data": orders(DAY, ORDER_IDS)})
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY)

    assert lake_rows(project, "orders", ORDER_COLUMNS) == expected_orders(DAY, ORDER_IDS)
    assert run_metadata(result)["api_retries"] == 1
    httpserver.check_assertions()


def test_a_response_slower_than_the_read_timeout_fails_and_leaves_the_table_unchanged(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    project = day_project(tmp_path, httpserver, timeout={"connect": 5, "read": 0.2})
    httpserver.expect_request("/orders").respond_with_json({"data": orders(DAY, ORDER_IDS)})
    project.materialize(["orders"], instance, partition=DAY)
    version = project.delta("orders").version()
    before = project.delta("orders").to_pyarrow_table()

    release = threading.Event()

    def stall(request: Request) -> Response:
        release.wait(timeout=1.0)
        return json_body({"data": orders(DAY, [99])})

    httpserver.clear()
    httpserver.expect_request("/orders").respond_with_handler(stall)
    try:
        result = project.materialize(["orders"], instance, partition=DAY, raise_on_error=False)
    finally:
        release.set()
    # the stalled handlers finish before the next test's handlers are installed
    wait_for_requests(httpserver, MAX_ATTEMPTS)

    assert not result.success
    message = failure_message(result)
    assert "timed out" in message
    assert f"after {MAX_ATTEMPTS} attempt(s)" in message
    assert "partition 2024-01-03" in message
    assert project.delta("orders").version() == version
    assert project.delta("orders").to_pyarrow_table() == before
    assert len(httpserver.log) == MAX_ATTEMPTS


def test_truncated_json_is_retried_then_fails_clearly(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    truncated = json.dumps({"data": orders(DAY, ORDER_IDS)})[:40]
    httpserver.expect_request("/orders").respond_with_data(
        truncated, content_type="application/json"
    )
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert "not JSON (application/json)" in message
    assert f"after {MAX_ATTEMPTS} attempt(s)" in message
    assert "source 'src', table 'orders', partition 2024-01-03" in message
    assert len(httpserver.log) == MAX_ATTEMPTS
    with pytest.raises(TableNotFoundError):
        DeltaTable(project.table_uri("orders"))


HTML_ERROR_PAGE = "<html><body><h1>Service temporarily unavailable</h1></body></html>"


@pytest.mark.parametrize("recovers", [False, True])
def test_an_html_page_with_status_200_fails_as_not_json_unless_a_retry_is_good(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance, recovers: bool
) -> None:
    if recovers:
        httpserver.expect_ordered_request("/orders").respond_with_data(
            HTML_ERROR_PAGE, content_type="text/html"
        )
        httpserver.expect_ordered_request("/orders").respond_with_json(
            {"data": orders(DAY, ORDER_IDS)}
        )
    else:
        httpserver.expect_request("/orders").respond_with_data(
            HTML_ERROR_PAGE, content_type="text/html"
        )
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY, raise_on_error=recovers)

    if recovers:
        assert result.success
        assert lake_rows(project, "orders", ORDER_COLUMNS) == expected_orders(DAY, ORDER_IDS)
        httpserver.check_assertions()
    else:
        message = failure_message(result)
        assert "not JSON (text/html" in message
        assert "Service temporarily unavailable" in message
        assert len(httpserver.log) == MAX_ATTEMPTS


def test_retry_after_parses_seconds_and_http_dates() -> None:
    now = datetime.datetime(2024, 1, 3, 12, 0, tzinfo=datetime.UTC)

    assert retry_after_seconds("0") == 0.0
    assert retry_after_seconds(" 7 ") == 7.0
    assert retry_after_seconds("2.5") == 2.5
    assert retry_after_seconds("Wed, 03 Jan 2024 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 03 Jan 2024 11:00:00 GMT", now) == 0.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("") is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("-5") is None


def test_backoff_honours_retry_after_with_a_floor_and_jitters_without_it() -> None:
    policy = RetryPolicy(backoff_seconds=1.0, max_backoff_seconds=8.0)

    past = retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT")
    assert policy.backoff(1, past) == MIN_RETRY_AFTER_SECONDS
    assert policy.backoff(3, 0.0) == MIN_RETRY_AFTER_SECONDS
    assert policy.backoff(1, 12.0) == 12.0
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0)]:
        waits = [policy.backoff(attempt, None) for _ in range(50)]
        assert all(ceiling / 2 <= wait <= ceiling for wait in waits)


# ---- 4. window parameters ------------------------------------------------------------------------


@pytest.mark.parametrize(("timezone", "offset"), [("UTC", "+00:00"), ("Europe/Paris", "+01:00")])
def test_window_placeholders_are_sent_in_the_query_string(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    timezone: str,
    offset: str,
) -> None:
    httpserver.expect_request("/orders").respond_with_json({"data": []})
    params = {
        "from": "{start}",
        "to": "{end}",
        "to_inclusive": "{end_inclusive}",
        "day": "{start:%Y-%m-%d}",
        "compact": "{end:%Y%m%dT%H%M}",
        "kind": "full",
    }
    project = rest_project(
        tmp_path / "lake",
        httpserver.url_for("/"),
        [orders_stream(params=params)],
        timezone=timezone,
    )

    project.materialize(["orders"], instance, partition=DAY)

    assert len(httpserver.log) == 1
    sent = httpserver.log[0][0].args.to_dict()
    assert sent == {
        "from": f"2024-01-03T00:00:00{offset}",
        "to": f"2024-01-04T00:00:00{offset}",
        "to_inclusive": f"2024-01-03T23:59:59.999999{offset}",
        "day": "2024-01-03",
        "compact": "20240104T0000",
        "kind": "full",
        "offset": "0",
        "limit": "100",
    }


def test_records_outside_the_window_are_dropped_counted_and_never_written_to_other_days(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    # an API that ignores the window filter: every day's records, every time
    records = [
        {"id": 1, "modified": "2024-01-02T23:59:59.999999Z", "amount": "1"},
        {"id": 2, "modified": "2024-01-03T00:00:00Z", "amount": "2"},
        {"id": 3, "modified": "2024-01-03T23:59:59.999999+00:00", "amount": "3"},
        {"id": 4, "modified": "2024-01-04T00:00:00Z", "amount": "4"},
        # 23:00 UTC on the 3rd, whatever the date in its own offset says
        {"id": 5, "modified": "2024-01-04T01:00:00+02:00", "amount": "5"},
    ]
    httpserver.expect_request("/orders").respond_with_json({"data": records})
    project = rest_project(
        tmp_path / "lake", httpserver.url_for("/"), [orders_stream(outside_window="drop")]
    )

    first = project.materialize(["orders"], instance, partition=NEXT_DAY)
    second = project.materialize(["orders"], instance, partition=DAY)

    assert run_metadata(first)["records_outside_window"] == 4
    metadata = run_metadata(second)
    assert metadata["records_outside_window"] == 2
    assert metadata["records_received"] == 5
    assert metadata["dagster/partition_row_count"] == 3
    table = project.delta("orders").to_pyarrow_table()
    by_day: dict[datetime.date, list[int]] = {}
    for row in table.select(["id", PARTITION_DATE]).to_pylist():
        by_day.setdefault(row[PARTITION_DATE], []).append(row["id"])
    assert {day: sorted(ids) for day, ids in by_day.items()} == {
        datetime.date(2024, 1, 3): [2, 3, 5],
        datetime.date(2024, 1, 4): [4],
    }
    next_day_runs = {
        row[RUN_ID] for row in table.to_pylist() if row[PARTITION_DATE] == datetime.date(2024, 1, 4)
    }
    assert next_day_runs == {first.run_id}


# ---- 5. coercion -------------------------------------------------------------------------------------

TYPED_FIELDS = {
    "id": "int64",
    "modified": "timestamp_tz",
    "amount": "decimal(19,4)",
    "local_time": "timestamp",
    "instant": "timestamp_tz",
    "active": "bool",
    "note": "string",
    "details": "json",
    "quantity": "int32",
    "ratio": "float64",
    "due": "date",
}
TYPED_RECORDS = [
    {
        "id": 1,
        "modified": "2024-01-03T10:00:00Z",
        "amount": "123456789012345.6789",
        "local_time": "2024-01-03T10:00:00Z",
        "instant": "2024-01-03T10:00:00+02:00",
        "active": True,
        "note": "plain",
        "details": {"b": [1, 2], "a": None},
        "quantity": 5,
        "ratio": 0.5,
        "due": "2024-02-01",
    },
    {
        "id": 2,
        "modified": "2024-01-03T23:59:59.999999+00:00",
        "amount": "-0.0001",
        "local_time": "2024-01-03T12:30:00+05:30",
        "instant": "2024-01-03T06:00:00.250-03:00",
        "active": False,
        "note": None,
        "details": ["x", 1],
        "quantity": None,
        "ratio": None,
        "due": None,
    },
    {
        "id": 3,
        "modified": "2024-01-03T00:00:00Z",
        "amount": 7,
        "local_time": "2024-01-03T08:15:00",
        "instant": "2024-01-03T08:15:00Z",
        "active": "true",
        "note": 42,
        "details": "text",
    },
]
UTC = datetime.UTC
TYPED_ROWS = [
    {
        "id": 1,
        "modified": datetime.datetime(2024, 1, 3, 10, tzinfo=UTC),
        "amount": decimal.Decimal("123456789012345.6789"),
        "local_time": datetime.datetime(2024, 1, 3, 10),
        "instant": datetime.datetime(2024, 1, 3, 8, tzinfo=UTC),
        "active": True,
        "note": "plain",
        "details": '{"a": null, "b": [1, 2]}',
        "quantity": 5,
        "ratio": 0.5,
        "due": datetime.date(2024, 2, 1),
    },
    {
        "id": 2,
        "modified": datetime.datetime(2024, 1, 3, 23, 59, 59, 999999, tzinfo=UTC),
        "amount": decimal.Decimal("-0.0001"),
        "local_time": datetime.datetime(2024, 1, 3, 7),
        "instant": datetime.datetime(2024, 1, 3, 9, 0, 0, 250000, tzinfo=UTC),
        "active": False,
        "note": None,
        "details": '["x", 1]',
        "quantity": None,
        "ratio": None,
        "due": None,
    },
    {
        "id": 3,
        "modified": datetime.datetime(2024, 1, 3, tzinfo=UTC),
        "amount": decimal.Decimal("7.0000"),
        "local_time": datetime.datetime(2024, 1, 3, 8, 15),
        "instant": datetime.datetime(2024, 1, 3, 8, 15, tzinfo=UTC),
        "active": True,
        "note": "42",
        "details": '"text"',
        "quantity": None,
        "ratio": None,
        "due": None,
    },
]


def test_declared_types_are_coerced_and_read_back_from_delta_exactly(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_request("/orders").respond_with_json({"data": TYPED_RECORDS})
    project = rest_project(
        tmp_path / "lake", httpserver.url_for("/"), [orders_stream(fields=TYPED_FIELDS)]
    )

    project.materialize(["orders"], instance, partition=DAY)

    table = project.delta("orders").to_pyarrow_table()
    assert lake_rows(project, "orders", list(TYPED_FIELDS)) == TYPED_ROWS
    types = {name: table.schema.field(name).type for name in TYPED_FIELDS}
    assert types == {
        "id": pa.int64(),
        "modified": pa.timestamp("us", "UTC"),
        "amount": pa.decimal128(19, 4),
        "local_time": pa.timestamp("us"),
        "instant": pa.timestamp("us", "UTC"),
        "active": pa.bool_(),
        "note": pa.string(),
        "details": pa.string(),
        "quantity": pa.int32(),
        "ratio": pa.float64(),
        "due": pa.date32(),
    }


BAD_RECORD = {"id": 7, "modified": "2024-01-03T05:00:00Z", "amount": "twelve"}


def test_a_record_that_cannot_be_coerced_fails_naming_stream_partition_key_and_field(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_request("/orders").respond_with_json(
        {"data": [*orders(DAY, ORDER_IDS), BAD_RECORD]}
    )
    project = day_project(tmp_path, httpserver)

    result = project.materialize(["orders"], instance, partition=DAY, raise_on_error=False)

    assert not result.success
    message = failure_message(result)
    assert "table 'orders'" in message
    assert "partition 2024-01-03" in message
    assert "record id=7" in message
    assert "field amount" in message
    assert "value 'twelve' expected a decimal number" in message
    assert "on_invalid: quarantine" in message
    with pytest.raises(TableNotFoundError):
        DeltaTable(project.table_uri("orders"))


def test_quarantine_writes_good_records_and_keeps_the_bad_one_with_its_reason(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    httpserver.expect_request("/orders").respond_with_json(
        {"data": [*orders(DAY, ORDER_IDS), BAD_RECORD]}
    )
    project = rest_project(
        tmp_path / "lake", httpserver.url_for("/"), [orders_stream(on_invalid="quarantine")]
    )

    result = project.materialize(["orders"], instance, partition=DAY)

    assert lake_rows(project, "orders", ORDER_COLUMNS) == expected_orders(DAY, ORDER_IDS)
    metadata = run_metadata(result)
    assert metadata["records_rejected"] == 1
    assert metadata["dagster/row_count"] == len(ORDER_IDS)
    rejected = DeltaTable(project.table_uri("orders") + "_rejected").to_pyarrow_table()
    assert rejected.num_rows == 1
    row = rejected.to_pylist()[0]
    assert json.loads(row["record"]) == BAD_RECORD
    assert row["field"] == "amount"
    assert row["reason"] == "value 'twelve' expected a decimal number"
    assert row[PARTITION_DATE] == datetime.date(2024, 1, 3)
    assert row[RUN_ID] == result.run_id


def test_an_inferred_schema_widens_across_pages(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    pages = [
        [
            {"id": 1, "score": 1, "modified": "2024-01-03T01:00:00Z"},
            {"id": 2, "score": 2, "modified": "2024-01-03T02:00:00Z"},
        ],
        [{"id": 3, "score": 2.5, "label": "late", "modified": "2024-01-03T03:00:00Z"}],
    ]

    def handle(request: Request) -> Response:
        return json_body({"data": pages[int(request.args["offset"]) // 2]})

    httpserver.expect_request("/orders").respond_with_handler(handle)
    stream = orders_stream(fields=None, pagination={"type": "offset", "limit": 2})
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [stream])

    project.materialize(["orders"], instance, partition=DAY)

    table = project.delta("orders").to_pyarrow_table()
    assert table.schema.field("score").type == pa.float64()
    assert table.schema.field("label").type == pa.string()
    assert lake_rows(project, "orders", ["id", "score", "label", "modified"]) == [
        {"id": 1, "score": 1.0, "label": None, "modified": datetime.datetime(2024, 1, 3, 1)},
        {"id": 2, "score": 2.0, "label": None, "modified": datetime.datetime(2024, 1, 3, 2)},
        {"id": 3, "score": 2.5, "label": "late", "modified": datetime.datetime(2024, 1, 3, 3)},
    ]
    assert len(httpserver.log) == 2


# ---- 6. secrets never reach the event log --------------------------------------------------------

SECRET_PASSWORD = "pw-Event-Secret-61d3f0"
SECRET_API_KEY = "key-Event-Secret-a94c7e"


def event_log_texts(instance: DagsterInstance, run_id: str) -> list[str]:
    """Every text of a run's event log: messages, metadata values, errors, whole entries."""
    texts: list[str] = []
    for entry in instance.all_logs(run_id):
        texts += [entry.message or "", entry.user_message or "", serialize_value(entry)]
        event = entry.dagster_event
        if event is None:
            continue
        texts.append(event.message or "")
        failure = event.step_failure_data if event.is_step_failure else None
        if failure is not None and failure.error is not None:
            texts.append(failure.error.to_string())
        if entry.asset_materialization is not None:
            texts += [str(value) for value in entry.asset_materialization.metadata.values()]
    return texts


@pytest.mark.parametrize("kind", ["basic", "api_key_query"])
def test_no_secret_reaches_the_event_log_of_a_failing_or_a_succeeding_run(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    monkeypatch.setenv("REST_TEST_PASSWORD", SECRET_PASSWORD)
    monkeypatch.setenv("REST_TEST_API_KEY", SECRET_API_KEY)
    if kind == "basic":
        auth = {"type": "basic", "username": USERNAME, "password": "${REST_TEST_PASSWORD}"}
        secrets = [SECRET_PASSWORD, basic_header(USERNAME, SECRET_PASSWORD).split()[1]]
    else:
        auth = {
            "type": "api_key",
            "name": "api_key",
            "value": "${REST_TEST_API_KEY}",
            "location": "query",
        }
        secrets = [SECRET_API_KEY]

    def echo_credentials(request: Request) -> Response:
        # a careless API that echoes what it received, the first secret across the excerpt's end
        received = [
            request.authorization.password if request.authorization else None,
            request.args.get("api_key"),
            request.headers.get("Authorization"),
            request.query_string.decode(),
        ]
        lead = "bad request, received: ".ljust(BODY_EXCERPT_CHARACTERS - 8, ".")
        echoed = lead + " ".join(item for item in received if item)
        return Response(echoed, status=400, content_type="text/plain")

    httpserver.expect_ordered_request("/orders").respond_with_handler(echo_credentials)
    httpserver.expect_ordered_request("/orders").respond_with_json({"data": orders(DAY, ORDER_IDS)})
    project = day_project(tmp_path, httpserver, auth=auth)

    failed = project.materialize(["orders"], instance, partition=DAY, raise_on_error=False)
    succeeded = project.materialize(["orders"], instance, partition=DAY)

    assert not failed.success
    message = failure_message(failed)
    assert "HTTP 400" in message
    assert "***" in message
    assert succeeded.success
    received = httpserver.log[0][0]
    assert secrets[0] in (
        received.headers.get("Authorization", "")
        + str(received.authorization.password if received.authorization else "")
        + received.query_string.decode()
    )
    runs = instance.get_runs()
    assert {run.run_id for run in runs} == {failed.run_id, succeeded.run_id}
    for run in runs:
        texts = event_log_texts(instance, run.run_id)
        assert texts
        for secret in secrets:
            # a secret cut short is a leak too: look for every 8-character piece of it
            pieces = {secret[index : index + 8] for index in range(len(secret) - 7)}
            leaks = [(piece, text) for text in texts for piece in pieces if piece in text]
            assert not leaks, f"run {run.run_id} logged part of a secret: {leaks[0]}"


# ---- fixes found while reviewing: capped pages, inferred windows, counts, token expiry ----------


@dataclass
class CappingApi:
    """An offset API that serves at most `cap` records a page, whatever limit is asked for."""

    total: int
    cap: int
    tells: str  # "total", "flag" (has_more) or "nothing"
    requests: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, request: Request) -> Response:
        args = dict(request.args)
        self.requests.append(args)
        start, asked = int(args["offset"]), int(args["limit"])
        served = list(range(start, min(start + min(asked, self.cap), self.total)))
        meta: dict[str, Any] = {}
        if self.tells == "total":
            meta["total"] = self.total
        elif self.tells == "flag":
            meta["more"] = start + len(served) < self.total
        return json_body({"data": [{"id": i} for i in served], "meta": meta})


@pytest.mark.parametrize("tells", ["total", "flag", "nothing"])
@pytest.mark.parametrize("parallel_requests", [1, 4])
def test_an_api_that_caps_the_page_size_loses_and_repeats_nothing(
    httpserver: HTTPServer, tells: str, parallel_requests: int
) -> None:
    api = CappingApi(total=95, cap=20, tells=tells)
    httpserver.expect_request("/items").respond_with_handler(api)
    pagination: dict[str, Any] = {"type": "offset", "limit": 50}
    if tells == "total":
        pagination["total_path"] = "meta.total"
    elif tells == "flag":
        pagination["has_more_path"] = "meta.more"
    ids = read_ids(stream_reader(httpserver, pagination, parallel_requests))
    if tells == "nothing":
        # no total and no flag: a short page is the last page, as documented
        assert ids == list(range(20))
    else:
        assert ids == list(range(95))
        assert [int(args["offset"]) for args in api.requests] == [0, 20, 40, 60, 80]


def test_an_inferred_stream_drops_and_counts_records_outside_the_window(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    records = [
        {"id": 1, "modified": "2024-01-02T23:00:00", "amount": 1},
        {"id": 2, "modified": "2024-01-03T08:00:00", "amount": 2.5},
        {"id": 3, "modified": "2024-01-04T00:00:00", "amount": 3},
    ]
    httpserver.expect_request("/orders").respond_with_json({"data": records})
    stream = orders_stream(outside_window="drop")
    stream.pop("fields")
    project = rest_project(tmp_path / "lake", httpserver.url_for("/"), [stream])
    result = project.materialize(["orders"], instance, partition=DAY)
    metadata = run_metadata(result)
    assert metadata["records_received"] == 3
    assert metadata["records_outside_window"] == 2
    assert project.delta("orders").to_pyarrow_table().column("id").to_pylist() == [2]


def test_the_api_total_is_the_source_count_for_reconciliation(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/items").respond_with_handler(FakeApi("offset_total_header", 37))
    assert stream_reader(httpserver, pagination_spec("offset_total_header"), 1).count(None) == 37
    httpserver.clear()
    httpserver.expect_request("/items").respond_with_handler(FakeApi("cursor", 37))
    assert stream_reader(httpserver, pagination_spec("cursor"), 1).count(None) is None


CONVERTED = StreamSpec(
    name="lines",
    path="/lines",
    partition_field="day",
    fields={
        "id": "int16",
        "name": "string",
        "price": "decimal(9,2)",
        "day": "timestamp",
        "flag": "bool",
    },
)
# plain values and values only the record-by-record path accepts or rejects
JSON_VALUES = {
    "id": st.one_of(st.integers(-40_000, 40_000), st.just("12"), st.just(True), st.just(3.0)),
    "name": st.one_of(st.text(max_size=5), st.just(7), st.just({"a": 1})),
    "price": st.one_of(
        st.decimals(min_value=-(10**7), max_value=10**7, places=3).map(str),
        st.sampled_from(["1e3", " 2.50", "NaN", "0.005", "1_000", "x", "12345678.9"]),
        st.just(3),
    ),
    "day": st.one_of(
        st.sampled_from(["2024-01-03T10:00:00", "2024-01-02T23:59:59", "2024-01-04T00:00:00"]),
        st.just("not a date"),
    ),
    "flag": st.one_of(st.booleans(), st.just("true"), st.just(2)),
}
pages = st.lists(
    st.fixed_dictionaries(
        {},
        optional={name: st.one_of(st.none(), values) for name, values in JSON_VALUES.items()},
    ),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(records=pages)
def test_column_conversion_equals_record_conversion_whenever_it_applies(
    records: list[dict[str, Any]],
) -> None:
    from zoneinfo import ZoneInfo

    from ingestion_assets.sources.rest.records import RecordConverter
    from ingestion_assets.sources.window import PartitionWindow

    window = PartitionWindow(
        datetime.datetime(2024, 1, 3, tzinfo=datetime.UTC),
        datetime.datetime(2024, 1, 4, tzinfo=datetime.UTC),
        "partition 2024-01-03",
    )
    stream = CONVERTED.model_copy(update={"on_invalid": "quarantine", "outside_window": "drop"})
    by_columns = RecordConverter(stream, ZoneInfo("UTC"), window, "lines")
    by_records = RecordConverter(stream, ZoneInfo("UTC"), window, "lines")
    fast = by_columns._convert_columns(records)
    slow = by_records._convert_records(records)
    if fast is None:
        # the page goes the record-by-record way: only then can a record be rejected
        return
    assert not by_records.statistics.rejected
    assert fast.to_pylist() == slow.to_pylist()
    assert fast.schema == slow.schema
    assert by_columns.statistics.records == by_records.statistics.records
    assert by_columns.statistics.outside_window == by_records.statistics.outside_window


# ---- what each module pulls in ----------------------------------------------------------------


def modules_loaded_by(statement: str) -> set[str]:
    """The top-level modules a fresh interpreter has loaded after `statement`."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return {name.split(".")[0] for name in done.stdout.split()}


@pytest.mark.parametrize("module", ["records", "paginators", "templates", "redaction"])
def test_the_pure_rest_modules_load_no_http_client(module: str) -> None:
    loaded = modules_loaded_by(f"import ingestion_assets.sources.rest.{module}")

    assert "ingestion_assets" in loaded
    assert not loaded & {"requests", "urllib3"}


def test_nothing_under_sources_loads_dagster() -> None:
    loaded = modules_loaded_by(
        "import importlib, pkgutil, ingestion_assets.sources as sources\n"
        "for found in pkgutil.walk_packages(sources.__path__, 'ingestion_assets.sources.'):\n"
        "    importlib.import_module(found.name)"
    )

    assert {"requests", "sqlalchemy", "pyarrow"} <= loaded
    assert "dagster" not in loaded


# ---- merge streams -------------------------------------------------------------------------------


@dataclass
class CustomersApi:
    """Customers kept by id, each with the moment it last changed; `modified_since` filters
    (at or after), offset/limit pages; a deleted customer is gone from every answer."""

    rows: dict[int, dict[str, Any]] = field(default_factory=dict)
    asked: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, request: Request) -> Response:
        args = dict(request.args)
        self.asked.append(args)
        since = args.get("modified_since")
        records = sorted(
            (r for r in self.rows.values() if since is None or r["modified"] >= since),
            key=lambda r: r["id"],
        )
        offset, limit = int(args["offset"]), int(args["limit"])
        return json_body({"data": records[offset : offset + limit]})


def test_a_rest_stream_kept_by_key_reads_only_the_records_changed_since_its_cursor(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    """`mode: merge` on a stream: the first run reads every record, later runs ask the API
    for those changed since the cursor (`changes_params`), upserted by id; the new-data sensor
    asks the same; a full refresh reads everything and removes the records gone."""
    api = CustomersApi()
    for key in range(1, 6):
        api.rows[key] = {"id": key, "name": f"c{key}", "modified": f"2024-03-01T08:0{key}:00Z"}
    httpserver.expect_request("/customers").respond_with_handler(api)
    project = rest_project(
        tmp_path / "lake",
        httpserver.url_for("/"),
        [
            {
                "name": "customers",
                "path": "/customers",
                "records_path": "data",
                "mode": "merge",
                "primary_key": ["id"],
                "cursor_column": "modified",
                "deletes": "hard",
                "changes_params": {"modified_since": "{since:%Y-%m-%dT%H:%M:%SZ}"},
                "fields": {"id": "int64", "name": "string", "modified": "timestamp_tz"},
            }
        ],
    )

    def run(tags: dict[str, str] | None = None) -> dict[str, Any]:
        result = materialize(
            [project.asset("customers")],
            instance=instance,
            resources=project.defs.resources,
            tags=tags,
        )
        return run_metadata(result, "customers")

    def lake() -> dict[int, str]:
        return {r["id"]: r["name"] for r in lake_rows(project, "customers", ["id", "name"])}

    first = run()
    assert (first["rows_read"], first["rows_inserted"]) == (5, 5)
    assert "modified_since" not in api.asked[0]
    assert first["ingest/cursor"] == "2024-03-01T08:05:00+00:00"

    api.rows[2] = {"id": 2, "name": "renamed", "modified": "2024-03-01T09:00:00Z"}
    api.rows[6] = {"id": 6, "name": "new", "modified": "2024-03-01T09:00:00Z"}
    del api.rows[4]
    sensor = project.defs.get_sensor_def("src_new_data")

    def tick() -> list[Any]:
        with build_sensor_context(
            instance=instance, resources=project.defs.resources, definitions=project.defs
        ) as context:
            return list(sensor.evaluate_tick(context).run_requests)

    assert [r.asset_selection for r in tick()] == [[AssetKey(["src", "customers"])]]
    asked = len(api.asked)
    second = run()
    assert all(a["modified_since"] == "2024-03-01T08:05:00Z" for a in api.asked[asked:])
    # customer 5 (at the cursor) read again, changing nothing; 2 updated, 6 inserted
    assert (second["rows_read"], second["rows_inserted"], second["rows_updated"]) == (3, 1, 1)
    assert lake() == {1: "c1", 2: "renamed", 3: "c3", 4: "c4", 5: "c5", 6: "new"}
    assert tick() == []

    refreshed = run({FULL_REFRESH_TAG: "true"})
    assert refreshed["rows_deleted"] == 1
    assert lake() == {key: row["name"] for key, row in api.rows.items()}


def test_a_merge_stream_with_a_cursor_must_say_how_to_ask_for_the_changes(
    tmp_path: pathlib.Path,
) -> None:
    stream = {
        "name": "customers",
        "path": "/customers",
        "mode": "merge",
        "primary_key": ["id"],
        "cursor_column": "modified",
    }
    with pytest.raises(ConfigError, match="needs `changes_params`"):
        rest_project(tmp_path, "http://127.0.0.1:9", [stream])
    with pytest.raises(ConfigError, match="a REST API cannot"):
        rest_project(
            tmp_path,
            "http://127.0.0.1:9",
            [
                {
                    **stream,
                    "changes_params": {"s": "{since}"},
                    "deletes": "soft",
                    "key_scan_cron": "0 3 * * 0",
                }
            ],
        )


def test_a_rest_stream_of_change_events_is_applied_in_sequence_order(
    httpserver: HTTPServer, tmp_path: pathlib.Path, instance: DagsterInstance
) -> None:
    """`mode: cdc` on a stream: the stream's records are the events (an operation and a
    sequence), applied by key in sequence order; later runs ask for the events past the last
    sequence applied."""
    events: list[dict[str, Any]] = []
    asked: list[dict[str, str]] = []

    def api(request: Request) -> Response:
        args = dict(request.args)
        asked.append(args)
        after = int(args.get("after", "0"))
        records = [e for e in events if e["seq"] > after]
        offset, limit = int(args["offset"]), int(args["limit"])
        return json_body({"data": records[offset : offset + limit]})

    httpserver.expect_request("/customer_events").respond_with_handler(api)
    project = rest_project(
        tmp_path / "lake",
        httpserver.url_for("/"),
        [
            {
                "name": "customers",
                "path": "/customer_events",
                "records_path": "data",
                "mode": "cdc",
                "primary_key": ["id"],
                "cdc": {"feed": "change_table", "operation_column": "op", "sequence_by": ["seq"]},
                "changes_params": {"after": "{since}"},
                "fields": {"id": "int64", "name": "string", "op": "string", "seq": "int64"},
            }
        ],
    )

    def run() -> dict[str, Any]:
        result = materialize(
            [project.asset("customers")], instance=instance, resources=project.defs.resources
        )
        assert all(e.passed for e in result.get_asset_check_evaluations())
        return run_metadata(result, "customers")

    def lake() -> dict[int, str]:
        table = project.delta("customers").to_pyarrow_table()
        assert "op" not in table.schema.names
        return {r["id"]: r["name"] for r in table.to_pylist()}

    # out of order within the page: the sequence decides
    events += [
        {"id": 1, "name": "one, renamed", "op": "U", "seq": 3},
        {"id": 1, "name": "one", "op": "I", "seq": 1},
        {"id": 2, "name": "two", "op": "I", "seq": 2},
    ]
    first = run()
    assert lake() == {1: "one, renamed", 2: "two"}
    assert first["ingest/cursor"] == "3"
    events += [
        {"id": 2, "name": None, "op": "D", "seq": 4},
        {"id": 3, "name": "three", "op": "I", "seq": 5},
    ]
    asked.clear()
    second = run()
    assert {a.get("after") for a in asked} == {"3"}
    assert (second["rows_read"], second["rows_deleted"], second["rows_inserted"]) == (2, 1, 1)
    assert lake() == {1: "one, renamed", 3: "three"}
