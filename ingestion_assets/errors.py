"""The project's error hierarchy: every message says what failed, where, and how to fix it."""

from __future__ import annotations


class IngestionError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(IngestionError):
    """The project file is wrong: raised while definitions load, before anything runs."""


class SourceError(IngestionError):
    """A source could not be read: connection, missing table, failed query."""


class SchemaDriftError(IngestionError):
    """The incoming data does not fit the Delta table under the table's schema policy."""


class PrecisionLossError(IngestionError):
    """Writing a value would silently lose digits (e.g. 100 ns timestamps into Delta's microseconds)."""


class WriteConflictError(IngestionError):
    """Other runs changed the Delta table while this one wrote, more often than it retries."""


class AuditFailedError(IngestionError):
    """A blocking check rejected the rows a run staged: nothing was published."""


class DeprecatedSettingWarning(FutureWarning):
    """A project-file setting that still works but is replaced: the message names the new one."""


def where(source: str, table: str, partition: str | None) -> str:
    """The 'where' of a message: source, table and `partition D` / `partitions A..B` label."""
    scope = partition or "the whole table"
    return f"source '{source}', table '{table}', {scope}"
