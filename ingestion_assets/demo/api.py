"""A demo REST API serving the demo database's order tables as paginated, filterable streams.

Run ``python -m ingestion_assets.demo.api --dir .data/demo --port 8765 --username demo
--password-env DEMO_API_PASSWORD`` to serve it until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import decimal
import functools
import hmac
import json
import os
import pathlib
import signal
import socketserver
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from ingestion_assets.demo.generate import sqlite_attachments

if TYPE_CHECKING:
    import socket
    import sqlite3
    from collections.abc import Mapping
    from types import FrameType, TracebackType

STREAMS: dict[str, str] = {
    "SalesOrderHeader": "Sales.SalesOrderHeader",
    "SalesOrderDetail": "Sales.SalesOrderDetail",
    "PurchaseOrderHeader": "Purchasing.PurchaseOrderHeader",
    "PurchaseOrderDetail": "Purchasing.PurchaseOrderDetail",
}

HOST = "127.0.0.1"
REALM = "demo"
DEFAULT_LIMIT = 100
MODIFIED_GTE = "ModifiedDate_gte"
MODIFIED_LT = "ModifiedDate_lt"
QUERY_PARAMETERS: tuple[str, ...] = ("offset", "limit", MODIFIED_GTE, MODIFIED_LT)
WINDOW_COLUMN = "ModifiedDate"
# A handler thread blocked on a silent client must not outlive the demo forever.
CLIENT_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 10.0
# How often the serving loop checks for stop(); the default half second slows every stop.
SHUTDOWN_POLL_SECONDS = 0.05

Record = dict[str, object]


class BadRequestError(ValueError):
    """A query parameter is malformed or not allowed; the message names it and the valid form."""


@dataclass(frozen=True)
class PageRequest:
    """One page of a stream: its position and the optional half-open ModifiedDate window."""

    offset: int = 0
    limit: int = DEFAULT_LIMIT
    modified_gte: datetime.datetime | None = None
    modified_lt: datetime.datetime | None = None


def _parse_count(name: str, value: str, minimum: int, maximum: int | None) -> int:
    # int() would also take " 7", "+7", "1_0" and non-ASCII digits.
    number = int(value) if value.isascii() and value.isdigit() else None
    if number is None or number < minimum or (maximum is not None and number > maximum):
        allowed = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        msg = f"{name} must be an integer {allowed}, got {value!r}"
        raise BadRequestError(msg)
    return number


def parse_modified_date(name: str, value: str) -> datetime.datetime:
    """Parse an ISO 8601 bound as the naive UTC datetime the demo data is stored in."""
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        msg = (
            f"{name} must be an ISO 8601 datetime such as 2024-01-31T00:00:00 or "
            f"2024-01-31T00:00:00Z, got {value!r}"
        )
        raise BadRequestError(msg) from None
    if parsed.tzinfo is None:
        return parsed
    return parsed.astimezone(datetime.UTC).replace(tzinfo=None)


def parse_page_request(query: str, max_limit: int) -> PageRequest:
    """Validate a request's query string into a page; unknown or repeated parameters are errors."""
    values: dict[str, str] = {}
    for name, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        if name not in QUERY_PARAMETERS:
            # A misspelt filter silently ignored would serve every row as if it were the window.
            msg = f"unknown query parameter {name!r}; allowed: {', '.join(QUERY_PARAMETERS)}"
            raise BadRequestError(msg)
        if name in values:
            msg = f"query parameter {name!r} given more than once"
            raise BadRequestError(msg)
        values[name] = value
    offset = values.get("offset")
    limit = values.get("limit")
    modified_gte = values.get(MODIFIED_GTE)
    modified_lt = values.get(MODIFIED_LT)
    return PageRequest(
        offset=0 if offset is None else _parse_count("offset", offset, 0, None),
        limit=(
            min(DEFAULT_LIMIT, max_limit)
            if limit is None
            else _parse_count("limit", limit, 1, max_limit)
        ),
        modified_gte=(
            None if modified_gte is None else parse_modified_date(MODIFIED_GTE, modified_gte)
        ),
        modified_lt=None if modified_lt is None else parse_modified_date(MODIFIED_LT, modified_lt),
    )


def json_value(value: object) -> object:
    """Turn one database value into its JSON form; decimals keep their scale as strings."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, decimal.Decimal):
        # "f" never switches to exponent notation (str gives "1E-7") and keeps trailing zeros.
        return format(value, "f")
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    msg = f"the demo API cannot serialize a {type(value).__name__} value"
    raise TypeError(msg)


def credentials_match(authorization: str | None, username: str, password: str) -> bool:
    """Check an ``Authorization: Basic ...`` header against the expected credentials."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except binascii.Error:
        return False
    given_username, separator, given_password = decoded.partition(b":")
    # Both comparisons always run so the timing does not reveal which part was wrong.
    username_matches = hmac.compare_digest(given_username, username.encode())
    password_matches = hmac.compare_digest(given_password, password.encode())
    return bool(separator) and username_matches and password_matches


def demo_engine(database_dir: pathlib.Path) -> sa.Engine:
    """An engine on ``main.db`` in ``database_dir`` with each schema's file attached on connect."""
    attachments = sqlite_attachments(database_dir)
    engine = sa.create_engine(
        sa.URL.create("sqlite", database=str(database_dir / "main.db")),
        # Every concurrent request holds a connection; requests wait on none.
        pool_size=8,
        max_overflow=-1,
    )

    @sa.event.listens_for(engine, "connect")
    def _attach(dbapi_connection: sqlite3.Connection, _record: object) -> None:
        for schema, path in attachments.items():
            dbapi_connection.execute(f'ATTACH DATABASE ? AS "{schema}"', (path,))

    return engine


class StreamReader:
    """Reads pages of the streams through tables reflected once, shared by all request threads."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._tables: dict[str, sa.Table] = {}
        self._tables_lock = threading.Lock()

    def _table(self, stream: str, connection: sa.Connection) -> sa.Table:
        with self._tables_lock:
            table = self._tables.get(stream)
            if table is None:
                schema, _, name = STREAMS[stream].partition(".")
                table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=connection)
                if not table.primary_key.columns:
                    msg = f"table {STREAMS[stream]} has no primary key to page stream {stream} by"
                    raise LookupError(msg)
                self._tables[stream] = table
            return table

    def read_page(self, stream: str, page: PageRequest) -> tuple[list[Record], int]:
        """Return the page's records, ordered by primary key, and the count of rows in the window."""
        with self._engine.connect() as connection:
            table = self._table(stream, connection)
            window_column = table.c[WINDOW_COLUMN]
            window: list[sa.ColumnElement[bool]] = []
            if page.modified_gte is not None:
                window.append(window_column >= page.modified_gte)
            if page.modified_lt is not None:
                window.append(window_column < page.modified_lt)
            total = connection.execute(
                sa.select(sa.func.count()).select_from(table).where(*window)
            ).scalar_one()
            query = (
                sa.select(table)
                .where(*window)
                .order_by(*table.primary_key.columns)
                .limit(page.limit)
                .offset(page.offset)
            )
            records = [
                {column: json_value(value) for column, value in row.items()}
                for row in connection.execute(query).mappings()
            ]
        return records, int(total)


@dataclass(frozen=True)
class _ServerSettings:
    reader: StreamReader
    username: str
    password: str = field(repr=False)
    latency_seconds: float
    max_limit: int


class _DemoHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(
        self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any
    ) -> None:
        # A client that hung up (a timed-out benchmark request) is not a server fault.
        if isinstance(sys.exception(), ConnectionError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    timeout = CLIENT_TIMEOUT_SECONDS

    def __init__(
        self,
        settings: _ServerSettings,
        request: socket.socket | tuple[bytes, socket.socket],
        client_address: tuple[str, int],
        server: socketserver.BaseServer,
    ) -> None:
        self.settings = settings
        super().__init__(request, client_address, server)

    def log_message(self, format: str, *args: object) -> None:
        """Stay silent per request so the demo's own output stays readable."""

    def do_GET(self) -> None:
        """Serve ``/health`` openly and ``/api/{stream}`` pages behind basic auth."""
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/health":
            self._send_json(HTTPStatus.OK, {"status": "ok"})
            return
        is_api = url.path.startswith("/api/")
        settings = self.settings
        if not credentials_match(
            self.headers.get("Authorization"), settings.username, settings.password
        ):
            self._send_json(
                HTTPStatus.UNAUTHORIZED,
                {"error": "basic auth with the demo API's username and password required"},
                delay=is_api,
                headers={"WWW-Authenticate": f'Basic realm="{REALM}"'},
            )
            return
        if not is_api:
            self._send_json(
                HTTPStatus.NOT_FOUND,
                {"error": f"no resource at {url.path}; streams are served at /api/{{stream}}"},
            )
            return
        stream = urllib.parse.unquote(url.path.removeprefix("/api/"))
        if stream not in STREAMS:
            self._send_json(
                HTTPStatus.NOT_FOUND,
                {"error": f"unknown stream {stream}; streams: {', '.join(STREAMS)}"},
                delay=True,
            )
            return
        try:
            page = parse_page_request(url.query, settings.max_limit)
        except BadRequestError as error:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": str(error)}, delay=True)
            return
        try:
            records, total = settings.reader.read_page(stream, page)
        except sa.exc.SQLAlchemyError as error:
            self._send_json(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                {
                    "error": f"reading stream {stream} failed ({type(error).__name__}); "
                    "the traceback is on the demo API's stderr"
                },
                delay=True,
            )
            raise
        self._send_json(
            HTTPStatus.OK,
            {"data": records, "total": total, "offset": page.offset, "limit": page.limit},
            delay=True,
            headers={"X-Total-Count": str(total)},
        )

    def _send_json(
        self,
        status: HTTPStatus,
        body: Mapping[str, object],
        *,
        delay: bool = False,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        payload = json.dumps(body, ensure_ascii=False).encode()
        if delay and self.settings.latency_seconds > 0:
            # The simulated slowness of a remote API, per response.
            time.sleep(self.settings.latency_seconds)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class DemoApi:
    """The demo API over a demo SQLite database directory, served on 127.0.0.1 in a background thread."""

    def __init__(
        self,
        database_dir: pathlib.Path,
        username: str,
        password: str,
        *,
        port: int = 0,
        latency_seconds: float = 0.0,
        max_limit: int = 1000,
    ) -> None:
        if not username or ":" in username:
            msg = "the demo API username must be non-empty and contain no ':' (basic auth)"
            raise ValueError(msg)
        if not password:
            msg = "the demo API password must be non-empty"
            raise ValueError(msg)
        if not 0 <= port <= 65535:
            msg = f"port must be 0 (any free port) to 65535, got {port}"
            raise ValueError(msg)
        if latency_seconds < 0:
            msg = f"latency_seconds must be >= 0, got {latency_seconds}"
            raise ValueError(msg)
        if max_limit < 1:
            msg = f"max_limit must be >= 1, got {max_limit}"
            raise ValueError(msg)
        self._database_dir = database_dir
        self._username = username
        self._password = password
        self._port = port
        self._latency_seconds = latency_seconds
        self._max_limit = max_limit
        self._server: _DemoHttpServer | None = None
        self._thread: threading.Thread | None = None
        self._engine: sa.Engine | None = None

    def start(self) -> None:
        """Bind 127.0.0.1 (port 0 picks a free port) and serve in a daemon thread."""
        if self._server is not None:
            msg = f"the demo API is already serving at {self.url}"
            raise RuntimeError(msg)
        # SQLite would quietly create empty files for a missing database.
        attached = sqlite_attachments(self._database_dir).values()
        needed = [self._database_dir / "main.db", *map(pathlib.Path, attached)]
        missing = [str(path) for path in needed if not path.is_file()]
        if missing:
            msg = (
                f"demo database files missing: {', '.join(missing)}; create them with "
                f"`python -m ingestion_assets.demo.generate --dir {self._database_dir}`"
            )
            raise FileNotFoundError(msg)
        engine = demo_engine(self._database_dir)
        settings = _ServerSettings(
            reader=StreamReader(engine),
            username=self._username,
            password=self._password,
            latency_seconds=self._latency_seconds,
            max_limit=self._max_limit,
        )
        try:
            server = _DemoHttpServer((HOST, self._port), functools.partial(_Handler, settings))
        except OSError:
            engine.dispose()
            raise
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name=f"demo-api-{server.server_port}",
            daemon=True,
        )
        thread.start()
        self._engine, self._server, self._thread = engine, server, thread

    def stop(self) -> None:
        """Stop serving, free the port and wait (bounded) for the serving thread to end."""
        server, thread, engine = self._server, self._thread, self._engine
        if server is None or thread is None or engine is None:
            return
        self._server = self._thread = self._engine = None
        server.shutdown()
        server.server_close()
        thread.join(STOP_TIMEOUT_SECONDS)
        engine.dispose()

    @property
    def url(self) -> str:
        """The base URL, ``http://127.0.0.1:<port>``, of the running API."""
        if self._server is None:
            msg = "the demo API is not running; call start() first"
            raise RuntimeError(msg)
        return f"http://{HOST}:{self._server.server_port}"

    def __enter__(self) -> DemoApi:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def main() -> None:
    """Serve the demo API from the command line until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="Serve the demo database's orders as a REST API.")
    parser.add_argument("--dir", type=pathlib.Path, default=pathlib.Path(".data/demo"))
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--username", default="demo")
    parser.add_argument(
        "--password-env",
        default="DEMO_API_PASSWORD",
        help="name of the environment variable holding the password",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay added per response")
    parser.add_argument("--max-limit", type=int, default=1000, help="largest page size allowed")
    args = parser.parse_args()
    password = os.environ.get(args.password_env)
    if not password:
        parser.error(f"set the environment variable {args.password_env} to the API password")

    stop_requested = threading.Event()

    def request_stop(_signal_number: int, _frame: FrameType | None) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    api = DemoApi(
        args.dir,
        args.username,
        password,
        port=args.port,
        latency_seconds=args.latency_ms / 1000,
        max_limit=args.max_limit,
    )
    with api:
        sys.stdout.write(f"demo API serving {', '.join(STREAMS)} at {api.url}/api/{{stream}}\n")
        sys.stdout.flush()
        stop_requested.wait()


if __name__ == "__main__":
    main()
