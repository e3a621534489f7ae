"""Dagster resources of the source kinds: settings as config, the Source opened lazily in a run.

`SourceResource` has the methods of the `Source` interface (read, count, changed days) and is what
the factory, the checks and the sensors talk to; each kind's subclass holds that kind's settings
(secrets as EnvVars, resolved when a run starts) and opens its Source on first use, once per run
process, closing it when the run's step is done.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import sqlalchemy as sa
from dagster import Config, ConfigurableResource, InitResourceContext, get_dagster_logger
from pydantic import Field, PrivateAttr

from ingestion_assets.project import config_value
from ingestion_assets.sources.base import ChangedDays, Finding, Source
from ingestion_assets.sources.files.spec import FilesSourceSpec
from ingestion_assets.sources.sql import SessionLimits, SqlSource, SqlTableReader, source_url
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import (
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    DatasetSpec,
    OAuth2ClientCredentials,
    Pagination,
    RestSourceSpec,
    SourceSpecBase,
    Spec,
    SqlSourceSpec,
    StreamSpec,
    TableSpec,
)


class SourceResource(ConfigurableResource):  # type: ignore[type-arg]
    """Base of every source kind's resource: the Source interface, opened lazily in a run."""

    # the kind's Source class (its declared columns are asked for while definitions load); a
    # kind whose Source is imported lazily overrides `source_type` instead
    source_class: ClassVar[type[Source]]

    source_name: str = Field(description="The source's name in the project file.")

    _source: Source | None = PrivateAttr(default=None)

    @classmethod
    def from_spec(cls, source_name: str, spec: SourceSpecBase) -> SourceResource:
        """Resource config from a spec: `${VAR}` values become EnvVars, read when a run starts."""
        raise NotImplementedError(f"{cls.__name__} does not build itself from a spec")

    @classmethod
    def source_type(cls) -> type[Source]:
        """The kind's Source class (a kind that imports it lazily overrides this)."""
        return cls.source_class

    @classmethod
    def declared_columns(cls, dataset: DatasetSpec) -> Any:
        """The columns the spec declares for `dataset`, as the kind's Source reads them."""
        return cls.source_type().declared_columns(dataset)

    def open_source(self) -> Source:
        """A new Source with this resource's (resolved) settings."""
        raise NotImplementedError(f"{type(self).__name__} does not open a source")

    def with_lake(self, root: str, storage_options: dict[str, Any]) -> SourceResource:
        """This resource, told where the Delta lake is (for a kind that reads its tables' own
        records); most kinds need not know."""
        return self

    def source(self) -> Source:
        """The run's Source, opened on first use."""
        if self._source is None:
            self._source = self.open_source()
        return self._source

    def read(self, dataset: DatasetSpec, window: PartitionWindow | None) -> SourceStream:
        """The dataset's rows in the window as Arrow batches."""
        return self.source().read(dataset, window)

    def read_changes(self, dataset: DatasetSpec, since: str | None) -> SourceStream:
        """A merge table's rows changed since the cursor (see `Source.read_changes`)."""
        return self.source().read_changes(dataset, since)

    def newest_change(self, dataset: DatasetSpec, since: str | None) -> str | None:
        """A merge table's newest cursor value past `since` (see `Source.newest_change`)."""
        return self.source().newest_change(dataset, since)

    def read_keys(self, dataset: DatasetSpec) -> SourceStream:
        """Every row's key alone (see `Source.read_keys`)."""
        return self.source().read_keys(dataset)

    def changes_applied(self, dataset: DatasetSpec, cursor: str) -> None:
        """The changes up to `cursor` are in the lake (see `Source.changes_applied`)."""
        self.source().changes_applied(dataset, cursor)

    def count(self, dataset: DatasetSpec, window: PartitionWindow | None) -> int | None:
        """The source's row count for the window (None when it cannot tell)."""
        return self.source().count(dataset, window)

    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        """Days with rows changed since the cursor (new-data sensor)."""
        return self.source().changed_days(dataset, since)

    def unreachable_rows(self, dataset: DatasetSpec) -> int | None:
        """Rows at the source no partition can reach (None when the kind cannot tell)."""
        return self.source().unreachable_rows(dataset)

    def read_unreachable(self, dataset: DatasetSpec) -> SourceStream:
        """Exactly the rows no partition can reach, as Arrow batches (for quarantine)."""
        return self.source().read_unreachable(dataset)

    def verify(self, dataset: DatasetSpec, window: PartitionWindow | None) -> list[Finding]:
        """The dataset's declared names and the source's credentials checked at the source."""
        return self.source().verify(dataset, window)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._source is not None:
            self._source.close()
            self._source = None


class SqlSourceResource(SourceResource):
    """One SQL source's connection; the engine is created on first use, never at load time."""

    source_class: ClassVar[type[Source]] = SqlSource
    # repr=False: once a run reads the EnvVars these hold secrets, and a repr ends up in logs
    url: str | None = Field(None, description="SQLAlchemy URL (no password in it).", repr=False)
    drivername: str | None = Field(None, description="SQLAlchemy driver, e.g. mssql+pyodbc.")
    host: str | None = Field(None, description="Database host.")
    port: int | None = Field(None, description="Database port.")
    username: str | None = Field(None, description="User name.")
    password: str | None = Field(
        None, description="Password, from an environment variable.", repr=False
    )
    database: str | None = Field(None, description="Database name.")
    query: dict[str, str] = Field(
        default_factory=dict,
        description="URL query options (ODBC driver, Encrypt, ...).",
        repr=False,
    )
    sqlite_attach: dict[str, str] = Field(
        default_factory=dict, description="SQLite: schema name -> database file to attach."
    )
    batch_size: int = Field(50_000, description="Rows per Arrow record batch.")
    fast_path: bool = Field(
        True, description="Use the driver's exact bulk path (PostgreSQL COPY, arrow-odbc)."
    )
    change_column: str | None = Field(
        None, description="Column the new-data sensor watches; default: the partition column."
    )
    timezone: str = Field("UTC", description="The zone in which the source's days begin.")
    connect_timeout: float = Field(
        30.0, description="Seconds to wait for a connection before the run fails."
    )
    statement_timeout: float | None = Field(
        None,
        description="Seconds the server lets one statement run (PostgreSQL statement_timeout, "
        "MariaDB max_statement_time, MySQL max_execution_time, ODBC query timeout); none: off.",
    )
    read_stall_timeout: float = Field(
        300.0,
        description="Seconds a read may go without a batch arriving before it fails and its "
        "connection is closed.",
    )
    tcp_keepalive: int = Field(
        60, description="Seconds of silence before TCP keepalive probes check the server."
    )
    tinyint1_as_bool: bool = Field(
        True,
        description="MySQL/MariaDB: TINYINT(1) (BOOLEAN) columns land as booleans; false: as "
        "numbers. Tables may override it.",
    )
    start_date: str | None = Field(
        None, description="The source's first partition day (ISO); tables may start later."
    )
    end_date: str | None = Field(
        None, description="The day after the source's last partition (ISO); none: open."
    )

    @classmethod
    def from_spec(cls, source_name: str, spec: SourceSpecBase) -> SqlSourceResource:
        """Resource config from a spec: `${VAR}` values become EnvVars, read when a run starts."""
        assert isinstance(spec, SqlSourceSpec)
        connection = spec.connection

        def optional(value: str | None) -> Any:
            return None if value is None else config_value(value)

        return cls(
            source_name=source_name,
            url=optional(connection.url),
            drivername=connection.drivername,
            host=optional(connection.host),
            port=connection.port,
            username=optional(connection.username),
            password=optional(connection.password),
            database=optional(connection.database),
            query={key: config_value(value) for key, value in connection.query.items()},
            sqlite_attach=dict(connection.sqlite_attach),
            batch_size=spec.batch_size,
            fast_path=spec.fast_path,
            change_column=spec.sensor.change_column,
            timezone=spec.timezone,
            connect_timeout=spec.connect_timeout,
            statement_timeout=spec.statement_timeout,
            read_stall_timeout=spec.read_stall_timeout,
            tcp_keepalive=spec.tcp_keepalive,
            tinyint1_as_bool=spec.tinyint1_as_bool,
            start_date=spec.start_date.isoformat() if spec.start_date else None,
            end_date=spec.end_date.isoformat() if spec.end_date else None,
        )

    def limits(self) -> SessionLimits:
        """The source's timeouts and keepalive."""
        return SessionLimits(
            connect_timeout=self.connect_timeout,
            statement_timeout=self.statement_timeout,
            read_stall_timeout=self.read_stall_timeout,
            tcp_keepalive=self.tcp_keepalive,
        )

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """Check the resolved URL as a run starts (the earliest it is known; nothing connects)."""
        self.sqlalchemy_url()

    def sqlalchemy_url(self) -> sa.URL:
        """The URL to connect with, password included (render it only with hide_password)."""
        if self.url is not None:
            url = source_url(self.url, self.source_name)
            if self.password is not None:
                url = url.set(password=self.password)
            return url.update_query_dict(self.query) if self.query else url
        return sa.URL.create(
            drivername=self.drivername or "",
            username=self.username,
            password=self.password,
            host=self.host,
            port=self.port,
            database=self.database,
            query=self.query,
        )

    def open_source(self) -> SqlSource:
        """The database as a Source (its engine is created on first use)."""
        return SqlSource(
            self.source_name,
            self.sqlalchemy_url(),
            self.sqlite_attach,
            self.batch_size,
            fast_path=self.fast_path,
            change_column=self.change_column,
            timezone=self.timezone,
            limits=self.limits(),
            tinyint1_as_bool=self.tinyint1_as_bool,
            start_date=datetime.date.fromisoformat(self.start_date) if self.start_date else None,
            end_date=datetime.date.fromisoformat(self.end_date) if self.end_date else None,
        )

    def engine(self) -> sa.Engine:
        """The source's engine, created once per run process."""
        source = self.source()
        assert isinstance(source, SqlSource)
        return source.engine

    def reader(self, table: TableSpec) -> SqlTableReader:
        """A reader for one of the source's tables."""
        source = self.source()
        assert isinstance(source, SqlSource)
        return source.reader(table)


class BasicAuthConfig(Config):
    """HTTP basic authentication."""

    type: Literal["basic"] = Field(default="basic", description="The kind of authentication.")
    username: str = Field(description="User name.")
    password: str = Field(description="Password, from an environment variable.", repr=False)


class BearerAuthConfig(Config):
    """A static bearer token."""

    type: Literal["bearer"] = Field(default="bearer", description="The kind of authentication.")
    token: str = Field(description="Bearer token, from an environment variable.", repr=False)


class ApiKeyAuthConfig(Config):
    """An API key in a header or a query parameter."""

    type: Literal["api_key"] = Field(default="api_key", description="The kind of authentication.")
    name: str = Field(default="X-API-Key", description="Header or query parameter name.")
    value: str = Field(description="The API key, from an environment variable.", repr=False)
    location: Literal["header", "query"] = Field(
        default="header", description="Send the key in a header or as a query parameter."
    )


class OAuth2ClientCredentialsConfig(Config):
    """OAuth2 client credentials: a token fetched on first use, refreshed before it expires."""

    type: Literal["oauth2_client_credentials"] = Field(
        default="oauth2_client_credentials", description="The kind of authentication."
    )
    # repr=False: the token endpoint's URL may carry credentials of its own
    token_url: str = Field(description="OAuth2 token endpoint.", repr=False)
    client_id: str = Field(description="OAuth2 client id.")
    client_secret: str = Field(
        description="OAuth2 client secret, from an environment variable.", repr=False
    )
    scope: str | None = Field(default=None, description="OAuth2 scope to ask for.")
    credentials_in: Literal["body", "basic"] = Field(
        default="body", description="Send the client credentials in the form body or as basic auth."
    )


AuthConfig = BasicAuthConfig | BearerAuthConfig | ApiKeyAuthConfig | OAuth2ClientCredentialsConfig
if TYPE_CHECKING:
    # the REST and files sources (requests, their readers) are imported when one is used: a
    # project without them starts its processes without that import
    from ingestion_assets.sources.files.source import FilesSource
    from ingestion_assets.sources.rest.reader import RestStreamReader
    from ingestion_assets.sources.rest.source import RestSource

    OptionalAuthConfig = AuthConfig | None
else:
    # Dagster's config schema has no optional discriminated union (None is no Config class, and an
    # explicit None is refused), so at run time the field leaves None out and its default None
    # means "no auth"; type checkers still see that it can be None
    OptionalAuthConfig = AuthConfig

# each auth spec model and the config class that carries it into a run
_AUTH_CONFIGS: dict[type[Spec], type[AuthConfig]] = {
    BasicAuth: BasicAuthConfig,
    BearerAuth: BearerAuthConfig,
    ApiKeyAuth: ApiKeyAuthConfig,
    OAuth2ClientCredentials: OAuth2ClientCredentialsConfig,
}


def _auth_config(auth: Spec) -> AuthConfig:
    """A spec's auth as its resource config: `${VAR}` values become EnvVars, read when a run starts."""
    values: dict[str, Any] = {
        name: config_value(value) if isinstance(value, str) else value
        for name, value in auth.model_dump().items()
    }
    return _AUTH_CONFIGS[type(auth)](**values)


class RestSourceResource(SourceResource):
    """One REST source's settings; its Source makes one HTTP session per run, on first use."""

    # repr=False: once a run reads the EnvVars these hold secrets (a URL may carry credentials)
    base_url: str = Field(description="Base URL of the API.", repr=False)
    auth: OptionalAuthConfig = Field(
        default=None,
        discriminator="type",
        description="How requests authenticate: basic, bearer, api_key or "
        "oauth2_client_credentials; none when left out.",
    )
    headers: dict[str, str] = Field(default_factory=dict, description="Headers for every request.")
    connect_timeout: float = Field(10.0, description="Connect timeout in seconds.")
    read_timeout: float = Field(60.0, description="Read timeout in seconds.")
    max_attempts: int = Field(5, description="Attempts per request.")
    backoff_seconds: float = Field(0.5, description="First retry backoff in seconds.")
    max_backoff_seconds: float = Field(30.0, description="Longest single backoff.")
    max_elapsed_seconds: float = Field(
        300.0, description="Time limit per request, retries included."
    )
    parallel_requests: int = Field(4, description="Pages fetched at once when the total is known.")
    batch_size: int = Field(10_000, description="Records per Arrow batch.")
    timezone: str = Field("UTC", description="The zone in which the source's days begin.")

    @classmethod
    def from_spec(cls, source_name: str, spec: SourceSpecBase) -> RestSourceResource:
        """Resource config from a spec: `${VAR}` values become EnvVars, read when a run starts."""
        assert isinstance(spec, RestSourceSpec)
        # no `auth=None`: Dagster refuses an explicit None for a discriminated union
        auth: dict[str, Any] = {} if spec.auth is None else {"auth": _auth_config(spec.auth)}
        return cls(
            source_name=source_name,
            base_url=config_value(spec.base_url),
            headers=dict(spec.headers),
            connect_timeout=spec.timeout.connect,
            read_timeout=spec.timeout.read,
            max_attempts=spec.retries.max_attempts,
            backoff_seconds=spec.retries.backoff_seconds,
            max_backoff_seconds=spec.retries.max_backoff_seconds,
            max_elapsed_seconds=spec.retries.max_elapsed_seconds,
            parallel_requests=spec.parallel_requests,
            batch_size=spec.batch_size,
            timezone=spec.timezone,
            **auth,
        )

    @classmethod
    def source_type(cls) -> type[Source]:
        """The REST Source class, imported on first use."""
        from ingestion_assets.sources.rest.source import RestSource

        return RestSource

    def open_source(self) -> RestSource:
        """The API as a Source (its session is made on the first request)."""
        from ingestion_assets.sources.rest.client import RetryPolicy
        from ingestion_assets.sources.rest.source import RestSource

        return RestSource(
            self.source_name,
            self.base_url,
            self.auth,
            self.headers,
            (self.connect_timeout, self.read_timeout),
            RetryPolicy(
                self.max_attempts,
                self.backoff_seconds,
                self.max_backoff_seconds,
                self.max_elapsed_seconds,
            ),
            self.timezone,
            self.parallel_requests,
            self.batch_size,
            # retries reported in the run's log as they happen
            logger=get_dagster_logger("ingestion_assets.rest"),
        )

    def reader(self, stream: StreamSpec, pagination: Pagination | None = None) -> RestStreamReader:
        """A reader for one of the source's streams (with another pagination when given)."""
        from ingestion_assets.sources.rest.source import RestSource

        source = self.source()
        assert isinstance(source, RestSource)
        if pagination is not None:
            stream = stream.model_copy(update={"pagination": pagination})
        return source.reader(stream)


class FilesSourceResource(SourceResource):
    """One landing zone's settings; its Source lists and reads the files in a run."""

    # repr=False: a root may name a bucket path with credentials resolved from EnvVars
    root: str = Field(
        description="Folder or s3:// / gs:// / az:// URI of the landing zone.", repr=False
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="Object-store settings (credentials, endpoint); take secrets from EnvVar.",
    )
    timezone: str = Field("UTC", description="The zone in which the source's days begin.")
    batch_rows: int = Field(65_536, description="Rows per Arrow record batch.")
    max_files_per_run: int | None = Field(None, description="Files one run reads at most.")
    lake_root: str | None = Field(
        default=None, description="The Delta lake's root, where each table's ledger of files is."
    )
    lake_storage_options: dict[str, str] = Field(
        default_factory=dict, repr=False, description="The lake's storage options."
    )

    def with_lake(self, root: str, storage_options: dict[str, Any]) -> FilesSourceResource:
        """This resource, reading each table's ledger under the lake's `root`."""
        # a new instance, not a model copy: Dagster builds a run's resource from its constructor
        # arguments
        return FilesSourceResource(
            source_name=self.source_name,
            root=self.root,
            storage_options=dict(self.storage_options),
            timezone=self.timezone,
            batch_rows=self.batch_rows,
            max_files_per_run=self.max_files_per_run,
            lake_root=root,
            lake_storage_options=storage_options,
        )

    @classmethod
    def from_spec(cls, source_name: str, spec: SourceSpecBase) -> FilesSourceResource:
        """Resource config from a spec: `${VAR}` values become EnvVars, read when a run starts."""
        assert isinstance(spec, FilesSourceSpec)
        return cls(
            source_name=source_name,
            root=config_value(spec.root),
            storage_options={
                key: config_value(value) for key, value in spec.storage_options.items()
            },
            timezone=spec.timezone,
            batch_rows=spec.batch_rows,
            max_files_per_run=spec.max_files_per_run,
        )

    @classmethod
    def source_type(cls) -> type[Source]:
        """The files Source class, imported on first use."""
        from ingestion_assets.sources.files.source import FilesSource

        return FilesSource

    def open_source(self) -> FilesSource:
        """The landing zone as a Source (its filesystem opened on first use)."""
        from ingestion_assets.sources.files.source import FilesSource

        return FilesSource(
            self.source_name,
            self.root,
            dict(self.storage_options),
            self.timezone,
            self.batch_rows,
            self.max_files_per_run,
            self.lake_root,
            dict(self.lake_storage_options),
        )
