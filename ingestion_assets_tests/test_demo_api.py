"""The demo REST API over real HTTP on 127.0.0.1: paging, window filters, auth, errors, threads."""

from __future__ import annotations

import concurrent.futures
import datetime
import decimal
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping

import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from ingestion_assets.demo.api import (
    STREAMS,
    BadRequestError,
    DemoApi,
    PageRequest,
    credentials_match,
    json_value,
    parse_modified_date,
    parse_page_request,
)
from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite, demo_rows

SCALE = DemoScale(days=10, orders_per_day=12)
USERNAME = "demo"
PASSWORD = "correct-Horse-battery-5taple"
AUTH = (USERNAME, PASSWORD)
REQUEST_TIMEOUT = 10.0
MAX_LIMIT = 50
PAGE_SIZE = 7
# Both bounds fall on midnights, where the demo data pins rows, so an off-by-one bound shows.
WINDOW_START = datetime.datetime(2024, 1, 3)
WINDOW_END = datetime.datetime(2024, 1, 6)
WINDOW = {"ModifiedDate_gte": WINDOW_START.isoformat(), "ModifiedDate_lt": WINDOW_END.isoformat()}
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "SalesOrderHeader": ("SalesOrderID",),
    "SalesOrderDetail": ("SalesOrderID", "SalesOrderDetailID"),
    "PurchaseOrderHeader": ("PurchaseOrderID",),
    "PurchaseOrderDetail": ("PurchaseOrderID", "PurchaseOrderDetailID"),
}

Record = dict[str, object]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    directory = tmp_path_factory.mktemp("demo")
    create_demo_sqlite(directory, SCALE)
    return directory


@pytest.fixture
def api(demo_dir: pathlib.Path) -> Iterator[DemoApi]:
    with DemoApi(demo_dir, USERNAME, PASSWORD, max_limit=MAX_LIMIT) as running:
        yield running


def _get(
    api: DemoApi,
    path: str,
    params: Mapping[str, str | int] | None = None,
    auth: tuple[str, str] | None = AUTH,
) -> requests.Response:
    return requests.get(f"{api.url}{path}", params=params, auth=auth, timeout=REQUEST_TIMEOUT)


def _page(api: DemoApi, stream: str, params: Mapping[str, str | int]) -> list[Record]:
    response = _get(api, f"/api/{stream}", params)
    assert response.status_code == 200, response.text
    data: list[Record] = response.json()["data"]
    return data


def _read_stream(
    api: DemoApi, stream: str, window: Mapping[str, str]
) -> tuple[list[Record], set[int]]:
    """Every record of the window, page by page, and every total the pages reported."""
    records: list[Record] = []
    totals: set[int] = set()
    for offset in range(0, 100_000, PAGE_SIZE):
        response = _get(api, f"/api/{stream}", {**window, "offset": offset, "limit": PAGE_SIZE})
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"] == "application/json"
        body = response.json()
        assert (body["offset"], body["limit"]) == (offset, PAGE_SIZE)
        totals.update((body["total"], int(response.headers["X-Total-Count"])))
        records.extend(body["data"])
        if len(body["data"]) < PAGE_SIZE:
            return records, totals
    pytest.fail(f"stream {stream} never returned a short page")


def _window_rows(stream: str) -> list[Record]:
    rows = demo_rows(SCALE)[STREAMS[stream]]
    return [row for row in rows if WINDOW_START <= row["ModifiedDate"] < WINDOW_END]  # type: ignore[operator]


def _database_form(value: object) -> object:
    """A generated value as the SQLite demo database holds and the API serves it."""
    if isinstance(value, uuid.UUID):
        # SQLite keeps a Uuid column as 32 hex digits, and reflection reads it back as text.
        return value.hex
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return value


@pytest.mark.parametrize("stream", list(STREAMS))
def test_paging_serves_exactly_the_rows_of_the_window(api: DemoApi, stream: str) -> None:
    expected = _window_rows(stream)
    assert len(expected) > PAGE_SIZE
    assert any(row["ModifiedDate"] == WINDOW_START for row in expected)

    records, totals = _read_stream(api, stream, WINDOW)

    assert totals == {len(expected)}
    keys = PRIMARY_KEYS[stream]
    served_keys = [tuple(record[key] for key in keys) for record in records]
    expected_by_key = {tuple(row[key] for key in keys): row for row in expected}
    assert served_keys == sorted(expected_by_key)
    for record, key in zip(records, served_keys, strict=True):
        row = expected_by_key[key]
        assert record.keys() == row.keys()
        for column, value in row.items():
            if isinstance(value, decimal.Decimal):
                # a string keeps every digit and the scale: "1234.5000", never 1234.5
                assert isinstance(record[column], str), (column, record[column])
                assert record[column] == str(value), (key, column)
                assert decimal.Decimal(str(record[column])) == value
            else:
                assert record[column] == _database_form(value), (key, column)


def test_sales_order_ids_match_the_database(api: DemoApi) -> None:
    records, totals = _read_stream(api, "SalesOrderHeader", WINDOW)
    expected_ids = sorted(int(str(row["SalesOrderID"])) for row in _window_rows("SalesOrderHeader"))
    assert [record["SalesOrderID"] for record in records] == expected_ids
    assert totals == {len(expected_ids)}


def test_without_a_window_every_row_is_served(api: DemoApi) -> None:
    records, totals = _read_stream(api, "PurchaseOrderHeader", {})
    assert totals == {len(records)} == {len(demo_rows(SCALE)["Purchasing.PurchaseOrderHeader"])}


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-01-03T00:00:00Z", "2024-01-06T00:00:00Z"),
        ("2024-01-03T02:00:00+02:00", "2024-01-05T19:00:00-05:00"),
        ("2024-01-03T00:00:00.000000+00:00", "2024-01-06"),
    ],
)
def test_aware_bounds_are_read_as_utc(api: DemoApi, start: str, end: str) -> None:
    window = {"ModifiedDate_gte": start, "ModifiedDate_lt": end}
    aware, aware_totals = _read_stream(api, "SalesOrderHeader", window)
    naive, naive_totals = _read_stream(api, "SalesOrderHeader", WINDOW)
    assert aware == naive
    assert aware_totals == naive_totals


def test_parallel_pages_match_sequential_pages(api: DemoApi, demo_dir: pathlib.Path) -> None:
    latency_seconds = 0.5
    offsets = [index * PAGE_SIZE for index in range(8)]
    sequential = [
        _page(api, "SalesOrderDetail", {"offset": offset, "limit": PAGE_SIZE}) for offset in offsets
    ]
    with (
        DemoApi(demo_dir, USERNAME, PASSWORD, latency_seconds=latency_seconds) as slow_api,
        concurrent.futures.ThreadPoolExecutor(max_workers=len(offsets)) as pool,
    ):
        parallel = list(
            pool.map(
                lambda offset: _page(
                    slow_api, "SalesOrderDetail", {"offset": offset, "limit": PAGE_SIZE}
                ),
                offsets,
            )
        )

    assert parallel == sequential
    union = {
        (record["SalesOrderID"], record["SalesOrderDetailID"])
        for page in parallel
        for record in page
    }
    assert len(union) == len(offsets) * PAGE_SIZE


@pytest.mark.parametrize("auth", [(USERNAME, "wrong-password"), ("other", PASSWORD), None])
def test_wrong_or_missing_credentials_are_refused(
    api: DemoApi, auth: tuple[str, str] | None
) -> None:
    response = _get(api, "/api/SalesOrderHeader", auth=auth)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Basic realm="demo"'
    assert "error" in response.json()
    assert PASSWORD not in response.text
    assert "wrong-password" not in response.text


def test_unknown_stream_is_404_listing_the_streams(api: DemoApi) -> None:
    response = _get(api, "/api/Nope")
    assert response.status_code == 404
    assert response.json() == {"error": f"unknown stream Nope; streams: {', '.join(STREAMS)}"}


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": str(MAX_LIMIT + 1)}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "1.5"}, "offset"),
        ({"ModifiedDate_gte": "yesterday"}, "ModifiedDate_gte"),
        ({"ModifiedDate_lt": ""}, "ModifiedDate_lt"),
        ({"modifieddate_gte": "2024-01-01"}, "modifieddate_gte"),
    ],
)
def test_bad_parameters_are_400_naming_the_parameter(
    api: DemoApi, params: dict[str, str], named: str
) -> None:
    response = _get(api, "/api/SalesOrderHeader", params)
    assert response.status_code == 400
    assert named in response.json()["error"]


def test_health_needs_no_credentials(api: DemoApi) -> None:
    response = _get(api, "/health", auth=None)
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_stop_frees_the_port(demo_dir: pathlib.Path) -> None:
    first = DemoApi(demo_dir, USERNAME, PASSWORD)
    first.start()
    url = first.url
    port = int(url.rsplit(":", 1)[1])
    first.stop()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{url}/health", timeout=REQUEST_TIMEOUT)

    with DemoApi(demo_dir, USERNAME, PASSWORD, port=port) as second:
        assert second.url == url
        assert _get(second, "/health").status_code == 200


def test_a_missing_database_is_refused_without_creating_files(tmp_path: pathlib.Path) -> None:
    api = DemoApi(tmp_path, USERNAME, PASSWORD)
    with pytest.raises(FileNotFoundError, match=r"demo\.generate"):
        api.start()
    assert list(tmp_path.iterdir()) == []


def test_main_serves_until_sigterm_and_stays_quiet(demo_dir: pathlib.Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = {**os.environ, "DEMO_API_TEST_PASSWORD": PASSWORD}
    command = [sys.executable, "-m", "ingestion_assets.demo.api", "--dir", str(demo_dir)]
    command += ["--port", str(port), "--username", USERNAME]
    command += ["--password-env", "DEMO_API_TEST_PASSWORD", "--latency-ms", "1"]
    process = subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{url}/health", timeout=REQUEST_TIMEOUT)
                break
            except requests.ConnectionError:
                assert process.poll() is None, process.communicate(timeout=REQUEST_TIMEOUT)
                assert time.monotonic() < deadline, "the demo API did not start within 60 s"
                time.sleep(0.05)
        response = requests.get(
            f"{url}/api/SalesOrderDetail", auth=AUTH, params=WINDOW, timeout=REQUEST_TIMEOUT
        )
        assert response.status_code == 200
        assert requests.get(f"{url}/api/Nope", timeout=REQUEST_TIMEOUT).status_code == 401
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)
    assert process.returncode == 0
    assert url in stdout
    assert stderr == ""
    assert PASSWORD not in stdout


def test_an_unset_password_variable_is_an_error_naming_it(demo_dir: pathlib.Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "DEMO_API_UNSET"}
    command = [sys.executable, "-m", "ingestion_assets.demo.api", "--dir", str(demo_dir)]
    command += ["--port", "0", "--password-env", "DEMO_API_UNSET"]
    completed = subprocess.run(
        command,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2
    assert "DEMO_API_UNSET" in completed.stderr


minute_offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: datetime.timezone(datetime.timedelta(minutes=minutes))
)


@given(
    moment=st.datetimes(
        min_value=datetime.datetime(1900, 1, 1), max_value=datetime.datetime(2200, 1, 1)
    ),
    zone=minute_offsets,
)
def test_any_aware_bound_becomes_the_same_instant_in_naive_utc(
    moment: datetime.datetime, zone: datetime.timezone
) -> None:
    aware = moment.replace(tzinfo=zone)
    parsed = parse_modified_date("ModifiedDate_gte", aware.isoformat())
    assert parsed.tzinfo is None
    assert parsed.replace(tzinfo=datetime.UTC) == aware


@given(moment=st.datetimes())
def test_a_naive_bound_is_taken_as_is(moment: datetime.datetime) -> None:
    assert parse_modified_date("ModifiedDate_lt", moment.isoformat()) == moment


def test_page_request_defaults_and_parsing() -> None:
    assert parse_page_request("", 1000) == PageRequest(offset=0, limit=100)
    assert parse_page_request("", 20).limit == 20
    assert parse_page_request(
        "offset=14&limit=7&ModifiedDate_gte=2024-01-03T00%3A00%3A00Z", 1000
    ) == PageRequest(offset=14, limit=7, modified_gte=datetime.datetime(2024, 1, 3))
    with pytest.raises(BadRequestError, match="more than once"):
        parse_page_request("limit=5&limit=6", 1000)


@pytest.mark.parametrize(
    ("value", "served"),
    [
        (decimal.Decimal("1234.5000"), "1234.5000"),
        (decimal.Decimal("1E-7"), "0.0000001"),
        (datetime.datetime(2024, 1, 3, 23, 59, 59, 997000), "2024-01-03T23:59:59.997000"),
        (datetime.datetime(2024, 1, 3), "2024-01-03T00:00:00"),
        (datetime.date(2024, 1, 3), "2024-01-03"),
        (True, True),
        (None, None),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001"),
        (b"\x00\xff", "00ff"),
        ("Łódź 配送", "Łódź 配送"),
    ],
)
def test_json_value(value: object, served: object) -> None:
    assert json_value(value) == served


def test_json_value_refuses_unknown_types() -> None:
    with pytest.raises(TypeError, match="complex"):
        json_value(1j)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer abc", "Basic !!!", "Basic ZGVtbw==", "Basic ZGVtbzp4"],
)
def test_malformed_or_wrong_authorization_headers_do_not_match(authorization: str | None) -> None:
    assert not credentials_match(authorization, USERNAME, PASSWORD)


def test_a_correct_authorization_header_matches() -> None:
    request = requests.Request("GET", "http://127.0.0.1/", auth=AUTH).prepare()
    assert credentials_match(request.headers["Authorization"], USERNAME, PASSWORD)
