"""The project file's data model: frozen pydantic specs that describe sources; nothing here does I/O."""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

SNAKE_CASE = re.compile(r"^[a-z][a-z0-9_]*$")
# headers that carry credentials: a literal value would put a secret in the project file
CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-auth-token"}
)
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


def _valid_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone '{value}'; use an IANA name such as Europe/Paris"
        ) from None
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


class CheckSpec(Spec):
    """One data-quality check: on or off, how severe, and whether it blocks downstream assets."""

    enabled: bool = True
    severity: Literal["ERROR", "WARN"] = "ERROR"
    blocking: bool = Field(True, description="A failed ERROR check stops downstream assets.")


class RowCountCheckSpec(CheckSpec):
    """At least `min_rows` rows, and (with `reconcile`) exactly as many as the source has."""

    min_rows: int = Field(0, ge=0, description="Fewest rows a partition may have.")
    reconcile: bool = Field(
        True, description="Compare with the source's count for the same window."
    )


class FreshnessCheckSpec(CheckSpec):
    """Deprecated: `enabled: true` sets the freshness policy `{type: time_window, fail_after:
    <max_age_hours>h}` (the project's own check was replaced by Dagster's freshness)."""

    enabled: bool = False
    severity: Literal["ERROR", "WARN"] = "WARN"
    blocking: bool = False
    max_age_hours: float = Field(36.0, gt=0)


def legacy_freshness_window(check: FreshnessCheckSpec) -> datetime.timedelta:
    """The time window a deprecated `checks.freshness` check stands for: its `max_age_hours`."""
    return datetime.timedelta(minutes=round(check.max_age_hours * 60))


class ReconcileWithSpec(CheckSpec):
    """Another asset holding the same data (e.g. the SQL table behind an API): rows per day, and
    with `keys` the primary-key sets, must be equal."""

    severity: Literal["ERROR", "WARN"] = "WARN"
    blocking: bool = False
    asset: str = Field(
        description="The other asset's key, as `source/table` (the key Dagster shows)."
    )
    keys: bool = Field(
        False, description="Also compare the key sets (this table's primary key columns)."
    )

    @field_validator("asset")
    @classmethod
    def _asset_key(cls, value: str) -> str:
        parts = value.split("/")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"'{value}' is no asset key; write it as source/table")
        return value


class ChecksSpec(Spec):
    """The checks generated for a table or stream."""

    schema_contract: CheckSpec = Field(default_factory=CheckSpec)
    row_count: RowCountCheckSpec = Field(default_factory=RowCountCheckSpec)
    primary_key: CheckSpec = Field(
        default_factory=CheckSpec, description="Key unique and not null (needs primary_key)."
    )
    freshness: FreshnessCheckSpec = Field(
        default_factory=FreshnessCheckSpec,
        description="Deprecated: write `freshness:` (Dagster's freshness policy) on the entry.",
    )
    reconcile_with: ReconcileWithSpec | None = Field(
        None, description="Reconcile with another asset holding the same data (off by default)."
    )


DURATION = re.compile(r"(?:(\d+)d)?\s*(?:(\d+)h)?\s*(?:(\d+)m)?")
DURATION_HELP = "whole numbers with units d, h and m (days, hours, minutes), e.g. 26h, 90m or 1d12h"


def _duration(value: Any) -> Any:
    """`26h`, `90m`, `1d12h` -> a timedelta of at least a minute (the least Dagster evaluates)."""
    if isinstance(value, datetime.timedelta):
        return value
    match = DURATION.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None or not any(match.groups()):
        raise ValueError(f"{value!r} is no duration: write {DURATION_HELP}")
    days, hours, minutes = (int(part or 0) for part in match.groups())
    duration = datetime.timedelta(days=days, hours=hours, minutes=minutes)
    if duration < datetime.timedelta(minutes=1):
        raise ValueError(f"{value!r} is shorter than a minute, the least Dagster evaluates")
    return duration


def duration_text(duration: datetime.timedelta) -> str:
    """A duration as the project file writes it: `2d`, `26h`, `1h30m`."""
    minutes = int(duration.total_seconds()) // 60
    if minutes and minutes % 1440 == 0:
        return f"{minutes // 1440}d"
    hours, minutes = divmod(minutes, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m")) if n) or "0m"


Duration = Annotated[datetime.timedelta, BeforeValidator(_duration)]


def _valid_cron(value: str) -> str:
    # Dagster's own parser, imported here only: the specs load without Dagster (sources/ use
    # them), and an expression passes exactly when Dagster's cron evaluation accepts it
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(value):
        raise ValueError(
            f"'{value}' is no cron expression: five fields (minute hour day-of-month month "
            "day-of-week), e.g. '15 2 * * *' for 02:15 every day"
        )
    return value


class TimeWindowFreshnessSpec(Spec):
    """Fresh while the newest materialization is younger than `fail_after`; WARN past
    `warn_after` (Dagster's `FreshnessPolicy.time_window`)."""

    type: Literal["time_window"] = "time_window"
    fail_after: Duration = Field(
        description="FAIL once the newest materialization is older than this, e.g. 26h."
    )
    warn_after: Duration | None = Field(
        None, description="WARN once it is older than this (shorter than fail_after), e.g. 25h."
    )

    @model_validator(mode="after")
    def _warn_before_fail(self) -> TimeWindowFreshnessSpec:
        if self.warn_after is not None and self.warn_after >= self.fail_after:
            raise ValueError(
                f"warn_after ({duration_text(self.warn_after)}) must be shorter than fail_after "
                f"({duration_text(self.fail_after)}): an asset warns before it fails"
            )
        return self


class CronFreshnessSpec(Spec):
    """Fresh when it materialized within `lower_bound` before the last `deadline_cron` tick
    (Dagster's `FreshnessPolicy.cron`): `0 6 * * *` with 24h means "by 06:00, a load since
    yesterday 06:00"."""

    type: Literal["cron"] = "cron"
    deadline_cron: str = Field(
        description="Cron expression of the deadlines, e.g. '0 6 * * *' (06:00 every day)."
    )
    lower_bound: Duration = Field(
        description="How long before a deadline a materialization counts for it, e.g. 24h; at "
        "most the time between two deadlines."
    )
    timezone: str | None = Field(None, description="Zone of deadline_cron; default: the source's.")

    @field_validator("deadline_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _valid_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _valid_zone(value)

    @model_validator(mode="after")
    def _bound_within_interval(self) -> CronFreshnessSpec:
        from dagster._utils.schedules import get_smallest_cron_interval

        # Dagster measures the interval in UTC (CronFreshnessPolicy): the same check, said here
        interval = get_smallest_cron_interval(self.deadline_cron)
        if self.lower_bound > interval:
            raise ValueError(
                f"lower_bound {duration_text(self.lower_bound)} is longer than the "
                f"{duration_text(interval)} between two deadlines of '{self.deadline_cron}': a "
                "materialization would count for two deadlines; use at most "
                f"{duration_text(interval)}"
            )
        return self


FreshnessSpec = Annotated[TimeWindowFreshnessSpec | CronFreshnessSpec, Field(discriminator="type")]


class AutomationSpec(Spec):
    """Declarative automation of an ingestion asset, evaluated by Dagster's automation sensor."""

    on_cron: str | None = Field(
        None,
        description="At each tick (cron), materialize the last complete day "
        "(`AutomationCondition.on_cron`); the daily schedule then leaves the asset out.",
    )
    timezone: str | None = Field(None, description="Zone of on_cron; default: the source's.")

    @field_validator("on_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _valid_cron(value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _valid_zone(value)


class ScheduleSpec(Spec):
    """When a source's daily job runs; it materializes the previous day's partition."""

    enabled: bool = True
    cron: str = Field("15 2 * * *", description="Cron expression, in the schedule's timezone.")
    timezone: str | None = Field(None, description="Default: the source's timezone.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _valid_zone(value)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        if len(value.split()) != 5:
            raise ValueError(f"cron '{value}' needs five fields, e.g. '15 2 * * *'")
        return value


class SensorSpec(Spec):
    """The new-data sensor: asks the source which days changed since its cursor."""

    enabled: bool = False
    change_column: str | None = Field(
        None,
        description="Column (SQL) or field (REST) that moves when a row changes; "
        "default: the partition column.",
    )
    interval_seconds: int = Field(300, ge=30, description="Seconds between ticks.")
    max_runs_per_tick: int = Field(
        10,
        gt=0,
        description="Runs requested per table and tick at most: more ranges of changed days "
        "collapse into one range from the first to the last (re-ingesting a day is idempotent).",
    )


# each preset feed's columns and operation values (a `change_table` names its own)
_FEED_OPERATION = {
    "sqlserver_cdc": "__$operation",
    "sqlserver_change_tracking": "SYS_CHANGE_OPERATION",
    "postgres_logical": "_operation",
}
_FEED_SEQUENCE: dict[str, tuple[str, ...]] = {
    "sqlserver_cdc": ("__$start_lsn", "__$seqval"),
    "sqlserver_change_tracking": ("SYS_CHANGE_VERSION",),
    "postgres_logical": ("_lsn",),
}
_FEED_DELETES: dict[str, tuple[str, ...]] = {
    "sqlserver_cdc": ("1",),
    "sqlserver_change_tracking": ("D",),
    "postgres_logical": ("delete",),
}
_FEED_EXCEPT: dict[str, tuple[str, ...]] = {
    "sqlserver_cdc": ("__$end_lsn", "__$seqval", "__$update_mask", "__$command_id"),
    "sqlserver_change_tracking": ("SYS_CHANGE_VERSION",),
    "postgres_logical": ("_lsn",),
}


class CdcSpec(Spec):
    """A change feed applied to a table kept by key (`mode: cdc`), like Databricks'
    `apply_changes`: the feed's rows are events (an operation, a sequence), applied in sequence
    order; the last sequence applied is the cursor."""

    feed: Literal[
        "change_table", "sqlserver_cdc", "sqlserver_change_tracking", "postgres_logical"
    ] = Field(
        "change_table",
        description="`change_table`: any table of events (an operation and a sequence column); "
        "`sqlserver_cdc`: the change table SQL Server CDC keeps for a capture instance "
        "(`cdc.<capture_instance>_CT`, `__$operation`, `__$start_lsn`, `__$seqval`); "
        "`sqlserver_change_tracking`: SQL Server Change Tracking (`CHANGETABLE(CHANGES ...)` "
        "joined to the table; `SYS_CHANGE_OPERATION`, `SYS_CHANGE_VERSION`); "
        "`postgres_logical`: PostgreSQL logical decoding from a replication slot (`slot`; "
        "the server needs `wal_level = logical`).",
    )
    slot: str | None = Field(
        None,
        description="postgres_logical: the replication slot (created on the first run); "
        "default `ingest_<schema>_<table>`.",
        pattern=r"^[a-z0-9_]{1,63}$",
    )
    change_table: str | None = Field(
        None,
        description="The feed's table as `schema.table` (change_table: required; sqlserver_cdc: "
        "default `cdc.<capture_instance>_CT`).",
    )
    capture_instance: str | None = Field(
        None, description="sqlserver_cdc: the capture instance; default `<schema>_<table>`."
    )
    operation_column: str | None = Field(
        None, description="The column naming each event's operation (sqlserver_cdc: __$operation)."
    )
    sequence_by: tuple[str, ...] = Field(
        (),
        description="The columns that order the events, most significant first (sqlserver_cdc: "
        "__$start_lsn, __$seqval); the first is the cursor.",
    )
    apply_as_deletes: tuple[str, ...] = Field(
        ("delete", "DELETE", "D", "d"),
        description="Operation values that delete the key (sqlserver_cdc: 1).",
    )
    ignore_operations: tuple[str, ...] = Field(
        (), description="Operation values left out (sqlserver_cdc: 3, the image before an update)."
    )
    except_columns: tuple[str, ...] = Field(
        (), description="Feed columns the table does not keep (the operation is never kept)."
    )
    stored_as_scd_type: Literal[1, 2] = Field(
        1, description="1: the latest row per key; 2: a version per change (history)."
    )

    @property
    def operation(self) -> str:
        """The operation column."""
        return self.operation_column or _FEED_OPERATION.get(self.feed, "operation")

    @property
    def sequence(self) -> tuple[str, ...]:
        """The sequence columns."""
        return self.sequence_by or _FEED_SEQUENCE.get(self.feed, ())

    @property
    def deletes_on(self) -> tuple[str, ...]:
        """The operation values that delete."""
        if self.feed in _FEED_DELETES and "apply_as_deletes" not in self.model_fields_set:
            return _FEED_DELETES[self.feed]
        return self.apply_as_deletes

    @property
    def ignored(self) -> tuple[str, ...]:
        """The operation values left out."""
        if self.feed == "sqlserver_cdc" and "ignore_operations" not in self.model_fields_set:
            return ("3",)
        return self.ignore_operations

    @property
    def excepted(self) -> tuple[str, ...]:
        """The feed columns the table does not keep."""
        if self.feed in _FEED_EXCEPT and "except_columns" not in self.model_fields_set:
            return _FEED_EXCEPT[self.feed]
        return self.except_columns

    @property
    def is_the_dataset(self) -> bool:
        """A change_table feed without `change_table`: the dataset (a REST stream) holds the
        events itself."""
        return self.feed == "change_table" and not self.change_table

    @property
    def reads_the_table(self) -> bool:
        """Whether the feed is read with the table itself (SQL Server CDC and change tracking
        load the table first, then its changes; logical decoding reads the table's slot), not
        as a table of its own."""
        return self.feed in ("sqlserver_cdc", "sqlserver_change_tracking", "postgres_logical")

    def slot_name(self, schema: str | None, name: str) -> str:
        """postgres_logical: the replication slot of the table `schema.name`."""
        if self.slot:
            return self.slot
        default = re.sub(r"[^a-z0-9_]", "_", f"ingest_{schema or 'public'}_{name}".lower())
        return default[:63]

    def feed_table(self, schema: str | None, name: str) -> tuple[str | None, str]:
        """(schema, table) of the feed for the dataset `schema.name`."""
        if self.change_table:
            head, _, tail = self.change_table.rpartition(".")
            return (head or None), tail
        capture = self.capture_instance or f"{schema or 'dbo'}_{name}"
        return "cdc", f"{capture}_CT"

    @model_validator(mode="after")
    def _feed_named(self) -> CdcSpec:
        if self.feed == "change_table" and not self.sequence_by:
            raise ValueError("a change_table feed needs `sequence_by` (the columns that order it)")
        if self.slot and self.feed != "postgres_logical":
            raise ValueError("`slot` applies to a postgres_logical feed only")
        return self


class DatasetSpec(Spec):
    """What tables and streams share: the asset they become and how it is written."""

    asset_name: str | None = Field(
        None, description="Asset name (snake_case); default: the name in snake_case."
    )
    primary_key: tuple[str, ...] = ()
    start_date: datetime.date | None = Field(
        None, description="First daily partition; defaults to the source's start_date."
    )
    schema_policy: Literal["evolve", "freeze"] = Field(
        "evolve",
        description="`evolve`: new source columns are added (older rows null); "
        "`freeze`: any column change fails the run.",
    )
    unpartitioned_rows: Literal["warn", "fail", "quarantine"] = Field(
        "warn",
        description="Rows no partition can reach (partition column NULL, before the first "
        "partition or on/after end_date): `warn` reports their count, `fail` fails the run, "
        "`quarantine` also lands them in `<table>_unpartitioned`.",
    )
    timestamp_nanoseconds: Literal["error", "truncate", "string"] = Field(
        "error",
        description="Delta keeps microseconds: a source timestamp with 100 ns digits fails "
        "(`error`), is cut to microseconds (`truncate`), or lands as ISO text (`string`).",
    )
    description: str | None = None
    owners: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    checks: ChecksSpec = Field(default_factory=ChecksSpec)
    freshness: FreshnessSpec | None = Field(
        None,
        description="Dagster freshness policy (`time_window` or `cron`) over the source's; "
        "`null`: none for this dataset.",
    )
    automation: AutomationSpec | None = Field(
        None, description="Automation condition over the source's; `{}`: none for this dataset."
    )
    mode: Literal["replace", "merge", "cdc"] = Field(
        "replace",
        description="`replace`: each run replaces its days (or, without a partition column, the "
        "whole table); `merge`: an unpartitioned table kept by `primary_key`, each run upserting "
        "the rows changed since its cursor in one MERGE; `cdc`: the same table kept from a "
        "change feed (`cdc:`).",
    )
    cdc: CdcSpec | None = Field(None, description="cdc: the change feed and how it is applied.")
    cursor_column: str | None = Field(
        None,
        description="merge: the column that grows when a row changes (a modified timestamp, an "
        "increasing id, SQL Server `rowversion`); each run reads the rows at or past the last "
        "run's highest value. None: every run reads every row.",
    )
    lookback: Duration | None = Field(
        None,
        description="merge: a timestamp cursor is moved back this far before each read, for "
        "clock skew and late commits (e.g. `10m`); the rows read again change nothing.",
    )
    deletes: Literal["ignore", "soft", "hard"] = Field(
        "ignore",
        description="merge: what a delete does: `ignore`; `soft` keeps the row with `_deleted` "
        "true and `_deleted_at`; `hard` removes it. Deletes are the rows whose `delete_column` "
        "is true and, in a run that read every row, the keys the source no longer holds.",
    )
    delete_column: str | None = Field(
        None, description="merge: a flag column (true, non-zero, `Y`) that marks deleted rows."
    )
    key_scan_cron: str | None = Field(
        None,
        description="merge with deletes and a cursor: at each tick (cron, e.g. `0 3 * * 0`), a "
        "run reads only the source's keys and compares them with the table's, in bounded "
        "memory, to find the rows deleted at the source; the incremental runs cannot see "
        "them. On demand: the run tag `ingest/key_scan=true`.",
    )
    history: bool = Field(
        False,
        description="merge: keep SCD type 2 history: a change in a tracked column closes the "
        "current version (`_valid_to`, `_is_current`) and opens a new one.",
    )
    tracked_columns: tuple[str, ...] | None = Field(
        None,
        description="history: the columns whose change opens a version (default: all); a "
        "change in the others updates the current version in place.",
    )

    @model_validator(mode="after")
    def _merge_options(self) -> DatasetSpec:
        if self.mode == "cdc":
            if self.cdc is None:
                raise ValueError("a cdc table (mode: cdc) needs `cdc:` (its change feed)")
            if not self.primary_key:
                raise ValueError("a cdc table (mode: cdc) needs `primary_key`")
            if self.partition_column is not None:
                raise ValueError(
                    "a cdc table is not partitioned by day: remove the partition column"
                )
            fields = type(self).model_fields
            unused = [
                name
                for name in ("cursor_column", "lookback", "delete_column", "history")
                if getattr(self, name) != fields[name].default
            ]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} do not apply to a cdc table: its feed's "
                    "`sequence_by`, `apply_as_deletes` and `stored_as_scd_type` say it"
                )
            return self
        if self.cdc is not None:
            raise ValueError("`cdc:` applies with `mode: cdc` only")
        merge_only: tuple[str, ...] = (
            "key_scan_cron",
            "cursor_column",
            "lookback",
            "delete_column",
            "history",
            "tracked_columns",
            "deletes",
        )
        if self.mode != "merge":
            # set to something else than the default (a spec dumped and loaded again sets all)
            fields = type(self).model_fields
            stray = [name for name in merge_only if getattr(self, name) != fields[name].default]
            if stray:
                raise ValueError(
                    f"{', '.join(stray)} apply to merge tables only: add `mode: merge` or remove "
                    "them"
                )
            return self
        if not self.primary_key:
            raise ValueError("a merge table (mode: merge) needs `primary_key`")
        if self.partition_column is not None:
            raise ValueError(
                "a merge table is not partitioned by day: remove the partition column (name the "
                "column that grows on change as `cursor_column`)"
            )
        if self.tracked_columns is not None and not self.history:
            raise ValueError("tracked_columns applies with `history: true` only")
        if self.delete_column is not None and self.deletes == "ignore":
            raise ValueError(
                "delete_column is set but deletes is `ignore`: set `deletes: soft` or `hard`"
            )
        if self.key_scan_cron is not None:
            _valid_cron(self.key_scan_cron)
            if self.deletes == "ignore":
                raise ValueError(
                    "key_scan_cron finds deleted keys, but deletes is `ignore`: set `deletes: "
                    "soft` or `hard`, or remove key_scan_cron"
                )
            if self.cursor_column is None:
                raise ValueError(
                    "key_scan_cron is set but the table has no cursor_column: every run reads "
                    "every row and finds the deleted keys already; remove key_scan_cron"
                )
        return self

    @model_validator(mode="after")
    def _one_freshness(self) -> DatasetSpec:
        legacy = self.checks.freshness
        if legacy.enabled and "freshness" in self.model_fields_set:
            raise ValueError(
                "both freshness and checks.freshness are set: freshness (the asset's Dagster "
                "freshness policy) replaces checks.freshness; remove checks.freshness"
            )
        if legacy.enabled and legacy.max_age_hours * 60 < 1:
            raise ValueError(
                f"checks.freshness.max_age_hours {legacy.max_age_hours} is shorter than a "
                "minute, the least Dagster evaluates"
            )
        return self

    @field_validator("asset_name")
    @classmethod
    def _asset_name(cls, value: str | None) -> str | None:
        if value is not None and not SNAKE_CASE.match(value):
            raise ValueError(f"asset_name '{value}' must be snake_case, e.g. sales_order_header")
        return value

    @model_validator(mode="after")
    def _key_name_is_a_folder_name(self) -> DatasetSpec:
        # the asset name is also the Delta table's folder under <lake root>/<source>/: a name
        # with no ASCII letter or digit (`..`, `/`) would leave the table no folder of its own
        if not self.key_name:
            raise ValueError(
                f"'{self.qualified_name}' has no ASCII letter or digit in its name to make the "
                "asset name (the table's folder in the lake) from: set asset_name, e.g. "
                "asset_name: orders"
            )
        return self

    @property
    def qualified_name(self) -> str:
        """The name people know the dataset by at the source."""
        raise NotImplementedError

    @property
    def origin(self) -> str:
        """What the dataset is at its source, for descriptions (`Sales.Orders`, a stream's GET)."""
        return f"`{self.qualified_name}`"

    @property
    def partition_column(self) -> str | None:
        """The column that assigns a record to its day; None for a snapshot."""
        raise NotImplementedError

    @property
    def key_name(self) -> str:
        """The asset name: explicit, or the dataset's name (`name`) in snake_case."""
        return self.asset_name or snake_case(str(getattr(self, "name", "")))

    @property
    def declares_every_column(self) -> bool:
        """Whether the spec names every column the table has (a layer's SQL is then checked
        against them while definitions load)."""
        return False


class TableSpec(DatasetSpec):
    """One source table: becomes one asset, partitioned by day on `partition_column`."""

    schema_name: str | None = Field(
        None, alias="schema", description="Database schema, e.g. `Sales`."
    )
    name: str = Field(description="Table (or view) name at the source, e.g. `SalesOrderHeader`.")
    partition_column_name: str | None = Field(
        None,
        alias="partition_column",
        description="Date/time column that assigns a row to a day, e.g. `ModifiedDate`; "
        "without it the table is an unpartitioned snapshot, refreshed whole.",
    )
    columns: tuple[str, ...] | None = Field(None, description="Columns to read; default all.")
    tinyint1_as_bool: bool | None = Field(
        None, description="Override the source's `tinyint1_as_bool` for this table."
    )

    @model_validator(mode="after")
    def _feed_table_named(self) -> TableSpec:
        feed = self.cdc if self.mode == "cdc" else None
        if feed is not None and feed.is_the_dataset:
            raise ValueError(
                "a change_table feed of a SQL table needs `change_table` (schema.table): the "
                "table of its events"
            )
        return self

    @property
    def qualified_name(self) -> str:
        """`Schema.Table` as written in the project file."""
        return f"{self.schema_name}.{self.name}" if self.schema_name else self.name

    @property
    def partition_column(self) -> str | None:
        """The table's partition column."""
        return self.partition_column_name

    @property
    def declares_every_column(self) -> bool:
        """Listed `columns` are every column the table has (their types known at run time)."""
        return self.columns is not None and self.mode == "replace"


# ---- REST --------------------------------------------------------------------------------------

FIELD_TYPE = re.compile(
    r"^(string|json|bool|date|timestamp|timestamp_tz|int8|int16|int32|int64|float32|float64"
    r"|decimal\((\d{1,2}),\s*(\d{1,2})\))$"
)
FIELD_TYPES_HELP = (
    "string, json, bool, date, timestamp, timestamp_tz, int8, int16, int32, int64, "
    "float32, float64, decimal(p,s)"
)


def _secret(value: str | None, key: str) -> str | None:
    if value is not None and env_reference(value) is None:
        raise ValueError(f"{key} must come from the environment: write {key}: ${{MY_SECRET}}")
    return value


class _PaginationBase(Spec):
    max_pages: int = Field(
        10_000, gt=0, description="Stop with an error past this many pages (a runaway API)."
    )


class OffsetPagination(_PaginationBase):
    """`?offset=&limit=`; the total from a body field or header, else stop at a short page."""

    type: Literal["offset"] = "offset"
    limit: int = Field(100, gt=0, description="Records per page.")
    offset_param: str = "offset"
    limit_param: str = "limit"
    start_offset: int = Field(0, ge=0, description="Offset of the first record (0 or 1).")
    total_path: str | None = Field(None, description="Body field with the total, e.g. `total`.")
    total_header: str | None = Field(None, description="Header with the total: X-Total-Count.")
    has_more_path: str | None = Field(None, description="Body flag that says more pages exist.")


class PagePagination(_PaginationBase):
    """`?page=&page_size=`; stops at the total, the page count, a flag or a short page."""

    type: Literal["page"] = "page"
    size: int = Field(100, gt=0, description="Records per page.")
    page_param: str = "page"
    size_param: str = "page_size"
    first_page: int = Field(1, ge=0)
    total_path: str | None = None
    total_header: str | None = None
    total_pages_path: str | None = None
    has_more_path: str | None = None


class CursorPagination(_PaginationBase):
    """A token from each response is sent back as a parameter until it is empty."""

    type: Literal["cursor"] = "cursor"
    cursor_param: str = "cursor"
    cursor_path: str = Field("next_cursor", description="Body field with the next token.")
    has_more_path: str | None = None


class LinkHeaderPagination(_PaginationBase):
    """RFC 8288 `Link: <url>; rel="next"` headers."""

    type: Literal["link_header"] = "link_header"
    rel: str = "next"


class NextUrlPagination(_PaginationBase):
    """The next page's URL in a body field."""

    type: Literal["next_url"] = "next_url"
    next_path: str = Field("next", description="Body field with the next page's URL.")


Pagination = (
    OffsetPagination | PagePagination | CursorPagination | LinkHeaderPagination | NextUrlPagination
)
PaginationSpec = Annotated[Pagination, Field(discriminator="type")]


class BasicAuth(Spec):
    """HTTP basic authentication."""

    type: Literal["basic"] = "basic"
    username: str
    password: str

    @field_validator("password")
    @classmethod
    def _password(cls, value: str) -> str | None:
        return _secret(value, "password")


class BearerAuth(Spec):
    """`Authorization: Bearer <token>`."""

    type: Literal["bearer"] = "bearer"
    token: str

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str | None:
        return _secret(value, "token")


class ApiKeyAuth(Spec):
    """An API key in a header or a query parameter."""

    type: Literal["api_key"] = "api_key"
    name: str = Field("X-API-Key", description="Header or query parameter name.")
    value: str
    location: Literal["header", "query"] = "header"

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str | None:
        return _secret(value, "value")


class OAuth2ClientCredentials(Spec):
    """OAuth2 client credentials: a token fetched, then refreshed on expiry or a 401."""

    type: Literal["oauth2_client_credentials"] = "oauth2_client_credentials"
    token_url: str
    client_id: str
    client_secret: str
    scope: str | None = None
    credentials_in: Literal["body", "basic"] = Field(
        "body", description="Send the client credentials in the form body or as basic auth."
    )

    @field_validator("client_secret")
    @classmethod
    def _client_secret(cls, value: str) -> str | None:
        return _secret(value, "client_secret")


AuthSpec = Annotated[
    BasicAuth | BearerAuth | ApiKeyAuth | OAuth2ClientCredentials, Field(discriminator="type")
]


class RetrySpec(Spec):
    """Retries on 429, 5xx, dropped connections and timeouts: bounded in count and time."""

    max_attempts: int = Field(
        5, ge=1, le=20, description="Attempts per request, the first included."
    )
    backoff_seconds: float = Field(0.5, gt=0, description="First backoff; doubles each attempt.")
    max_backoff_seconds: float = Field(30.0, gt=0, description="Longest single wait.")
    max_elapsed_seconds: float = Field(300.0, gt=0, description="Give up on a request after this.")


class TimeoutSpec(Spec):
    """Per-request timeouts in seconds."""

    connect: float = Field(10.0, gt=0)
    read: float = Field(60.0, gt=0)


DEFAULT_RESPONSE_DEADLINE_SECONDS = 300.0
DEFAULT_MAX_RESPONSE_BYTES = 256 * 1024 * 1024


def _origin_text(value: str) -> str:
    """`scheme://host[:port]` in lower case, or ValueError: what `allowed_origins` lists."""
    match = re.fullmatch(r"(https?)://([^/?#@:\s]+)(?::(\d{1,5}))?/?", value.strip(), re.I)
    if match is None:
        raise ValueError(
            f"allowed origin '{value}' must be scheme://host[:port] with http or https and no "
            "path, query or user, e.g. https://files.example.com"
        )
    scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
    default = {"http": 80, "https": 443}[scheme]
    return f"{scheme}://{host}:{int(port) if port else default}"


class OrderBySpec(Spec):
    """A stable sort the API is asked for, and checked on: pages taken from a list in a fixed
    order cannot shuffle records between pages while other records change."""

    field: str = Field(
        description="Record field the API sorts by, e.g. `id` (best a unique, immutable key)."
    )
    param: str = Field("sort", description="Query parameter that asks for the order.")
    value: str | None = Field(
        None, description="Value of that parameter, e.g. `id` or `+id`; default: the field."
    )
    descending: bool = Field(False, description="The API sorts from the highest value down.")


class StreamSpec(DatasetSpec):
    """One API endpoint: becomes one asset, partitioned by day on `partition_field`."""

    name: str = Field(description="Stream name, e.g. `SalesOrderHeader`.")
    path: str = Field(description="Endpoint path below base_url, e.g. `/api/SalesOrderHeader`.")
    records_path: str = Field(
        "", description="Dot path of the record list in the body; empty: the body is the list."
    )
    params: dict[str, str] = Field(
        default_factory=dict,
        description="Query parameters; `{start}`, `{end}`, `{end_inclusive}` (with an optional "
        "strftime format, `{start:%Y-%m-%d}`) select the partition window.",
    )
    changes_params: dict[str, str] = Field(
        default_factory=dict,
        description="merge: query parameters added to `params` when a run asks for the records "
        "changed since the cursor (`{since}`: the last run's highest cursor_column value, "
        "moved back by `lookback`; a time takes a strftime format, `{since:%Y-%m-%d}`). The "
        "first run and a full refresh send `params` alone and read every record.",
    )
    partition_field: str | None = Field(
        None, description="Record field that assigns a record to its day, e.g. `ModifiedDate`."
    )
    pagination: PaginationSpec | None = Field(None, description="Override the source's.")
    fields: dict[str, str] | None = Field(
        None,
        description=f"Declared schema, field -> type ({FIELD_TYPES_HELP}); default: inferred.",
    )
    on_invalid: Literal["fail", "quarantine"] = Field(
        "fail",
        description="A record that does not fit the schema fails the run, or goes to the "
        "`<stream>_rejected` table with the reason.",
    )
    outside_window: Literal["fail", "drop"] = Field(
        "fail",
        description="A record whose partition_field is outside the requested window (the API "
        "misread the window parameters) fails the run (`fail`), or is dropped and counted "
        "(`drop`, for an API known to ignore the filter).",
    )
    order_by: OrderBySpec | None = Field(
        None,
        description="Ask the API for a stable order (`{field: id, param: sort}`) and check "
        "that pages come in it; default: the API's own order.",
    )
    max_restarts: int = Field(
        2,
        ge=0,
        le=10,
        description="Times a window's pagination starts over from its first page when its pages "
        "contradict each other (a moving total, a short or repeated page, a key seen twice); "
        "then the run fails. Nothing is written before the window's pages agree.",
    )
    allowed_origins: tuple[str, ...] = Field(
        (),
        description="Other origins (`https://files.example.com`) a redirect or next-page link "
        "may lead to; they are sent no credential, no API key and no cookie. A link to any "
        "other origin fails the run.",
    )
    response_deadline_seconds: float | None = Field(
        None, gt=0, description="Override the source's response_deadline_seconds."
    )
    max_response_bytes: int | None = Field(
        None, gt=0, description="Override the source's max_response_bytes."
    )

    @field_validator("fields")
    @classmethod
    def _field_types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for name, kind in (value or {}).items():
            match = FIELD_TYPE.match(kind)
            if not match:
                raise ValueError(
                    f"field {name}: unknown type '{kind}'; use one of {FIELD_TYPES_HELP}"
                )
            if match.group(2) and not 0 <= int(match.group(3)) <= int(match.group(2)) <= 38:
                raise ValueError(f"field {name}: {kind} needs 1 <= p <= 38 and 0 <= s <= p")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_origin_text(origin) for origin in value)

    @property
    def record_key(self) -> tuple[str, ...]:
        """What names one record of the stream: its primary key, and a cdc stream's sequence
        (the stream holds several events of a key)."""
        if self.mode == "cdc" and self.cdc is not None:
            return tuple(dict.fromkeys([*self.primary_key, *self.cdc.sequence]))
        return self.primary_key

    @property
    def change_field(self) -> str | None:
        """The field a merge or cdc stream's cursor is the highest value of (a cdc stream's
        first sequence field)."""
        if self.mode == "cdc" and self.cdc is not None:
            return self.cdc.sequence[0] if self.cdc.sequence else None
        return self.cursor_column

    @model_validator(mode="after")
    def _stream_modes(self) -> StreamSpec:
        if self.mode == "cdc" and self.cdc is not None and not self.cdc.is_the_dataset:
            raise ValueError(
                "a REST stream's change feed is the stream itself: `cdc: {feed: change_table}` "
                "with its operation_column and sequence_by, and no `change_table`"
            )
        if self.changes_params and self.change_field is None:
            raise ValueError(
                "changes_params ask the API for the records changed since the cursor: they "
                "need `mode: merge` with `cursor_column`, or `mode: cdc`"
            )
        if self.mode == "cdc" and not self.changes_params:
            raise ValueError(
                "a cdc stream needs `changes_params`: the query parameters that ask the API for "
                "the events past the cursor (the last sequence applied), e.g. "
                "{after: '{since}'}"
            )
        if self.mode == "merge" and self.cursor_column and not self.changes_params:
            raise ValueError(
                f"a merge stream with cursor_column {self.cursor_column} needs `changes_params`: "
                "the query parameters that ask the API for the records changed since the "
                "cursor, e.g. {modified_since: '{since}'} (without them every run would read "
                "every record: then remove cursor_column)"
            )
        if self.key_scan_cron is not None:
            raise ValueError(
                "key_scan_cron reads a table's keys alone, which a REST API cannot; a full "
                "refresh (run tag ingest/full_refresh=true) finds the deleted records"
            )
        cursor = self.change_field
        if self.fields is not None and cursor not in (None, *self.fields):
            raise ValueError(f"the cursor field {cursor} is not among the declared fields")
        return self

    @model_validator(mode="after")
    def _partition_field_declared(self) -> StreamSpec:
        if (
            self.fields is not None
            and self.partition_field
            and self.partition_field not in self.fields
        ):
            raise ValueError(
                f"partition_field '{self.partition_field}' is not among the declared fields"
            )
        if self.fields is not None and self.order_by and self.order_by.field not in self.fields:
            raise ValueError(
                f"order_by field '{self.order_by.field}' is not among the declared fields"
            )
        return self

    @property
    def qualified_name(self) -> str:
        """The stream's name."""
        return self.name

    @property
    def origin(self) -> str:
        """`stream `Orders` (GET /v1/orders)`."""
        return f"stream `{self.name}` (GET {self.path})"

    @property
    def declares_every_column(self) -> bool:
        """Declared `fields` are every column the stream has."""
        return self.fields is not None and self.mode == "replace"

    @property
    def partition_column(self) -> str | None:
        """The record field that assigns the day."""
        return self.partition_field


IoManagerName = Literal["delta", "databricks", "iceberg", "postgres"]


class SourceSpecBase(Spec):
    """What every source kind's spec has: its `type`, partition defaults and ownership."""

    type: str = Field(description="The source kind (`sql`, `rest`, ...), from the registry.")

    start_date: datetime.date | None = Field(
        None, description="Default first partition of the source's tables or streams."
    )
    end_date: datetime.date | None = Field(
        None,
        description="Day after the last partition (exclusive), for a source that stopped; "
        "default: partitions run up to today.",
    )
    timezone: str = Field("UTC", description="IANA zone in which the source's days begin.")
    max_partitions_per_run: int | None = Field(
        None,
        gt=0,
        description="Split backfills into runs of at most this many days; default one run.",
    )
    owners: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    sensor: SensorSpec = Field(default_factory=SensorSpec)
    freshness: FreshnessSpec | None = Field(
        None,
        description="Dagster freshness policy of every table or stream: `{type: time_window, "
        "fail_after: 26h}` or `{type: cron, deadline_cron: '0 6 * * *', lower_bound: 24h}`.",
    )
    automation: AutomationSpec | None = Field(
        None, description="Automation condition of every table or stream: `{on_cron: ...}`."
    )
    io_manager: IoManagerName | None = Field(
        None,
        description="`delta`, `databricks`, `iceberg` or `postgres`; default: the lake's "
        "`io_manager`.",
    )

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        return _valid_zone(value)

    @property
    def datasets(self) -> tuple[DatasetSpec, ...]:
        """The source's tables or streams."""
        raise NotImplementedError

    @property
    def asset_kind(self) -> str:
        """The kind the UI shows on the source's assets (`sqlserver`, `postgres`, `rest`, ...)."""
        return self.type

    def _check_datasets(self, kind: str) -> None:
        seen: dict[str, int] = {}
        asset_names: dict[str, int] = {}
        for index, dataset in enumerate(self.datasets):
            qualified = dataset.qualified_name.lower()
            if qualified in seen:
                raise ValueError(
                    f"{kind}[{index}] repeats '{dataset.qualified_name}' of "
                    f"{kind}[{seen[qualified]}]: list each one once"
                )
            seen[qualified] = index
            if dataset.key_name in asset_names:
                raise ValueError(
                    f"{kind}[{index}] and {kind}[{asset_names[dataset.key_name]}] would both be "
                    f"asset '{dataset.key_name}': give one of them an asset_name"
                )
            asset_names[dataset.key_name] = index
            start = dataset.start_date or self.start_date
            if dataset.partition_column and self.end_date and start and start >= self.end_date:
                raise ValueError(
                    f"{kind}[{index}] ('{dataset.qualified_name}') starts on {start}, not before "
                    f"the source's end_date {self.end_date}: move start_date or end_date"
                )
            if dataset.partition_column and not start:
                raise ValueError(
                    f"{kind}[{index}] ('{dataset.qualified_name}') is partitioned but has no "
                    "start_date: set start_date on it or on the source"
                )

    def freshness_of(self, dataset: DatasetSpec) -> FreshnessSpec | None:
        """The dataset's freshness: its own (`null` for none), else the one its deprecated
        `checks.freshness` stands for, else the source's."""
        if "freshness" in dataset.model_fields_set:
            return dataset.freshness
        legacy = dataset.checks.freshness
        if legacy.enabled:
            return TimeWindowFreshnessSpec(fail_after=legacy_freshness_window(legacy))
        return self.freshness

    def automation_of(self, dataset: DatasetSpec) -> AutomationSpec | None:
        """The dataset's automation: its own, else the source's; None when it has no on_cron."""
        automation = dataset.automation if dataset.automation is not None else self.automation
        return automation if automation is not None and automation.on_cron else None

    def start_date_of(self, dataset: DatasetSpec) -> datetime.date:
        """The dataset's first partition day."""
        start = dataset.start_date or self.start_date
        if start is None:
            raise ValueError(f"{dataset.qualified_name} has no start_date")
        return start


SQL_KINDS = {
    "mssql": "sqlserver",
    "postgresql": "postgres",
    "mysql": "mysql",
    "mariadb": "mariadb",
    "sqlite": "sqlite",
}


class SqlSourceSpec(SourceSpecBase):
    """A relational database read through SQLAlchemy; every table becomes an asset."""

    type: Literal["sql"] = "sql"
    connection: ConnectionSpec
    tables: tuple[TableSpec, ...] = Field(min_length=1)
    batch_size: int = Field(
        50_000, gt=0, le=10_000_000, description="Rows per Arrow record batch (bounds memory)."
    )
    fast_path: bool = Field(
        True,
        description="Read through the driver's bulk path where it is exact (PostgreSQL COPY, "
        "ODBC bulk fetch through arrow-odbc); false reads row batches through SQLAlchemy.",
    )
    connect_timeout: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="Seconds to wait for a connection (and the server's greeting) before the "
        "run fails.",
    )
    statement_timeout: float | None = Field(
        None,
        gt=0,
        description="Seconds the server lets one statement run before cancelling it "
        "(PostgreSQL statement_timeout, MariaDB max_statement_time, MySQL max_execution_time, "
        "ODBC query timeout); default none: a backfill's long query is fine while rows flow, "
        "which read_stall_timeout watches.",
    )
    read_stall_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a read may go without a batch of rows arriving before the run "
        "fails and the connection is closed (a source that stopped sending but keeps the "
        "connection open). Raise it for a query that takes long before its first rows.",
    )
    tcp_keepalive: int = Field(
        60,
        gt=0,
        le=7200,
        description="Seconds of silence after which TCP keepalive probes check that the server "
        "is still there (PostgreSQL through libpq, MariaDB/MySQL through PyMySQL).",
    )
    tinyint1_as_bool: bool = Field(
        True,
        description="MySQL/MariaDB: TINYINT(1) columns (what BOOLEAN and BOOL are stored as) "
        "land as booleans, as PostgreSQL's boolean and SQL Server's bit do; a value other than "
        "0 or 1 in one fails the run. false lands them as numbers (int8); a table may override "
        "it.",
    )

    @property
    def datasets(self) -> tuple[DatasetSpec, ...]:
        """The source's tables."""
        return self.tables

    @property
    def asset_kind(self) -> str:
        """`sqlserver`, `postgres`, `mysql`, ... from the driver (`sql` when it is in a secret)."""
        driver = self.connection.drivername or self.connection.url or ""
        return SQL_KINDS.get(driver.split("+")[0].split(":")[0], "sql")

    @model_validator(mode="after")
    def _tables(self) -> SqlSourceSpec:
        self._check_datasets("tables")
        return self


class RestSourceSpec(SourceSpecBase):
    """A REST API; every stream becomes an asset."""

    type: Literal["rest"] = "rest"
    base_url: str = Field(description="e.g. https://api.example.com; may be ${VAR}.")
    auth: AuthSpec | None = None
    headers: dict[str, str] = Field(default_factory=dict, description="Sent with every request.")
    pagination: PaginationSpec = Field(
        default_factory=OffsetPagination, description="Default pagination of the streams."
    )
    timeout: TimeoutSpec = Field(default_factory=TimeoutSpec)
    retries: RetrySpec = Field(default_factory=RetrySpec)
    parallel_requests: int = Field(
        4, ge=1, le=32, description="Pages fetched at once when the total is known."
    )
    batch_size: int = Field(10_000, gt=0, description="Records per Arrow record batch.")
    response_deadline_seconds: float = Field(
        DEFAULT_RESPONSE_DEADLINE_SECONDS,
        gt=0,
        description="Whole-response deadline of one request, headers and body (a server that "
        "drips its body is cut off here; the read timeout only bounds each wait for bytes). "
        "A request past it is retried within `retries`. Default 300 s.",
    )
    max_response_bytes: int = Field(
        DEFAULT_MAX_RESPONSE_BYTES,
        gt=0,
        description="Largest body one response may have, decoded (default 256 MiB); a larger "
        "one fails the run: use smaller pages or raise it.",
    )
    streams: tuple[StreamSpec, ...] = Field(min_length=1)

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        _check_reference_syntax(value)
        if env_reference(value) is None and not re.match(r"^https?://", value):
            raise ValueError(f"base_url '{value}' must start with http:// or https://")
        return value

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if "${" in item or name.lower() in CREDENTIAL_HEADERS:
                raise ValueError(
                    f"header {name}: headers are sent and logged as they are; put credentials "
                    "in `auth` (bearer, api_key, ...), whose secrets come from the environment"
                )
        return value

    @property
    def datasets(self) -> tuple[DatasetSpec, ...]:
        """The source's streams."""
        return self.streams

    @model_validator(mode="after")
    def _streams(self) -> RestSourceSpec:
        self._check_datasets("streams")
        # each stream carries its pagination and limits, so a stream spec alone says how to read it
        streams = tuple(
            stream.model_copy(
                update={
                    "pagination": stream.pagination or self.pagination,
                    "response_deadline_seconds": stream.response_deadline_seconds
                    or self.response_deadline_seconds,
                    "max_response_bytes": stream.max_response_bytes or self.max_response_bytes,
                }
            )
            for stream in self.streams
        )
        object.__setattr__(self, "streams", streams)
        return self


class MaintenanceSpec(Spec):
    """Table maintenance: compaction, vacuum and checkpoint of every table, on a schedule."""

    enabled: bool = True
    cron: str = Field(
        "30 4 * * 0", description="When the maintenance job runs (cron, in `timezone`)."
    )
    timezone: str = Field("UTC", description="IANA zone of the cron expression.")
    compact: bool = Field(
        True, description="Merge each month's small files into files of `target_file_size`."
    )
    vacuum_retention_hours: int = Field(
        168,
        ge=0,
        description="Delete files unreferenced for longer than this (replaced files, and files "
        "a killed run left behind). Keep it above the longest run: a running write's files are "
        "unreferenced until it commits.",
    )
    checkpoint: bool = Field(True, description="Write a checkpoint of the table's log.")

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return _valid_zone(value)

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return ScheduleSpec._cron(value)


UC_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")


class DatabricksSpec(Spec):
    """Unity Catalog target: a SQL warehouse commits what is staged on a volume."""

    host: str = Field(
        description="Workspace URL, e.g. https://adb-123.azuredatabricks.net; may be ${VAR}."
    )
    token: str = Field(description="Personal access token: always a `${VAR}` reference.")
    warehouse_id: str = Field(description="SQL warehouse that runs the commit statements.")
    catalog: str = Field(description="Unity Catalog catalog of the tables and the volume.")
    schema_name: str = Field(alias="schema", description="Schema of the tables and the volume.")
    volume: str = Field(description="Volume where Parquet files are staged during a run.")
    rows_per_file: int = Field(500_000, gt=0, description="Rows per staged Parquet file.")
    poll_interval_seconds: float = Field(
        2.0, gt=0, description="Pause between polls of a running SQL statement."
    )

    @field_validator("host", "warehouse_id")
    @classmethod
    def _references(cls, value: str) -> str:
        return _check_reference_syntax(value)

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str | None:
        return _secret(value, "token")

    @field_validator("catalog", "schema_name", "volume")
    @classmethod
    def _names(cls, value: str) -> str:
        if not UC_NAME.match(value):
            raise ValueError(
                f"'{value}' is not a plain Unity Catalog name: use letters, digits, _ and -"
            )
        return value


def _url_without_password(value: str, key: str) -> str:
    """A URL that holds no literal password: `${VAR}` for the whole URL, or one without it."""
    _check_reference_syntax(value)
    if env_reference(value) is None and re.match(r"^[^:/]+://[^/@]*:[^/@]*@", value):
        raise ValueError(
            f"the {key} holds a password: put the whole URL in an environment variable and "
            f"write {key}: ${{WAREHOUSE_URL}}"
        )
    return value


class IcebergSpec(Spec):
    """Apache Iceberg tables in a SQL catalog (pyiceberg): one snapshot per run."""

    catalog_uri: str = Field(
        description="A SQL catalog's SQLAlchemy URL: sqlite:///.data/iceberg/catalog.db on one "
        "machine, a PostgreSQL URL (as ${VAR} when it holds a password) for a shared one; or a "
        "REST catalog's http(s):// URI."
    )
    warehouse: str = Field(
        ".data/iceberg",
        description="Folder or object-store URI of the tables' files (a REST catalog is asked "
        "for this warehouse: a location or a name it knows).",
    )
    token: str | None = Field(
        None, description="A REST catalog's bearer token: always a `${VAR}` reference."
    )
    namespace: str = Field("ingest", description="The catalog namespace of the tables.")
    partition_by: Literal["day", "month"] = Field(
        "day", description="The tables' partitioning: day or month of `_partition_date`."
    )
    rows_per_file: int = Field(
        1_000_000,
        gt=0,
        description="Rows a run holds before it writes them out as data files: bounds its memory.",
    )

    @field_validator("catalog_uri")
    @classmethod
    def _catalog_uri(cls, value: str) -> str:
        return _url_without_password(value, "catalog_uri")

    @field_validator("token")
    @classmethod
    def _token(cls, value: str | None) -> str | None:
        return _secret(value, "token")

    @field_validator("warehouse")
    @classmethod
    def _warehouse(cls, value: str) -> str:
        return _check_reference_syntax(value)


class PostgresTargetSpec(Spec):
    """Tables in a PostgreSQL database: COPY into a staging table, swapped in one transaction."""

    url: str = Field(
        description="postgresql://user@host:5432/db, or ${VAR} holding a URL with its password."
    )
    schema_name: str = Field("ingest", alias="schema", description="The tables' schema.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _url_without_password(value, "url")

    @field_validator("schema_name")
    @classmethod
    def _schema(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", value):
            raise ValueError(f"'{value}' is not a plain PostgreSQL schema name: use a-z, 0-9, _")
        return value


class LakeSpec(Spec):
    """Where Delta tables live: a local folder or an object-store URI, or Unity Catalog."""

    root: str = Field(".data/lake", description="Folder or s3:// / az:// / gs:// URI.")
    storage_options: dict[str, str] = Field(
        default_factory=dict, description="delta-rs storage options; values may be ${VAR}."
    )
    maintenance: MaintenanceSpec = Field(default_factory=MaintenanceSpec)
    io_manager: IoManagerName = Field(
        "delta",
        description="Default writer: `delta` (delta-rs, under root), `databricks`, `iceberg` or "
        "`postgres`.",
    )
    databricks: DatabricksSpec | None = Field(
        None, description="Unity Catalog settings, needed when any source writes to databricks."
    )
    iceberg: IcebergSpec | None = Field(
        None, description="Iceberg catalog settings, needed when any source writes to iceberg."
    )
    postgres: PostgresTargetSpec | None = Field(
        None, description="The PostgreSQL warehouse, needed when any source writes to postgres."
    )

    @field_validator("storage_options")
    @classmethod
    def _options(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            _check_reference_syntax(item)
        return value


class ExpectationSpec(Spec):
    """A data-quality rule on each row a layer produces, and what a violation does."""

    name: str = Field(description="snake_case; the asset check's name.")
    sql: str = Field(
        description="A boolean SQL expression over the layer's output columns; a row violates "
        "it when it is false (NULL passes, as in SQL CHECK constraints and Databricks' "
        "expectations: write `x IS NOT NULL AND ...` to require a value)."
    )
    on_violation: Literal["warn", "drop", "fail"] = Field(
        "warn",
        description="warn: keep the row, count it; drop: keep it out of the table, in "
        "`<asset>_quarantine` with the failed expectations' names; fail: commit nothing.",
    )
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _snake(cls, value: str) -> str:
        if not SNAKE_CASE.match(value):
            raise ValueError(
                f"expectation name '{value}' must be snake_case (it becomes the asset check's "
                f"name), e.g. '{snake_case(value) or 'valid_rows'}'"
            )
        return value


class LayerAutomationSpec(Spec):
    """When a layer asset runs by itself (Dagster's automation sensor evaluates it)."""

    on_cron: str | None = Field(
        None,
        description="Materialize the last complete day at each tick instead of following the "
        "inputs' days.",
    )
    timezone: str | None = Field(None, description="Zone of on_cron; default: the layer's.")

    @field_validator("on_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        return None if value is None else _valid_cron(value)


def _input_map(value: Any) -> Any:
    """`inputs: [src/table, ...]` names each input by the key's last part."""
    if isinstance(value, list | tuple):
        return {str(key).rsplit("/", 1)[-1]: key for key in value}
    return value


class LayerSpec(Spec):
    """A silver or gold asset: a SQL SELECT over ingested tables or other layers, by name, with
    expectations, written like an ingested table (the run's days replaced, or merged by key)."""

    key: str = Field(description="Asset key, parts joined by `/`: `silver/sales_orders`.")
    group: str | None = Field(None, description="Asset group; default: the key's first part.")
    description: str | None = None
    owners: tuple[str, ...] = ()
    tags: dict[str, str] = Field(default_factory=dict)
    inputs: Annotated[dict[str, str], BeforeValidator(_input_map)] = Field(
        description="The tables the SQL reads, `name: asset/key` (or a list of keys, each named "
        "by its last part): ingested tables or other layers."
    )
    sql: str = Field(description="One SELECT (DuckDB's dialect) over the inputs by name.")
    partitioning: Literal["daily", "unpartitioned"] = Field(
        "daily",
        description="daily: a run reads its days of each daily input (unpartitioned inputs "
        "whole) and replaces those days; unpartitioned: every run rebuilds the whole table.",
    )
    partition_column: str = Field(
        "_partition_date",
        description="daily: the output column that holds each row's day (a date or timestamp).",
    )
    primary_key: tuple[str, ...] = Field(
        (), description="Checked unique and not null; an unpartitioned layer is merged by it."
    )
    expect: tuple[ExpectationSpec, ...] = ()
    schema_policy: Literal["evolve", "freeze"] = "evolve"
    automation: LayerAutomationSpec | None = Field(
        default_factory=LayerAutomationSpec,
        description="Default: each day runs once its inputs' same day changed (and none is "
        "still running); `on_cron` runs on a cron instead; null: only by hand or a job.",
    )
    io_manager: IoManagerName | None = Field(
        None, description="Writer of the layer; default the lake's. Its inputs share it."
    )

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        parts = value.split("/")
        if len(parts) < 2 or not all(SNAKE_CASE.match(part) for part in parts):
            raise ValueError(
                f"layer key '{value}' must be two or more snake_case parts joined by '/', "
                "e.g. 'silver/sales_orders'"
            )
        return value

    @field_validator("inputs")
    @classmethod
    def _inputs(cls, value: dict[str, str]) -> dict[str, str]:
        if not value:
            raise ValueError("a layer reads at least one input")
        for name in value:
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
                raise ValueError(f"input name '{name}' must be a plain SQL identifier")
        return value

    @model_validator(mode="after")
    def _unique_expectations(self) -> LayerSpec:
        names = [expectation.name for expectation in self.expect]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"expectation name(s) {', '.join(twice)} used twice")
        if self.primary_key and "primary_key" in names:
            raise ValueError(
                "expectation name primary_key is the primary key's own check; name it otherwise"
            )
        return self

    @property
    def asset_path(self) -> tuple[str, ...]:
        """The asset key's parts."""
        return tuple(self.key.split("/"))

    @property
    def group_name(self) -> str:
        """The asset group: `group`, else the key's first part."""
        return self.group or self.asset_path[0]


def _source_models() -> dict[str, type[SourceSpecBase]]:
    # the registry imports the specs: asked for only while a project file is validated
    from ingestion_assets.sources.base import source_kinds

    return {name: kind.spec_model for name, kind in source_kinds().items()}


def validate_sources(value: Any) -> Any:
    """Each source validated by the spec model its `type` names in the registry of source kinds;
    errors keep their key path (`erp.sql.tables[0].name`, the tag as pydantic's unions give it)."""
    if not isinstance(value, Mapping):
        return value
    models = _source_models()
    validated: dict[str, Any] = {}
    errors: list[InitErrorDetails] = []
    for name, raw in value.items():
        if not isinstance(raw, Mapping):
            validated[name] = raw
            continue
        kind = raw.get("type")
        model = models.get(kind) if isinstance(kind, str) else None
        if model is None:
            errors.append(
                InitErrorDetails(
                    type=PydanticCustomError(
                        "union_tag_invalid",
                        "unknown source type {tag}; use one of: {expected_tags}",
                        {"tag": repr(kind), "expected_tags": ", ".join(sorted(models))},
                    ),
                    loc=(name, "type"),
                    input=kind,
                )
            )
            continue
        try:
            validated[name] = model.model_validate(raw)
        except ValidationError as error:
            errors.extend(
                InitErrorDetails(
                    type=PydanticCustomError(item["type"], item["msg"], item.get("ctx")),
                    loc=(name, str(kind), *item["loc"]),
                    input=item["input"],
                )
                for item in error.errors(include_url=False)
            )
    if errors:
        raise ValidationError.from_exception_data("sources", errors)
    return validated


def _table_writer_supports(source_name: str, spec: SourceSpecBase, writer: str) -> None:
    """Refuse what only the Delta writers keep: merged and CDC tables (their key ledgers and
    history) and a files source's ledger of files."""
    if spec.type == "files":
        raise ValueError(
            f"source {source_name}: a files source keeps its ledger of files beside Delta tables; "
            f"write it with io_manager: delta (not {writer})"
        )
    for dataset in spec.datasets:
        mode = getattr(dataset, "mode", "replace")
        if mode != "replace":
            raise ValueError(
                f"source {source_name}, table {dataset.qualified_name}: mode {mode} is kept by "
                f"the Delta writers only; use io_manager: delta (or databricks) for this source, "
                f"or mode: replace"
            )


class ProjectSpec(Spec):
    """The whole project file."""

    # where each table or stream entry is in the file: (source, index) -> 1-based line, and the
    # file's path (set by project.load_project; None for text parsed without a file)
    _entry_lines: dict[tuple[str, int], int] = PrivateAttr(default_factory=dict)
    _path: str | None = PrivateAttr(default=None)

    lake: LakeSpec = Field(default_factory=LakeSpec)
    sources: dict[str, SourceSpecBase] = Field(
        min_length=1, description="Sources by name; each one's `type` picks its kind."
    )
    transforms: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Downstream assets of extension modules, by name (see definitions.py).",
    )
    layers: tuple[LayerSpec, ...] = Field(
        (),
        description="Silver and gold assets: SQL over ingested tables and other layers, with "
        "expectations (see layers/).",
    )

    @field_validator("sources", mode="before")
    @classmethod
    def _source_kinds(cls, value: Any) -> Any:
        return validate_sources(value)

    @field_validator("sources")
    @classmethod
    def _source_names(cls, value: dict[str, SourceSpecBase]) -> dict[str, SourceSpecBase]:
        for name in value:
            if not SNAKE_CASE.match(name):
                raise ValueError(
                    f"source name '{name}' must be snake_case (it becomes the asset key prefix "
                    f"and folder), e.g. '{snake_case(name) or 'erp'}'"
                )
        return value

    def entry_location(self, source_name: str, dataset: DatasetSpec) -> tuple[str, int] | None:
        """The project file and line of a table's or stream's entry; None when not known."""
        if self._path is None:
            return None
        index = self.sources[source_name].datasets.index(dataset)
        line = self._entry_lines.get((source_name, index))
        return None if line is None else (self._path, line)

    def layer_location(self, layer: LayerSpec) -> tuple[str, int] | None:
        """The project file and line of a layer's entry; None when not known."""
        if self._path is None:
            return None
        line = self._entry_lines.get(("", self.layers.index(layer)))
        return None if line is None else (self._path, line)

    def io_manager_of(self, source_name: str) -> IoManagerName:
        """The writer of a source's tables: its own `io_manager`, else the lake's."""
        return self.sources[source_name].io_manager or self.lake.io_manager

    @model_validator(mode="after")
    def _reconciled_assets(self) -> ProjectSpec:
        keys = {
            f"{name}/{dataset.key_name}"
            for name, source in self.sources.items()
            for dataset in source.datasets
        }
        for name, source in self.sources.items():
            for dataset in source.datasets:
                other = dataset.checks.reconcile_with
                if other is None:
                    continue
                where = f"sources.{name}.{dataset.key_name}.checks.reconcile_with"
                if other.asset not in keys:
                    raise ValueError(
                        f"{where}: no asset '{other.asset}' in the project; use one of: "
                        f"{', '.join(sorted(keys - {f'{name}/{dataset.key_name}'}))}"
                    )
                if other.asset == f"{name}/{dataset.key_name}":
                    raise ValueError(f"{where}: an asset cannot be reconciled with itself")
                if other.keys and not dataset.primary_key:
                    raise ValueError(
                        f"{where}: keys: true compares primary keys, but the table declares "
                        "none; add primary_key or set keys: false"
                    )
        return self

    @model_validator(mode="after")
    def _layer_graph(self) -> ProjectSpec:
        if self.layers:
            # the graph module parses SQL (sqlglot): imported only when a project has layers
            from ingestion_assets.layers.graph import check_layers

            check_layers(self)
        return self

    def layer_writer(self, layer: LayerSpec) -> IoManagerName:
        """The writer of a layer: its own `io_manager`, else the lake's."""
        return layer.io_manager or self.lake.io_manager

    @model_validator(mode="after")
    def _databricks_settings(self) -> ProjectSpec:
        users = [name for name in self.sources if self.io_manager_of(name) == "databricks"]
        if users and self.lake.databricks is None:
            raise ValueError(
                f"source(s) {', '.join(users)} write to databricks but lake.databricks is not "
                "set: add lake: {databricks: {host: ${DATABRICKS_HOST}, token: "
                "${DATABRICKS_TOKEN}, warehouse_id: ..., catalog: ..., schema: ..., volume: ...}}"
            )
        for writer, example in (
            (
                "iceberg",
                "{catalog_uri: sqlite:///.data/iceberg/catalog.db, warehouse: .data/iceberg}",
            ),
            ("postgres", "{url: ${WAREHOUSE_URL}, schema: ingest}"),
        ):
            users = [name for name in self.sources if self.io_manager_of(name) == writer]
            if users and getattr(self.lake, writer) is None:
                raise ValueError(
                    f"source(s) {', '.join(users)} write to {writer} but lake.{writer} is not "
                    f"set: add lake: {{{writer}: {example}}}"
                )
            for name in users:
                _table_writer_supports(name, self.sources[name], writer)
        return self
