"""The project file's data model: frozen pydantic specs that describe sources; nothing here does I/O."""

from __future__ import annotations

import datetime
import re
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ANY_REFERENCE = re.compile(r"\$\{")


def snake_case(name: str) -> str:
    """`SalesOrderHeader` -> `sales_order_header`, `Sales-Order Header` -> `sales_order_header`."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"[^a-z0-9]+", "_", spaced.lower()).strip("_")


def env_reference(value: str) -> str | None:
    """The variable name when `value` is exactly `${NAME}`, else None."""
    match = ENV_REFERENCE.match(value)
    return match.group(1) if match else None


def _check_reference_syntax(value: str) -> str:
    if _ANY_REFERENCE.search(value) and env_reference(value) is None:
        raise ValueError(
            f"'{value}' mixes text and ${{...}}: an environment reference must be the whole "
            "value, e.g. password: ${DB_PASSWORD} (put the whole URL in one variable if needed)"
        )
    return value


class Spec(BaseModel):
    """Base of every spec: immutable, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ConnectionSpec(Spec):
    """How to reach a SQL database: a SQLAlchemy URL, or its parts; secrets as `${ENV_VAR}`."""

    url: str | None = Field(
        None, description="SQLAlchemy URL without a password, or `${VAR}` holding the whole URL."
    )
    drivername: str | None = Field(None, description="e.g. `mssql+pyodbc`, `postgresql+psycopg2`.")
    host: str | None = None
    port: int | None = None
    username: str | None = None
    password: str | None = Field(None, description="Always a `${VAR}` reference, never a literal.")
    database: str | None = None
    query: dict[str, str] = Field(
        default_factory=dict,
        description="URL query options, e.g. ODBC Driver 18's `driver`, `Encrypt`, "
        "`TrustServerCertificate`.",
    )
    sqlite_attach: dict[str, str] = Field(
        default_factory=dict,
        description="SQLite only: schema name -> database file, attached on connect "
        "(SQLite's way of having schemas).",
    )

    @field_validator("url", "host", "username", "database")
    @classmethod
    def _references(cls, value: str | None) -> str | None:
        return None if value is None else _check_reference_syntax(value)

    @field_validator("password")
    @classmethod
    def _password_is_reference(cls, value: str | None) -> str | None:
        if value is not None and env_reference(value) is None:
            raise ValueError(
                "a password must come from the environment: write password: ${DB_PASSWORD} "
                "and export DB_PASSWORD"
            )
        return value

    @field_validator("query")
    @classmethod
    def _query_references(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            _check_reference_syntax(item)
        return value

    @model_validator(mode="after")
    def _url_or_parts(self) -> ConnectionSpec:
        if (self.url is None) == (self.drivername is None):
            raise ValueError(
                "give either `url` or `drivername` (with host, database, ...), not both"
            )
        literal_url = self.url is not None and env_reference(self.url) is None
        if literal_url and re.match(r"^[^:/]+://[^/@]*:[^/@]*@", self.url or ""):
            raise ValueError(
                "the url holds a password: remove it from the url and write "
                "password: ${DB_PASSWORD}, or put the whole url in ${DB_URL}"
            )
        if self.password is not None and self.url is not None and env_reference(self.url):
            raise ValueError("`password` cannot be combined with a url taken from the environment")
        return self


class TableSpec(Spec):
    """One source table: becomes one asset, partitioned by day on `partition_column`."""

    schema_name: str | None = Field(
        None, alias="schema", description="Database schema, e.g. `Sales`."
    )
    name: str = Field(description="Table (or view) name at the source, e.g. `SalesOrderHeader`.")
    asset_name: str | None = Field(
        None, description="Asset name (snake_case); default: the table name in snake_case."
    )
    partition_column: str | None = Field(
        None,
        description="Date/time column that assigns a row to a day, e.g. `ModifiedDate`; "
        "without it the table is an unpartitioned snapshot, refreshed whole.",
    )
    primary_key: tuple[str, ...] = ()
    start_date: datetime.date | None = Field(
        None, description="First daily partition; defaults to the source's start_date."
    )
    columns: tuple[str, ...] | None = Field(None, description="Columns to read; default all.")
    schema_policy: Literal["evolve", "freeze"] = Field(
        "evolve",
        description="`evolve`: new source columns are added (older rows null); "
        "`freeze`: any column change fails the run.",
    )
    timestamp_nanoseconds: Literal["error", "truncate", "string"] = Field(
        "error",
        description="Delta keeps microseconds: a source timestamp with 100 ns digits fails "
        "(`error`), is cut to microseconds (`truncate`), or lands as ISO text (`string`).",
    )
    description: str | None = None
    owners: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)

    @field_validator("asset_name")
    @classmethod
    def _asset_name(cls, value: str | None) -> str | None:
        if value is not None and not SNAKE_CASE.match(value):
            raise ValueError(f"asset_name '{value}' must be snake_case, e.g. sales_order_header")
        return value

    @property
    def qualified_name(self) -> str:
        """`Schema.Table` as written in the project file."""
        return f"{self.schema_name}.{self.name}" if self.schema_name else self.name

    @property
    def key_name(self) -> str:
        """The asset name: explicit, or the table name in snake_case."""
        return self.asset_name or snake_case(self.name)


class SqlSourceSpec(Spec):
    """A relational database read through SQLAlchemy; every table becomes an asset."""

    type: Literal["sql"] = "sql"
    connection: ConnectionSpec
    tables: tuple[TableSpec, ...] = Field(min_length=1)
    start_date: datetime.date | None = Field(
        None, description="Default first partition of the source's tables."
    )
    end_date: datetime.date | None = Field(
        None,
        description="Day after the last partition (exclusive), for a source that stopped; "
        "default: partitions run up to today.",
    )
    timezone: str = Field("UTC", description="IANA zone in which the source's days begin.")
    batch_size: int = Field(
        50_000, gt=0, le=10_000_000, description="Rows per Arrow record batch (bounds memory)."
    )
    max_partitions_per_run: int | None = Field(
        None,
        gt=0,
        description="Split backfills into runs of at most this many days; default one run.",
    )
    owners: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone '{value}'; use an IANA name such as Europe/Paris"
            ) from None
        return value

    @model_validator(mode="after")
    def _tables(self) -> SqlSourceSpec:
        seen: dict[str, int] = {}
        asset_names: dict[str, int] = {}
        for index, table in enumerate(self.tables):
            qualified = table.qualified_name.lower()
            if qualified in seen:
                raise ValueError(
                    f"tables[{index}] repeats table '{table.qualified_name}' of "
                    f"tables[{seen[qualified]}]: list each table once"
                )
            seen[qualified] = index
            if table.key_name in asset_names:
                raise ValueError(
                    f"tables[{index}] and tables[{asset_names[table.key_name]}] would both be "
                    f"asset '{table.key_name}': give one of them an asset_name"
                )
            asset_names[table.key_name] = index
            start = table.start_date or self.start_date
            if table.partition_column and self.end_date and start and start >= self.end_date:
                raise ValueError(
                    f"tables[{index}] ('{table.qualified_name}') starts on {start}, not before "
                    f"the source's end_date {self.end_date}: move start_date or end_date"
                )
            if table.partition_column and not start:
                raise ValueError(
                    f"tables[{index}] ('{table.qualified_name}') is partitioned but has no "
                    "start_date: set start_date on the table or the source"
                )
        return self

    def start_date_of(self, table: TableSpec) -> datetime.date:
        """The table's first partition day."""
        start = table.start_date or self.start_date
        if start is None:
            raise ValueError(f"table {table.qualified_name} has no start_date")
        return start


class LakeSpec(Spec):
    """Where Delta tables live: a local folder or an object-store URI."""

    root: str = Field(".data/lake", description="Folder or s3:// / az:// / gs:// URI.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs storage options; values may be ${VAR}."
    )

    @field_validator("storage_options")
    @classmethod
    def _options(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            _check_reference_syntax(item)
        return value


SourceSpec = SqlSourceSpec


class ProjectSpec(Spec):
    """The whole project file."""

    lake: LakeSpec = Field(default_factory=LakeSpec)
    sources: dict[str, SourceSpec] = Field(min_length=1)

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceSpec]) -> dict[str, SourceSpec]:
        for name in value:
            if not SNAKE_CASE.match(name):
                raise ValueError(
                    f"source name '{name}' must be snake_case (it becomes the asset key prefix "
                    f"and folder), e.g. '{snake_case(name) or 'erp'}'"
                )
        return value
