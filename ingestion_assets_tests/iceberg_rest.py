"""An Iceberg REST catalog on 127.0.0.1 for the tests: the REST protocol's endpoints the writer
uses (config, namespaces, tables: load, staged create, commit), served over HTTP by a SQL catalog
on SQLite, with a bearer token. Requirements are checked by the SQL catalog's commit, so a commit
planned on an old snapshot gets the protocol's 409 as from any REST catalog."""

from __future__ import annotations

import json
import pathlib
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from pyiceberg.catalog.rest import CreateTableRequest
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchNamespaceError,
    NoSuchTableError,
    TableAlreadyExistsError,
)
from pyiceberg.table import CommitTableRequest
from pyiceberg.typedef import Identifier

# the REST protocol's error types, by the catalog's exception
ERRORS: dict[type[Exception], tuple[int, str]] = {
    NoSuchNamespaceError: (404, "NoSuchNamespaceException"),
    NoSuchTableError: (404, "NoSuchTableException"),
    NamespaceAlreadyExistsError: (409, "AlreadyExistsException"),
    TableAlreadyExistsError: (409, "AlreadyExistsException"),
    CommitFailedException: (409, "CommitFailedException"),
}


@dataclass(frozen=True)
class _Named:
    """What the SQL catalog's commit needs of a table: its name."""

    identifier: Identifier

    def name(self) -> Identifier:
        return self.identifier


@dataclass
class RestCatalogServer:
    """The server's address, its token and what it was asked (method and path, in order)."""

    uri: str
    token: str
    requests: list[tuple[str, str]] = field(default_factory=list)
    authorizations: list[str | None] = field(default_factory=list)


def _handler(catalog: SqlCatalog, server: RestCatalogServer) -> type[BaseHTTPRequestHandler]:
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: Any = None) -> None:
            data = b"" if body is None else body.encode() if isinstance(body, str) else body
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, error: Exception) -> None:
            status, kind = next(
                (value for cls, value in ERRORS.items() if isinstance(error, cls)),
                (500, "ServerError"),
            )
            message = {"error": {"message": str(error), "type": kind, "code": status}}
            self._send(status, json.dumps(message))

        def _route(self) -> None:
            path = urllib.parse.urlparse(self.path).path
            server.requests.append((self.command, path))
            server.authorizations.append(self.headers.get("Authorization"))
            if self.headers.get("Authorization") != f"Bearer {server.token}":
                self._send(
                    401,
                    json.dumps({"error": {"message": "no", "type": "NotAuthorized", "code": 401}}),
                )
                return
            parts = [urllib.parse.unquote(part) for part in path.strip("/").split("/")]
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                try:
                    self._answer(parts, body)
                except Exception as error:  # the protocol's error answer
                    self._error(error)

        def _answer(self, parts: list[str], body: bytes) -> None:
            method = self.command
            if parts == ["v1", "config"]:
                self._send(200, json.dumps({"defaults": {}, "overrides": {}}))
            elif parts == ["v1", "namespaces"] and method == "POST":
                request = json.loads(body)
                catalog.create_namespace(
                    tuple(request["namespace"]), request.get("properties") or {}
                )
                self._send(200, json.dumps(request))
            elif len(parts) == 3 and parts[1] == "namespaces":
                namespace = tuple(parts[2].split("\x1f"))
                properties = catalog.load_namespace_properties(namespace)
                self._send(
                    200, json.dumps({"namespace": list(namespace), "properties": properties})
                )
            elif len(parts) == 4 and parts[3] == "tables" and method == "POST":
                namespace = tuple(parts[2].split("\x1f"))
                # the client leaves out what it does not set (the protocol's optional fields)
                fields = {"location": None, "partition-spec": None, "write-order": None}
                request = CreateTableRequest.model_validate({**fields, **json.loads(body)})
                identifier = (*namespace, request.name)
                arguments: dict[str, Any] = {
                    "location": request.location,
                    "properties": request.properties,
                }
                if request.partition_spec is not None:
                    arguments["partition_spec"] = request.partition_spec
                if request.write_order is not None:
                    arguments["sort_order"] = request.write_order
                if request.stage_create:
                    if catalog.table_exists(identifier):
                        raise TableAlreadyExistsError(f"table {identifier} exists")
                    table: Any = catalog._create_staged_table(
                        identifier, request.table_schema, **arguments
                    )
                else:
                    table = catalog.create_table(identifier, request.table_schema, **arguments)
                self._table(table)
            elif len(parts) == 5 and parts[3] == "tables":
                identifier = (*parts[2].split("\x1f"), parts[4])
                if method == "POST":
                    commit = CommitTableRequest.model_validate_json(body)
                    response = catalog.commit_table(
                        _Named(identifier),  # type: ignore[arg-type]
                        commit.requirements,
                        commit.updates,
                    )
                    self._send(200, response.model_dump_json(by_alias=True))
                else:
                    self._table(catalog.load_table(identifier))
            else:
                self._send(
                    404,
                    json.dumps({"error": {"message": "no route", "type": "NotFound", "code": 404}}),
                )

        def _table(self, table: Any) -> None:
            answer = {
                "metadata-location": table.metadata_location,
                "metadata": json.loads(table.metadata.model_dump_json(by_alias=True)),
                "config": {},
            }
            self._send(200, json.dumps(answer))

        do_GET = do_POST = do_HEAD = do_DELETE = _route

    return Handler


def serve_rest_catalog(catalog: SqlCatalog, token: str) -> Iterator[RestCatalogServer]:
    """Serve `catalog` over the REST protocol on a free port of 127.0.0.1 until the generator is
    closed."""
    server = RestCatalogServer(uri="", token=token)
    http = ThreadingHTTPServer(("127.0.0.1", 0), _handler(catalog, server))
    server.uri = f"http://127.0.0.1:{http.server_address[1]}"
    thread = threading.Thread(target=http.serve_forever, name="iceberg-rest", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        http.shutdown()
        http.server_close()
        thread.join(timeout=5)


# the token the tests' REST catalog asks for
REST_TOKEN = "rest-catalog-token-3f9a"


@pytest.fixture
def rest_server(tmp_path: pathlib.Path) -> Iterator[RestCatalogServer]:
    """A REST catalog on 127.0.0.1 serving a SQL catalog of its own (its tables' files under
    tmp_path/warehouse, which the writer reaches directly, as with a shared object store)."""
    served = SqlCatalog(
        "served", uri=f"sqlite:///{tmp_path}/served.db", warehouse=f"file://{tmp_path}/warehouse"
    )
    yield from serve_rest_catalog(served, REST_TOKEN)
