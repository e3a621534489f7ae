"""Secrets never leave the process: not in run logs, events, errors, run config, the UI or a repr.

Each test runs real sources with known random secrets through Dagster (one success, failures of
every kind it can cheaply provoke), then searches everything the instance holds (events, run
records, the files under its root), every resource's repr (as configured and as initialized in a
run), the repository snapshot the UI reads, and the Python log output.
"""

from __future__ import annotations

import base64
import datetime
import json
import logging
import pathlib
import re
import secrets
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
import yaml
from dagster import (
    AssetKey,
    Config,
    ConfigurableResource,
    DagsterInstance,
    ExecuteInProcessResult,
    build_resources,
    materialize,
    serialize_value,
)
from dagster._core.remote_representation.external_data import RepositorySnap
from hypothesis import given
from hypothesis import strategies as st
from pytest_httpserver import HTTPServer
from werkzeug import Request, Response

from ingestion_assets.definitions import build_definitions
from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.generate import create_demo_sqlite
from ingestion_assets.errors import SourceError
from ingestion_assets.project import DEMO_PROJECT_FILE, parse_project
from ingestion_assets.resources import (
    ApiKeyAuthConfig,
    BasicAuthConfig,
    BearerAuthConfig,
    OAuth2ClientCredentialsConfig,
    RestSourceResource,
    SqlSourceResource,
)
from ingestion_assets.sources.rest.redaction import redact, redact_exception
from ingestion_assets_tests.conftest import (
    MARIADB_URL,
    SOURCE,
    TEST_SCALE,
    IngestProject,
    SourceDatabase,
    build_project,
    failure_message,
    require_service,
    table_entry,
)

DAY = (TEST_SCALE.start_date + datetime.timedelta(days=3)).isoformat()
TABLE = "Sales.SalesOrderHeader"
ASSET = "sales_order_header"
MARIADB_ODBC_DRIVER = "MariaDB Unicode"
API_USERNAME = "demo"
# a secret cut short is a leak too: every piece of this many characters is searched for
PIECE = 8
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def new_secret(kind: str) -> str:
    """A random secret that no fixed text can contain by chance."""
    return f"{kind}-{secrets.token_hex(12)}"


def basic_token(username: str, password: str) -> str:
    """What HTTP basic auth sends for these credentials (a secret too)."""
    return base64.b64encode(f"{username}:{password}".encode()).decode()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port bound but never listening: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


# ---- running assets -----------------------------------------------------------------------------


def run_asset(
    project: IngestProject, name: str, instance: DagsterInstance
) -> ExecuteInProcessResult:
    """Materialize one asset for DAY with its checks (the checks ask the source for a count)."""
    key = AssetKey([SOURCE, name])
    checks = [
        definition
        for definition in project.defs.asset_checks or []
        if any(check_key.asset_key == key for check_key in definition.check_keys)
    ]
    return materialize(
        [project.asset(name), *checks],
        instance=instance,
        resources=project.defs.resources,
        partition_key=DAY,
        raise_on_error=False,
    )


def assert_wrote_rows(project: IngestProject, name: str, result: ExecuteInProcessResult) -> None:
    """The run succeeded and its partition landed with rows."""
    assert result.success, failure_message(result)
    landed = project.delta(name).to_pyarrow_table()
    assert landed.num_rows > 0
    materialization = result.asset_materializations_for_node(project.asset(name).node_def.name)[0]
    assert materialization.metadata["dagster/row_count"].value == landed.num_rows


def assert_failed(result: ExecuteInProcessResult, *fragments: str) -> str:
    """The run failed, with an error that says why; returns the error text."""
    assert not result.success
    message = failure_message(result)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- where a secret could end up ----------------------------------------------------------------


def instance_texts(instance: DagsterInstance) -> Iterator[tuple[str, str]]:
    """Everything the instance holds, as (where, text)."""
    runs = instance.get_runs()
    assert runs
    for run in runs:
        yield f"run {run.run_id}", serialize_value(run)
        yield f"run config of {run.run_id}", repr(run.run_config)
        yield f"tags of {run.run_id}", repr(run.tags)
        entries = instance.all_logs(run.run_id)
        assert entries
        for entry in entries:
            where = f"{entry.dagster_event_type or 'log'} of run {run.run_id}"
            yield where, serialize_value(entry)
            yield where, entry.message
            yield where, entry.user_message
            event = entry.dagster_event
            if event is not None and event.is_step_failure and event.step_failure_data:
                error = event.step_failure_data.error
                if error is not None:
                    yield where, error.to_string()
    # the stores themselves: run and event databases, compute logs, anything else on disk
    files = [path for path in pathlib.Path(instance.root_directory).rglob("*") if path.is_file()]
    assert files
    for path in files:
        yield str(path), path.read_bytes().decode("latin-1")


def resource_texts(projects: Sequence[IngestProject]) -> Iterator[tuple[str, str]]:
    """Each resource's repr and str, as configured and as a run initializes it (EnvVars read),
    and the repository snapshot the UI shows."""
    for project in projects:
        resources = project.defs.resources or {}
        for key, resource in resources.items():
            yield f"resource {key}", repr(resource)
            yield f"resource {key}", str(resource)
        with build_resources(resources) as initialized:
            for key in resources:
                resource = getattr(initialized, key)
                yield f"initialized resource {key}", repr(resource)
                yield f"initialized resource {key}", str(resource)
        snapshot = RepositorySnap.from_def(project.defs.get_repository_def())
        yield "repository snapshot", serialize_value(snapshot)


def assert_nowhere(
    secret_values: Sequence[str],
    instance: DagsterInstance,
    projects: Sequence[IngestProject],
    logged: str,
) -> None:
    """No secret, nor any piece of one, in the instance, the resources or the logged text."""
    places = [
        *instance_texts(instance),
        *resource_texts(projects),
        ("python log output", logged),
    ]
    for secret in secret_values:
        assert len(secret) >= PIECE
        pieces = {secret[index : index + PIECE] for index in range(len(secret) - PIECE + 1)}
        leaks = sorted({where for where, text in places if any(piece in text for piece in pieces)})
        assert not leaks, f"part of secret {secret[:4]}... is in: {leaks}"


@pytest.fixture
def logged(
    caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> Callable[[], str]:
    """A function returning every Python log record and everything written to stdout/stderr."""
    caplog.set_level(logging.DEBUG)

    def text() -> str:
        captured = capfd.readouterr()
        return "\n".join([caplog.text, captured.out, captured.err])

    return text


# ---- SQL sources --------------------------------------------------------------------------------


def test_postgres_password_reaches_no_log_event_error_or_repr(
    postgres_database: SourceDatabase,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    closed_port: int,
    logged: Callable[[], str],
) -> None:
    # trust auth accepts any password: it is still sent, held and must never be shown
    password = new_secret("pg")
    target = sa.make_url(postgres_database.url)
    monkeypatch.setenv("INGEST_TEST_PG_PASSWORD", password)
    monkeypatch.setenv(
        "INGEST_TEST_PG_URL",
        target.set(password=password, port=closed_port).render_as_string(hide_password=False),
    )
    postgres_database.load_demo()
    parts = {
        "drivername": target.drivername,
        "host": target.host,
        "port": target.port or 5432,
        "username": target.username,
        "password": "${INGEST_TEST_PG_PASSWORD}",
        "database": target.database,
    }
    table = table_entry(postgres_database, TABLE)
    working = build_project(postgres_database, tmp_path / "ok", [table], connection=parts)
    missing_table = build_project(
        postgres_database,
        tmp_path / "missing",
        [{**table, "name": "SalesOrderHeaderGone", "asset_name": ASSET}],
        connection=parts,
    )
    unreachable = build_project(
        postgres_database,
        tmp_path / "down",
        [table],
        connection={"url": "${INGEST_TEST_PG_URL}"},
    )

    assert_wrote_rows(working, ASSET, run_asset(working, ASSET, instance))
    assert_failed(run_asset(missing_table, ASSET, instance), "does not exist at the source")
    refused = assert_failed(run_asset(unreachable, ASSET, instance), "cannot connect to")
    assert f":***@127.0.0.1:{closed_port}/" in refused

    assert_nowhere([password], instance, [working, missing_table, unreachable], logged())


@pytest.fixture
def mariadb_user(mariadb_database: SourceDatabase) -> Iterator[tuple[str, str]]:
    """A MariaDB user with a random password, allowed to read the test databases; dropped after."""
    name, password = f"ia_{uuid.uuid4().hex[:10]}", new_secret("maria")
    admin = require_service(MARIADB_URL, "MariaDB")
    try:
        with admin.connect() as connection:
            connection.execute(
                sa.text(f"CREATE USER '{name}'@'%' IDENTIFIED BY :password"), {"password": password}
            )
            for schema in mariadb_database.schemas.values():
                connection.execute(sa.text(f"GRANT SELECT ON `{schema}`.* TO '{name}'@'%'"))
        yield name, password
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP USER IF EXISTS '{name}'@'%'"))
        admin.dispose()


def test_mariadb_password_reaches_no_log_event_error_or_repr(
    mariadb_database: SourceDatabase,
    mariadb_user: tuple[str, str],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    logged: Callable[[], str],
) -> None:
    username, password = mariadb_user
    wrong_password = new_secret("wrong")
    monkeypatch.setenv("INGEST_TEST_MARIADB_PASSWORD", password)
    monkeypatch.setenv("INGEST_TEST_MARIADB_WRONG_PASSWORD", wrong_password)
    mariadb_database.load_demo()
    server = sa.make_url(MARIADB_URL)
    table = table_entry(mariadb_database, TABLE)
    native = {
        "drivername": "mysql+pymysql",
        "host": server.host,
        "port": server.port or 3306,
        "username": username,
        "query": {"charset": "utf8mb4"},
    }
    # through ODBC the password is in the connection string arrow-odbc and pyodbc are given
    odbc = {
        "drivername": "mysql+pyodbc",
        "host": server.host,
        "username": username,
        # a database keeps SQLAlchemy from taking the host for a DSN name
        "database": mariadb_database.schema("Sales"),
        "query": {
            "driver": MARIADB_ODBC_DRIVER,
            "port": str(server.port or 3306),
            "charset": "utf8mb4",
        },
    }
    projects = {
        (driver, secret_variable): build_project(
            mariadb_database,
            tmp_path / f"{driver}-{secret_variable.lower()}",
            [table],
            connection={**connection, "password": "${" + secret_variable + "}"},
        )
        for driver, connection in (("pymysql", native), ("pyodbc", odbc))
        for secret_variable in (
            "INGEST_TEST_MARIADB_PASSWORD",
            "INGEST_TEST_MARIADB_WRONG_PASSWORD",
        )
    }

    for (driver, secret_variable), project in projects.items():
        result = run_asset(project, ASSET, instance)
        if secret_variable == "INGEST_TEST_MARIADB_PASSWORD":
            assert_wrote_rows(project, ASSET, result)
            path = "odbc bulk fetch" if driver == "pyodbc" else "connectorx"
            qualified = f"{mariadb_database.schema('Sales')}.SalesOrderHeader"
            assert f"fetching {qualified} through {path}" in [
                entry.user_message for entry in instance.all_logs(result.run_id)
            ]
        else:
            assert_failed(result, "Access denied", username)

    assert_nowhere([password, wrong_password], instance, list(projects.values()), logged())


# ---- REST sources -------------------------------------------------------------------------------


@pytest.fixture
def demo_api(tmp_path: pathlib.Path) -> Iterator[tuple[DemoApi, str]]:
    """The bundled demo API on 127.0.0.1 with a random basic-auth password."""
    directory = tmp_path / "demo"
    directory.mkdir()
    create_demo_sqlite(directory, TEST_SCALE)
    password = new_secret("api")
    with DemoApi(directory, API_USERNAME, password) as api:
        yield api, password


def rest_project(
    lake: pathlib.Path, base_url: str, auth: Mapping[str, Any] | None
) -> IngestProject:
    """The demo project's SalesOrderHeader stream as source `src`, with this URL and auth."""
    demo = yaml.safe_load(DEMO_PROJECT_FILE.read_text(encoding="utf-8"))
    source = demo["sources"]["adventureworks_api"]
    source.update(
        base_url=base_url,
        auth=auth,
        start_date=TEST_SCALE.start_date.isoformat(),
        streams=[source["streams"][0]],
        # an unreachable API fails after one quick retry instead of minutes of backoff
        retries={"max_attempts": 2, "backoff_seconds": 0.01},
        timeout={"connect": 5, "read": 30},
    )
    if auth is None:
        del source["auth"]
    text = yaml.safe_dump({"lake": {"root": str(lake)}, "sources": {SOURCE: source}})
    spec = parse_project(text, "test-project.yaml")
    return IngestProject(spec, build_definitions(spec), lake)


def test_rest_password_token_and_client_secret_reach_no_log_event_error_or_repr(
    demo_api: tuple[DemoApi, str],
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    closed_port: int,
    logged: Callable[[], str],
) -> None:
    api, password = demo_api
    wrong_password, token, client_secret = (new_secret(kind) for kind in ("wrong", "tok", "cs"))
    credentials_url = f"http://{API_USERNAME}:{password}@{api.url.removeprefix('http://')}"
    environment = {
        "INGEST_TEST_API_URL": api.url,
        # a URL with the credentials in it: requests sends them as basic auth
        "INGEST_TEST_API_URL_WITH_CREDENTIALS": credentials_url,
        "INGEST_TEST_API_DOWN_URL": f"http://{API_USERNAME}:{password}@127.0.0.1:{closed_port}",
        "INGEST_TEST_API_PASSWORD": password,
        "INGEST_TEST_API_WRONG_PASSWORD": wrong_password,
        "INGEST_TEST_API_TOKEN": token,
        "INGEST_TEST_API_CLIENT_SECRET": client_secret,
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    url = "${INGEST_TEST_API_URL}"

    def basic(variable: str) -> dict[str, str]:
        return {"type": "basic", "username": API_USERNAME, "password": "${" + variable + "}"}

    working = rest_project(tmp_path / "ok", url, basic("INGEST_TEST_API_PASSWORD"))
    url_credentials = rest_project(
        tmp_path / "url", "${INGEST_TEST_API_URL_WITH_CREDENTIALS}", None
    )
    wrong = rest_project(tmp_path / "wrong", url, basic("INGEST_TEST_API_WRONG_PASSWORD"))
    bearer = rest_project(
        tmp_path / "bearer", url, {"type": "bearer", "token": "${INGEST_TEST_API_TOKEN}"}
    )
    oauth2 = rest_project(
        tmp_path / "oauth2",
        url,
        {
            "type": "oauth2_client_credentials",
            # the demo API has no token endpoint: the token request is refused
            "token_url": api.url + "/oauth/token",
            "client_id": "ingestion",
            "client_secret": "${INGEST_TEST_API_CLIENT_SECRET}",
        },
    )
    down = rest_project(tmp_path / "down", "${INGEST_TEST_API_DOWN_URL}", None)

    assert_wrote_rows(working, ASSET, run_asset(working, ASSET, instance))
    assert_wrote_rows(url_credentials, ASSET, run_asset(url_credentials, ASSET, instance))
    assert_failed(run_asset(wrong, ASSET, instance), "HTTP 401", "check credentials")
    assert_failed(run_asset(bearer, ASSET, instance), "HTTP 401", "check credentials")
    assert_failed(run_asset(oauth2, ASSET, instance), "token endpoint")
    refused = assert_failed(run_asset(down, ASSET, instance), "connection failed")
    assert f"http://127.0.0.1:{closed_port}/api/SalesOrderHeader" in refused

    assert_nowhere(
        [
            password,
            basic_token(API_USERNAME, password),
            wrong_password,
            basic_token(API_USERNAME, wrong_password),
            token,
            client_secret,
        ],
        instance,
        [working, url_credentials, wrong, bearer, oauth2, down],
        logged(),
    )


# ---- the resources themselves, and .env --------------------------------------------------------

SECRET_FIELDS: dict[type[ConfigurableResource], tuple[str, ...]] = {  # type: ignore[type-arg]
    SqlSourceResource: ("url", "password", "query"),
    RestSourceResource: ("base_url",),
}
# the REST resource's auth is one nested config per kind, each with its own secret fields
AUTH_SECRET_FIELDS: dict[type[Config], tuple[str, ...]] = {
    BasicAuthConfig: ("password",),
    BearerAuthConfig: ("token",),
    ApiKeyAuthConfig: ("value",),
    OAuth2ClientCredentialsConfig: ("token_url", "client_secret"),
}
AUTH_OTHER_FIELDS: dict[type[Config], dict[str, str]] = {
    BasicAuthConfig: {"username": "reader"},
    OAuth2ClientCredentialsConfig: {"client_id": "ingest"},
}


@pytest.mark.parametrize("resource_class", list(SECRET_FIELDS), ids=lambda kind: kind.__name__)
def test_no_repr_or_str_of_a_resource_shows_a_secret_field(
    resource_class: type[ConfigurableResource],  # type: ignore[type-arg]
) -> None:
    secret = new_secret("field")
    values: dict[str, Any] = {name: secret for name in SECRET_FIELDS[resource_class]}
    if "query" in values:
        values["query"] = {"odbc_connect": f"PWD={secret}"}
    if "url" in values:
        values["url"] = f"postgresql://reader:{secret}@db.internal/erp"
    if "base_url" in values:
        values["base_url"] = f"https://reader:{secret}@api.internal"
    resource = resource_class(source_name="erp", **values)

    assert secret not in repr(resource)
    assert secret not in str(resource)
    assert "source_name='erp'" in repr(resource)
    for name in SECRET_FIELDS[resource_class]:
        # still described for the UI and `dagster dev`
        assert resource_class.model_fields[name].description


@pytest.mark.parametrize("config_class", list(AUTH_SECRET_FIELDS), ids=lambda kind: kind.__name__)
def test_no_repr_or_str_of_a_rest_resource_shows_a_secret_of_its_auth(
    config_class: type[Config],
) -> None:
    secret = new_secret("auth")
    fields = AUTH_SECRET_FIELDS[config_class]
    auth = config_class(
        **{name: secret for name in fields}, **AUTH_OTHER_FIELDS.get(config_class, {})
    )
    resource = RestSourceResource(source_name="erp", base_url="https://api.internal", auth=auth)

    for shown in (repr(resource), str(resource), repr(auth), str(auth)):
        assert secret not in shown
    assert f"auth={config_class.__name__}(" in repr(resource)
    # every field described for the UI and `dagster dev`, the secret ones included
    assert all(field.description for field in config_class.model_fields.values())
    assert RestSourceResource.model_fields["auth"].description


def test_dot_env_is_git_ignored() -> None:
    ignored = subprocess.run(["git", "check-ignore", "--quiet", ".env"], cwd=REPO_ROOT, check=False)
    assert ignored.returncode == 0, ".env must be listed in .gitignore: it holds secrets"


# ---- an API key in the query, echoed back in every encoding ------------------------------------


def encodings(value: str) -> dict[str, str]:
    """`value` in each form an API may echo it in."""
    quoted = urllib.parse.quote(value, safe="")
    return {
        "raw": value,
        "percent": quoted,
        "percent_lower_hex": re.sub(r"%[0-9A-F]{2}", lambda match: match.group().lower(), quoted),
        "plus_for_space": urllib.parse.quote_plus(value),
        "twice": urllib.parse.quote(quoted, safe=""),
        "json_ascii": json.dumps(value),
        "json_upper_hex": re.sub(
            r"\\u([0-9a-f]{4})", lambda m: "\\u" + m.group(1).upper(), json.dumps(value)
        ),
        "json_slashes": json.dumps(value, ensure_ascii=False).replace("/", "\\/"),
    }


# a secret whose every character class encodes differently: space, slash, plus, &, =, é, emoji
KEY_CHARACTERS = ' /+&=é😀"\\'


@given(
    secret=st.text(
        alphabet=st.sampled_from("abcXYZ019-_.~" + KEY_CHARACTERS), min_size=3, max_size=12
    ),
    form=st.sampled_from(list(encodings("x"))),
    before=st.text(alphabet="ab =&", max_size=4),
    after=st.text(alphabet="ab =&", max_size=4),
)
def test_redact_masks_a_secret_in_every_encoding_and_mix_of_them(
    secret: str, form: str, before: str, after: str
) -> None:
    echoed = encodings(secret)[form]
    text = f"{before}{echoed}{after}"

    masked = redact(text, [secret])

    assert "***" in masked
    assert echoed not in masked or echoed in f"{before}***{after}"


def test_redact_exception_masks_the_message_and_every_cause_in_the_chain() -> None:
    secret = new_secret("key")

    class Opaque(Exception):
        """An exception that builds its text from an attribute, not from its arguments."""

        def __init__(self, url: str) -> None:
            super().__init__()
            self.url = url

        def __str__(self) -> str:
            return f"failed: {self.url}"

    try:
        try:
            try:
                raise Opaque(f"http://api/?api_key={urllib.parse.quote(secret)}")
            except Opaque as opaque:
                raise ValueError(f"while reading {secret}") from opaque
        except ValueError as value_error:
            raise SourceError(f"read failed for {json.dumps(secret)}") from value_error
    except SourceError as error:
        redact_exception(error, [secret])
        caught = error

    chain = []
    current: BaseException | None = caught
    while current is not None:
        chain.append(current)
        current = current.__cause__ or current.__context__
    texts = [str(item) for item in chain]
    assert len(chain) == 2  # the opaque one is cut off the chain
    assert all(secret not in text and "***" in text for text in texts)


def test_an_api_key_the_api_echoes_in_every_encoding_reaches_no_error_event_or_log(
    httpserver: HTTPServer,
    tmp_path: pathlib.Path,
    instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    random_parts = [secrets.token_hex(8), secrets.token_hex(8)]
    key = f"{random_parts[0]}{KEY_CHARACTERS}{random_parts[1]}"
    monkeypatch.setenv("INGEST_TEST_ECHO_KEY", key)
    caplog.set_level(logging.DEBUG)

    def echo(request: Request) -> Response:
        # a careless API that echoes the URL it was asked, in every form it knows
        received = request.args["api_key"]
        assert received == key
        body = {
            "error": "bad window",
            "url": request.url,
            "forms": encodings(received),
            "query": request.query_string.decode(),
        }
        return Response(json.dumps(body), status=400, content_type="application/json")

    day = "2024-01-03"
    httpserver.expect_ordered_request("/orders").respond_with_handler(echo)
    httpserver.expect_ordered_request("/orders").respond_with_json(
        {"data": [{"id": 1, "modified": f"{day}T10:00:00Z"}]}
    )
    source = {
        "type": "rest",
        "base_url": httpserver.url_for("/"),
        "start_date": "2024-01-01",
        "auth": {
            "type": "api_key",
            "name": "api_key",
            "value": "${INGEST_TEST_ECHO_KEY}",
            "location": "query",
        },
        "retries": {"max_attempts": 2, "backoff_seconds": 0.01},
        "streams": [
            {
                "name": "orders",
                "path": "/orders",
                "records_path": "data",
                "params": {"since": "{start}"},
                "partition_field": "modified",
                "primary_key": ["id"],
                "fields": {"id": "int64", "modified": "timestamp_tz"},
            }
        ],
    }
    text = yaml.safe_dump({"lake": {"root": str(tmp_path / "lake")}, "sources": {SOURCE: source}})
    spec = parse_project(text, "test-echo-project.yaml")
    project = IngestProject(spec, build_definitions(spec), tmp_path / "lake")

    failed = project.materialize(["orders"], instance, partition=day, raise_on_error=False)
    succeeded = project.materialize(["orders"], instance, partition=day)

    message = assert_failed(failed, "HTTP 400", "***")
    assert succeeded.success
    assert all(form not in message for form in encodings(key).values())
    # the test server's own request log holds the key: it is the API's log, not ours
    ours = "\n".join(
        record.getMessage() for record in caplog.records if not record.name.startswith("werkzeug")
    )
    captured = capfd.readouterr()
    places = [*instance_texts(instance), ("python log output", ours + captured.out + captured.err)]
    for part in random_parts:
        # each random part stays as it is in every encoding: none of its pieces may show
        pieces = {part[index : index + PIECE] for index in range(len(part) - PIECE + 1)}
        leaks = sorted({where for where, text in places if any(piece in text for piece in pieces)})
        assert not leaks, f"part of the API key is in: {leaks}"
