"""Project-file validation and the definitions it builds (the graph is pinned; loading does no I/O)."""

from __future__ import annotations

import pathlib
import socket
import textwrap

import pytest
import yaml
from dagster import AssetKey, DailyPartitionsDefinition
from dagster._core.definitions.backfill_policy import BackfillPolicyType
from hypothesis import given
from hypothesis import strategies as st

from ingestion_assets.definitions import build_definitions
from ingestion_assets.errors import ConfigError
from ingestion_assets.project import DEMO_PROJECT_FILE, load_project, parse_project
from ingestion_assets.resources import SqlSourceResource
from ingestion_assets.specs import TableSpec, snake_case

VALID = """
lake: {root: /tmp/lake}
sources:
  erp:
    type: sql
    connection:
      drivername: mssql+pyodbc
      host: sql.example.internal
      username: reader
      password: ${ERP_PASSWORD}
      database: AdventureWorks
      query: {driver: ODBC Driver 18 for SQL Server, Encrypt: "yes", TrustServerCertificate: "no"}
    start_date: 2024-01-01
    tables:
      - {schema: Sales, name: SalesOrderHeader, partition_column: ModifiedDate, primary_key: [SalesOrderID]}
      - {schema: Sales, name: SalesOrderDetail, partition_column: ModifiedDate}
      - {schema: Production, name: Product}
"""

ENV = {"ERP_PASSWORD": "s3cret-value"}


def _error(text: str, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        parse_project(
            textwrap.dedent(text), "projects/ingestion.yaml", ENV if environ is None else environ
        )
    return str(raised.value)


def test_a_valid_file_loads_into_specs() -> None:
    project = parse_project(VALID, "ingestion.yaml", ENV)
    source = project.sources["erp"]
    assert [t.key_name for t in source.tables] == [
        "sales_order_header",
        "sales_order_detail",
        "product",
    ]
    assert source.connection.password == "${ERP_PASSWORD}"  # a reference, never the value


def test_an_unknown_key_names_the_file_the_path_and_the_fix() -> None:
    message = _error(
        VALID.replace(
            "partition_column: ModifiedDate, primary_key", "partition: ModifiedDate, primary_key"
        )
    )
    assert "projects/ingestion.yaml" in message
    assert "sources.erp.tables[0] (Sales.SalesOrderHeader).partition" in message
    assert "did you mean 'partition_column'?" in message


def test_a_bad_date_names_the_path_and_the_expected_form() -> None:
    message = _error(VALID.replace("start_date: 2024-01-01", "start_date: 2024-13-45"))
    assert "sources.erp.start_date" in message
    assert "YYYY-MM-DD" in message


def test_a_missing_environment_variable_is_reported_at_load_time() -> None:
    message = _error(VALID, environ={})
    assert "sources.erp.connection.password" in message
    assert "ERP_PASSWORD is not set" in message
    assert "export ERP_PASSWORD" in message


def test_a_duplicate_table_is_reported_with_both_positions() -> None:
    duplicate = VALID.replace(
        "      - {schema: Production, name: Product}",
        "      - {schema: Production, name: Product}\n      - {schema: Sales, name: SalesOrderHeader}",
    )
    message = _error(duplicate)
    assert "sources.erp" in message
    assert "tables[3] repeats 'Sales.SalesOrderHeader' of tables[0]" in message


def test_a_duplicate_yaml_key_is_an_error_not_a_silent_override() -> None:
    message = _error(VALID + "  erp:\n    type: sql\n")
    assert "appears twice" in message


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("password: ${ERP_PASSWORD}", "password: hunter2"),
        ("drivername: mssql+pyodbc", "drivername: mssql+pyodbc\n      url: sqlite://"),
    ],
)
def test_secrets_must_be_references_and_connections_unambiguous(change: str, expected: str) -> None:
    message = _error(VALID.replace(change, expected))
    assert "sources.erp.connection" in message


HEADER_ENTRY = "{schema: Sales, name: SalesOrderHeader, partition_column: ModifiedDate, "


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        (
            "freshness: {type: time_window, fail_after: 26}",
            "sources.erp.freshness.fail_after: 26 is no duration: write whole numbers with "
            "units d, h and m (days, hours, minutes), e.g. 26h, 90m or 1d12h",
        ),
        (
            "freshness: {type: time_window, fail_after: 1.5h}",
            "sources.erp.freshness.fail_after: '1.5h' is no duration",
        ),
        (
            "freshness: {type: time_window, fail_after: 30s}",
            "sources.erp.freshness.fail_after: '30s' is no duration",
        ),
        (
            "freshness: {type: time_window, fail_after: 0m}",
            "sources.erp.freshness.fail_after: '0m' is shorter than a minute",
        ),
        (
            "freshness: {type: time_window, fail_after: 24h, warn_after: 1d}",
            "sources.erp.freshness: warn_after (1d) must be shorter than fail_after (1d)",
        ),
        (
            "freshness: {type: cron, deadline_cron: '0 25 * * *', lower_bound: 1h}",
            "sources.erp.freshness.deadline_cron: '0 25 * * *' is no cron expression",
        ),
        (
            "freshness: {type: cron, deadline_cron: '0 6 * * *', lower_bound: 25h}",
            "sources.erp.freshness: lower_bound 25h is longer than the 1d between two deadlines "
            "of '0 6 * * *'",
        ),
        (
            "freshness: {type: cron, deadline_cron: '0 6 * * *', lower_bound: 1h, timezone: X/Y}",
            "sources.erp.freshness.timezone: unknown time zone 'X/Y'",
        ),
        (
            "freshness: {type: hourly}",
            "sources.erp.freshness: Input tag 'hourly' found using 'type' does not match any of "
            "the expected tags: 'time_window', 'cron'",
        ),
        (
            "freshness: {fail_after: 26h}",
            "sources.erp.freshness: `type` is missing; say which kind it is: cron, time_window",
        ),
        (
            "automation: {on_cron: daily}",
            "sources.erp.automation.on_cron: 'daily' is no cron expression: five fields",
        ),
        (
            "automation: {on_cron: '15 2 * * *', cron: x}",
            "sources.erp.automation.cron: unknown key 'cron'; did you mean 'on_cron'?",
        ),
    ],
)
def test_a_bad_freshness_or_automation_names_the_key_path_and_the_form(
    setting: str, expected: str
) -> None:
    assert expected in _error(
        VALID.replace("    start_date: 2024-01-01", f"    {setting}\n    start_date: 2024-01-01")
    )


def test_a_tables_freshness_and_automation_errors_name_the_table() -> None:
    detail = "name: SalesOrderDetail, partition_column: ModifiedDate"
    message = _error(
        VALID.replace(detail, detail + ", freshness: {type: time_window, fail_after: 2 days}")
    )
    assert "sources.erp.tables[1] (Sales.SalesOrderDetail).freshness.fail_after: '2 days'" in (
        message
    )
    message = _error(
        VALID.replace(
            HEADER_ENTRY,
            HEADER_ENTRY + "checks: {freshness: {enabled: true}}, "
            "freshness: {type: time_window, fail_after: 2h}, ",
        )
    )
    assert (
        "sources.erp.tables[0] (Sales.SalesOrderHeader): both freshness and checks.freshness "
        "are set" in message
    )


def test_a_partitioned_table_needs_a_start_date_and_sources_need_snake_case_names() -> None:
    assert "has no start_date" in _error(VALID.replace("    start_date: 2024-01-01\n", ""))
    assert "snake_case" in _error(VALID.replace("  erp:", "  Erp-Source:"))
    assert "unknown time zone" in _error(
        VALID.replace("    start_date:", "    timezone: Mars/Base\n    start_date:")
    )


def test_a_missing_project_file_says_how_to_point_at_one(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="INGEST_PROJECT_FILE"):
        load_project(tmp_path / "absent.yaml")


@given(st.from_regex(r"[A-Z][a-z]{1,8}([A-Z][a-z]{1,8}){0,3}", fullmatch=True))
def test_snake_case_names_are_valid_asset_names(name: str) -> None:
    result = snake_case(name)
    assert result == result.lower()
    assert result.replace("_", "").isalnum()
    assert result.replace("_", "") == name.lower()


def test_definitions_pin_the_graph_without_touching_the_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*_: object, **__: object) -> None:
        raise AssertionError("building definitions must not open a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    defs = build_definitions(parse_project(VALID, "ingestion.yaml", ENV))
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    assert keys == {
        AssetKey(["erp", "sales_order_header"]),
        AssetKey(["erp", "sales_order_detail"]),
        AssetKey(["erp", "product"]),
    }
    header = defs.get_assets_def(AssetKey(["erp", "sales_order_header"]))
    partitions = header.partitions_def
    assert isinstance(partitions, DailyPartitionsDefinition)
    assert partitions.start.date().isoformat() == "2024-01-01"
    assert header.backfill_policy is not None
    assert header.backfill_policy.policy_type == BackfillPolicyType.SINGLE_RUN
    spec = header.specs_by_key[AssetKey(["erp", "sales_order_header"])]
    assert spec.group_name == "erp"
    assert set(spec.kinds) == {"sqlserver", "deltalake"}
    assert spec.metadata["dagster/storage_kind"] == "deltalake"
    assert "dagster/column_schema" in spec.metadata
    assert header.get_op_def_for_asset_key(AssetKey(["erp", "sales_order_header"])).pool == "erp"
    product = defs.get_assets_def(AssetKey(["erp", "product"]))
    assert product.partitions_def is None
    assert "snapshot" in (product.specs_by_key[AssetKey(["erp", "product"])].description or "")
    job = defs.resolve_job_def("ingest_erp")
    assert {node.name for node in job.graph.node_defs} >= {
        "erp__sales_order_header",
        "erp__product",
    }
    # the secret stays an environment reference in the resource config
    resource = defs.resources["erp_source"]
    assert "s3cret-value" not in repr(resource)


def test_the_demo_project_file_loads_and_defines_every_demo_table_stream_and_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match="DEMO_API_PASSWORD is not set"):
        load_project(DEMO_PROJECT_FILE)
    monkeypatch.setenv("DEMO_API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("DEMO_API_PASSWORD", "not-used")
    defs = build_definitions(load_project(DEMO_PROJECT_FILE))
    keys = sorted(spec.key.to_user_string() for spec in defs.resolve_all_asset_specs())
    orders = [
        "purchase_order_detail",
        "purchase_order_header",
        "sales_order_detail",
        "sales_order_header",
    ]
    assert keys == sorted(
        [f"adventureworks/{name}" for name in [*orders, "customer", "product", "vendor"]]
        + [f"adventureworks_api/{name}" for name in orders]
        + ["landing/currency_rate", "landing/product_ndjson", "landing/product_parquet"]
        + ["silver/sales_orders", "gold/daily_revenue_by_territory", "gold/daily_sales_by_product"]
    )
    assert defs.resolve_job_def("ingest_adventureworks") is not None
    assert defs.resolve_job_def("ingest_adventureworks_api") is not None
    assert defs.resolve_job_def("ingest_landing") is not None


def test_a_url_with_a_separate_password_connects_with_that_password() -> None:
    resource = SqlSourceResource(
        source_name="erp", url="postgresql+psycopg2://reader@db.internal/erp", password="pw-123"
    )
    url = resource.sqlalchemy_url()
    assert url.password == "pw-123"
    assert "pw-123" not in url.render_as_string(hide_password=True)


@pytest.mark.parametrize(
    "header", ["Authorization: Bearer abc123", "X-API-Key: abc123", "Cookie: session=abc123"]
)
def test_a_credential_in_a_literal_header_is_refused(header: str) -> None:
    text = yaml.safe_dump(
        {
            "sources": {
                "shop": {
                    "type": "rest",
                    "base_url": "http://127.0.0.1:9",
                    "headers": dict([header.split(": ")]),
                    "start_date": "2024-01-01",
                    "streams": [{"name": "orders", "path": "/orders"}],
                }
            }
        }
    )
    with pytest.raises(ConfigError) as raised:
        parse_project(text, "shop.yaml")
    message = str(raised.value)
    assert "sources.shop.headers" in message
    assert "put credentials in `auth`" in message
    assert "abc123" not in message
    # a header without credentials stays allowed
    parse_project(text.replace(header.split(": ")[0], "X-Client"), "shop.yaml")


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (
            VALID.replace("sql.example.internal", "sql.exämple.internal").encode("latin-1"),
            r"line 8, column 19: byte 0xe4 is not UTF-8 .*save the project file as UTF-8",
        ),
        (VALID.encode("utf-16"), r"the project file is UTF-16 text; save it as UTF-8"),
    ],
    ids=["latin-1", "utf-16"],
)
def test_a_project_file_that_is_not_utf8_names_the_file_the_line_and_the_fix(
    tmp_path: pathlib.Path, encoded: bytes, expected: str
) -> None:
    path = tmp_path / "ingestion.yaml"
    path.write_bytes(encoded)
    with pytest.raises(ConfigError, match=f"^{path}: {expected}"):
        load_project(path)


def test_a_project_file_with_a_byte_order_mark_loads(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ingestion.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + VALID.replace("${ERP_PASSWORD}", "${HOME}").encode())
    assert list(load_project(path).sources) == ["erp"]


@pytest.mark.parametrize(
    ("text", "line", "location"),
    [
        ("[" * 10_000, 1, "[0][0][0]"),
        ("{a: " * 10_000, 1, "a.a.a"),
        (
            "sources:\n" + "".join(" " * depth + "a:\n" for depth in range(1, 1_000)),
            65,
            "sources.a.a",
        ),
        ("sources: [" + "{a: [" * 5_000, 1, "sources[0].a[0].a"),
    ],
    ids=["sequences", "flow mappings", "block mappings", "mixed"],
)
def test_absurdly_deep_yaml_names_the_file_the_line_and_the_fix_instead_of_overflowing(
    text: str, line: int, location: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_project(text, "projects/ingestion.yaml", ENV)
    message = str(raised.value)
    assert message.startswith(f"projects/ingestion.yaml: line {line}: the YAML is nested more")
    assert f"(under {location}" in message
    assert "look for an unclosed [ or {" in message


def test_an_alias_that_refers_to_itself_is_a_config_error_not_a_recursion_error() -> None:
    with pytest.raises(ConfigError, match=r"projects/ingestion\.yaml: "):
        parse_project("sources: &loop [*loop]\n", "projects/ingestion.yaml", ENV)


@given(st.integers(min_value=65, max_value=400), st.sampled_from(["[", "{a: ", "- "]))
def test_any_nesting_past_the_limit_is_refused_with_its_line(depth: int, opening: str) -> None:
    with pytest.raises(ConfigError, match=r"^f\.yaml: line \d+: the YAML is nested more than 64"):
        parse_project(opening * depth, "f.yaml", ENV)


@pytest.mark.parametrize(
    "password", ["p@ss", "@0?/", "a@b@c"], ids=["one at", "at then query", "two ats"]
)
def test_a_whole_url_from_the_environment_with_a_raw_at_is_refused_when_the_file_loads(
    password: str,
) -> None:
    text = textwrap.dedent(
        """
        sources:
          erp:
            type: sql
            connection: {url: "${DB_URL}"}
            start_date: 2024-01-01
            tables: [{schema: Sales, name: Orders, partition_column: ModifiedDate}]
        """
    )
    url = f"postgresql+psycopg2://reader:{password}@127.0.0.1:5432/sales"

    with pytest.raises(ConfigError) as refused:
        parse_project(text, "ingestion.yaml", {"DB_URL": url})

    message = str(refused.value)
    assert message.startswith("ingestion.yaml: sources.erp.connection.url (${DB_URL}): ")
    assert "%40" in message
    assert password not in message
    assert "127.0.0.1" not in message
    encoded = password.replace("@", "%40").replace("?", "%3F").replace("/", "%2F")
    loaded = parse_project(
        text, "ingestion.yaml", {"DB_URL": url.replace(f":{password}@", f":{encoded}@")}
    )
    assert "erp" in loaded.sources


def test_yaml_that_does_not_parse_names_the_file_line_and_column() -> None:
    # a flow mapping whose value is a ${VAR} without quotes: `{` opens another mapping
    text = "sources:\n  erp:\n    auth: {type: basic, username: u, password: ${P}}\n"

    with pytest.raises(ConfigError) as refused:
        parse_project(text, "ingestion.yaml")

    message = str(refused.value)
    assert message.startswith("ingestion.yaml: line 3, column "), message
    assert ": not valid YAML: " in message
    assert "<unicode string>" not in message


PRODUCT_ENTRY = "{schema: Production, name: Product}"


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            "mode: merge",
            "tables[2] (Production.Product): a merge table (mode: merge) needs `primary_key`",
        ),
        (
            "mode: merge, primary_key: [ProductID], partition_column: ModifiedDate",
            "a merge table is not partitioned by day",
        ),
        ("cursor_column: ModifiedDate", "cursor_column apply to merge tables only"),
        (
            "mode: merge, primary_key: [ProductID], delete_column: Gone",
            "delete_column is set but deletes is `ignore`",
        ),
        (
            "mode: merge, primary_key: [ProductID], tracked_columns: [ListPrice]",
            "tracked_columns applies with `history: true` only",
        ),
        (
            "mode: merge, primary_key: [ProductID], deletes: sometimes",
            "deletes: Input should be 'ignore', 'soft' or 'hard'",
        ),
        ("mode: cdc, primary_key: [ProductID]", "needs `cdc:` (its change feed)"),
        (
            "mode: cdc, primary_key: [ProductID], cdc: {feed: change_table}",
            "a change_table feed needs `sequence_by` (the columns that order it)",
        ),
        (
            "mode: cdc, primary_key: [ProductID], cdc: {feed: change_table, sequence_by: [At]}",
            "a change_table feed of a SQL table needs `change_table` (schema.table)",
        ),
        (
            "mode: cdc, primary_key: [ProductID], cdc: {feed: sqlserver_cdc}, history: true",
            "history do not apply to a cdc table",
        ),
        ("cdc: {feed: sqlserver_cdc}", "`cdc:` applies with `mode: cdc` only"),
    ],
)
def test_a_merge_or_cdc_table_declared_wrong_is_a_load_time_error_naming_the_table(
    options: str, expected: str
) -> None:
    text = VALID.replace(PRODUCT_ENTRY, PRODUCT_ENTRY[:-1] + ", " + options + "}")
    assert expected in _error(text)


def test_merge_and_cdc_tables_are_unpartitioned_assets_with_their_checks() -> None:
    text = VALID.replace(
        PRODUCT_ENTRY,
        "{schema: Production, name: Product, primary_key: [ProductID], mode: merge, "
        "history: true, cursor_column: ModifiedDate}",
    )
    defs = build_definitions(parse_project(text, "ingestion.yaml", ENV))
    product = defs.get_assets_def(AssetKey(["erp", "product"]))
    assert product.partitions_def is None
    assert {key.name for key in product.check_keys} == {
        "current_keys_unique",
        "current_rows_match_source",
        "history_unbroken",
    }
    assert "Merge table kept by ProductID" in (product.descriptions_by_key[product.key] or "")


def test_a_rest_stream_kept_by_key_states_its_feed_and_how_to_ask_for_changes() -> None:
    from ingestion_assets.specs import StreamSpec

    feed = {"feed": "change_table", "operation_column": "op", "sequence_by": ["seq"]}
    with pytest.raises(ValueError, match="change feed is the stream itself"):
        StreamSpec(
            name="Orders",
            path="/orders",
            mode="cdc",
            primary_key=("id",),
            cdc={**feed, "change_table": "app.orders_changes"},
            changes_params={"after": "{since}"},
        )
    with pytest.raises(ValueError, match="a cdc stream needs `changes_params`"):
        StreamSpec(name="Orders", path="/orders", mode="cdc", primary_key=("id",), cdc=feed)
    with pytest.raises(ValueError, match="a change_table feed of a SQL table needs `change_table`"):
        TableSpec(name="Orders", mode="cdc", primary_key=("id",), cdc=feed)
    with pytest.raises(ValueError, match="cursor field modified is not among the declared"):
        StreamSpec(
            name="Orders",
            path="/orders",
            mode="merge",
            primary_key=("id",),
            cursor_column="modified",
            changes_params={"since": "{since}"},
            fields={"id": "int64"},
        )
