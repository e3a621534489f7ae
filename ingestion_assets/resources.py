"""Dagster resources that hold a source's connection settings and open connections lazily in a run."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from ingestion_assets.project import config_value
from ingestion_assets.sources.sql import SqlTableReader, create_source_engine
from ingestion_assets.specs import SqlSourceSpec, TableSpec


class SqlSourceResource(ConfigurableResource):  # type: ignore[type-arg]
    """One SQL source's connection; the engine is created on first use, never at load time."""

    source_name: str = Field(description="The source's name in the project file.")
    url: str | None = Field(None, description="SQLAlchemy URL (no password in it).")
    drivername: str | None = Field(None, description="SQLAlchemy driver, e.g. mssql+pyodbc.")
    host: str | None = Field(None, description="Database host.")
    port: int | None = Field(None, description="Database port.")
    username: str | None = Field(None, description="User name.")
    password: str | None = Field(None, description="Password, from an environment variable.")
    database: str | None = Field(None, description="Database name.")
    query: dict[str, str] = Field(
        default_factory=dict, description="URL query options (ODBC driver, Encrypt, ...)."
    )
    sqlite_attach: dict[str, str] = Field(
        default_factory=dict, description="SQLite: schema name -> database file to attach."
    )
    batch_size: int = Field(50_000, description="Rows per Arrow record batch.")

    _engine: sa.Engine | None = PrivateAttr(default=None)

    @classmethod
    def from_spec(cls, source_name: str, spec: SqlSourceSpec) -> SqlSourceResource:
        """Resource config from a spec: `${VAR}` values become EnvVars, read when a run starts."""
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
        )

    def sqlalchemy_url(self) -> sa.URL:
        """The URL to connect with, password included (render it only with hide_password)."""
        if self.url is not None:
            url = sa.make_url(self.url)
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

    def engine(self) -> sa.Engine:
        """The source's engine, created once per run process."""
        if self._engine is None:
            self._engine = create_source_engine(self.sqlalchemy_url(), self.sqlite_attach)
        return self._engine

    def reader(self, table: TableSpec) -> SqlTableReader:
        """A reader for one of the source's tables."""
        return SqlTableReader(self.engine(), self.source_name, table, self.batch_size)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
