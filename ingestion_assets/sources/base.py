"""The Source interface every source kind implements, and the registry of source kinds.

A source turns (dataset spec, partition window) into Arrow batches, counts a window's rows,
tells which days changed since a cursor, and checks a dataset's declared names and its
credentials without reading its rows (`verify`). It knows nothing of Dagster: the Dagster resource of a
kind (`resource`, a dotted path imported only when definitions are built) holds its settings and
opens it lazily in a run. Adding a kind is one module with its spec model, its `Source` and its
resource, plus one `register_source_kind(...)` line.
"""

from __future__ import annotations

import datetime
import difflib
import importlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ingestion_assets.sources.files.spec import FilesSourceSpec
from ingestion_assets.sources.stream import SourceStream
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, RestSourceSpec, SourceSpecBase, SqlSourceSpec


@dataclass(frozen=True)
class ChangedDays:
    """The days with rows changed since a cursor, and the newest change seen (the next cursor)."""

    days: list[datetime.date]
    newest: str | None


@dataclass(frozen=True)
class DeclaredColumn:
    """A column the project file declares for a dataset, as the UI shows it before any run: its
    name as the source spells it, its Arrow type ("" until a run reads it) and its type as the
    source declares it, where the spec tells."""

    name: str
    type: str = ""
    source_type: str | None = None


@dataclass(frozen=True)
class Finding:
    """What checking a dataset at its source found: a problem and its fix, or a note on what was
    checked. `dataset` None: the whole source (its connection, its credentials)."""

    source: str
    dataset: str | None
    problem: str
    fix: str = ""
    # the project-file key the fix changes: in the dataset's entry (`partition_column`), or in
    # the source's (`auth`, `connection`); the command names the environment variables under it
    key: str | None = None
    source_key: str | None = None
    # error: a run would fail; warning: a run may go wrong; note: what was checked, all well
    severity: Literal["error", "warning", "note"] = "error"


def _spelled_as(name: str, candidates: Sequence[str]) -> str | None:
    """The candidate that is `name` but for letter case."""
    return next((c for c in candidates if c.lower() == name.lower() and c != name), None)


def did_you_mean(key: str, name: str, candidates: Sequence[str], what: str) -> str:
    """The fix of `key`, whose `name` is not among the source's `candidates` (`what` they are):
    the source's own spelling of it, the closest names (did you mean ...?), or the names there are."""
    spelled = _spelled_as(name, candidates)
    if spelled is not None:
        return f"the source spells it '{spelled}': write `{key}` in that case"
    lowered = {candidate.lower(): candidate for candidate in candidates}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=3)
    if close:
        return (
            f"did you mean {', '.join(lowered[c] for c in close)}? Write `{key}` as the source "
            "spells it"
        )
    if not candidates:
        return f"the source has no {what}: check `{key}` and where the source points"
    listing = ", ".join(sorted(candidates)[:30]) + (", ..." if len(candidates) > 30 else "")
    return f"`{key}` must name one of the {what}: {listing}"


class Source(ABC):
    """One source's datasets, read window by window; opened in a run, closed after it."""

    def __init__(self, source_name: str) -> None:
        self.source_name = source_name

    @abstractmethod
    def read(self, dataset: DatasetSpec, window: PartitionWindow | None) -> SourceStream:
        """The dataset's rows in `window` (all rows when None) as a stream of Arrow batches;
        the stream's `path` says how they are fetched."""

    @abstractmethod
    def count(self, dataset: DatasetSpec, window: PartitionWindow | None) -> int | None:
        """The source's own row count for the window; None when the source cannot tell."""

    def read_changes(self, dataset: DatasetSpec, since: str | None) -> SourceStream:
        """A merge table's rows changed since the cursor `since` (every row when None)."""
        raise NotImplementedError(
            f"source '{self.source_name}' ({type(self).__name__}) cannot read "
            f"'{dataset.qualified_name}' as a merge table: use mode: replace"
        )

    def newest_change(self, dataset: DatasetSpec, since: str | None) -> str | None:
        """The newest cursor value of a merge table's rows past `since` (None: nothing new);
        what a new-data sensor asks a merge table's source."""
        raise NotImplementedError(
            f"source '{self.source_name}' ({type(self).__name__}) cannot tell the changes of "
            f"'{dataset.qualified_name}'"
        )

    def read_keys(self, dataset: DatasetSpec) -> SourceStream:
        """Every row's primary key alone (a merge table's key scan)."""
        raise NotImplementedError(
            f"source '{self.source_name}' ({type(self).__name__}) cannot read the keys of "
            f"'{dataset.qualified_name}' alone: remove key_scan_cron (a full refresh, the tag "
            "ingest/full_refresh=true, also finds the deleted keys)"
        )

    def changes_applied(self, dataset: DatasetSpec, cursor: str) -> None:  # noqa: B027
        """The changes up to `cursor` are committed to the lake: a feed that holds them for the
        reader (a replication slot) may let them go. Nothing by default."""

    @abstractmethod
    def changed_days(self, dataset: DatasetSpec, since: str | None) -> ChangedDays:
        """Days with rows changed since the cursor `since`; a first call (None) only marks now."""

    @classmethod
    def declared_columns(cls, dataset: DatasetSpec) -> list[DeclaredColumn]:
        """The columns known from the spec alone (the UI's schema before the first run): the
        key and the partition column."""
        named = [*dataset.primary_key, *filter(None, [dataset.partition_column])]
        return [DeclaredColumn(name) for name in dict.fromkeys(named)]

    def unreachable_rows(self, dataset: DatasetSpec) -> int | None:
        """Rows at the source that no partition can reach (partition column NULL, before the
        dataset's first day or on/after the source's end_date); None when the kind cannot say."""
        return None

    def read_unreachable(self, dataset: DatasetSpec) -> SourceStream:
        """Exactly the rows `unreachable_rows` counts, as a stream (for a quarantine table)."""
        raise NotImplementedError(
            f"source '{self.source_name}' ({type(self).__name__}) cannot read the rows no "
            f"partition reaches of '{dataset.qualified_name}': set unpartitioned_rows to warn "
            "or fail"
        )

    def verify(self, dataset: DatasetSpec, window: PartitionWindow | None) -> list[Finding]:
        """What is wrong with the dataset's declared names or the source's credentials, checked at
        the source without reading its rows (`window`: the sample day a request asks for)."""
        return [
            Finding(
                self.source_name,
                dataset.qualified_name,
                f"a {type(self).__name__} cannot be checked before a run",
                "materialize one partition to test the dataset",
                severity="warning",
            )
        ]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and sessions."""


@dataclass(frozen=True)
class SourceKind:
    """A kind of source: the `type` its specs carry, their model, and its Dagster resource
    (`module:Class`, a `SourceResource` subclass, imported when definitions are built)."""

    type_name: str
    spec_model: type[SourceSpecBase]
    resource: str

    def resource_class(self) -> Any:
        """The kind's Dagster resource class."""
        module, _, name = self.resource.partition(":")
        return getattr(importlib.import_module(module), name)


_KINDS: dict[str, SourceKind] = {}


def register_source_kind(kind: SourceKind) -> None:
    """Make a source kind known to the project file and to definitions (idempotent)."""
    _KINDS[kind.type_name] = kind


def source_kind(type_name: str) -> SourceKind:
    """The registered kind of a spec `type`."""
    try:
        return _KINDS[type_name]
    except KeyError:
        raise KeyError(
            f"unknown source type '{type_name}'; known types: {', '.join(sorted(_KINDS))}"
        ) from None


def source_kinds() -> dict[str, SourceKind]:
    """Every registered kind by its `type`."""
    return dict(_KINDS)


# the built-in kinds: one line each
register_source_kind(
    SourceKind("sql", SqlSourceSpec, "ingestion_assets.resources:SqlSourceResource")
)
register_source_kind(
    SourceKind("rest", RestSourceSpec, "ingestion_assets.resources:RestSourceResource")
)
register_source_kind(
    SourceKind("files", FilesSourceSpec, "ingestion_assets.resources:FilesSourceResource")
)
