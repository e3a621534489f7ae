"""The `files` source kind's project-file model: a landing zone (a folder or a bucket) and its
datasets, each a glob of files in one format, partitioned by the day the files arrived or by a
column of their rows."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from ingestion_assets.sources.files.formats import FileFormat
from ingestion_assets.specs import (
    FIELD_TYPE,
    FIELD_TYPES_HELP,
    DatasetSpec,
    SourceSpecBase,
    Spec,
    _check_reference_syntax,
)

# the columns the files source adds to every row (the file's path below the root; the ledger
# names it too)
ARRIVAL_DATE = "_arrival_date"


class ArrivalPartitioning(Spec):
    """Each file's rows belong to the day the file arrived: its modification time's day (in the
    source's zone), or a date its path carries (`dt=2024-01-15/`)."""

    by: Literal["arrival"] = "arrival"
    day_from: Literal["modified_time", "path"] = Field(
        "modified_time", description="modified_time: the file's; path: `path_pattern` in its path."
    )
    path_pattern: str = Field(
        r"(\d{4}-\d{2}-\d{2})",
        description="day_from: path: a regular expression whose first group is the date "
        "(YYYY-MM-DD) in the file's path below the root.",
    )

    @field_validator("path_pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as error:
            raise ValueError(f"path_pattern '{value}' is no regular expression: {error}") from None
        if compiled.groups < 1:
            raise ValueError(f"path_pattern '{value}' needs a group around the date")
        return value


class ColumnPartitioning(Spec):
    """Each row belongs to the day of one of its columns (a date, a timestamp or ISO text)."""

    by: Literal["column"] = "column"
    column: str = Field(description="The column whose day is the row's partition.")


Partitioning = Annotated[ArrivalPartitioning | ColumnPartitioning, Field(discriminator="by")]


class FileDatasetSpec(DatasetSpec):
    """One dataset of a landing zone: the files a glob matches, in one format."""

    name: str = Field(description="Dataset name, e.g. `currency_rates`: the asset's name.")
    glob: str = Field(
        description="Files below the root: `orders/*.csv`, `**/*.parquet` (`**` crosses folders)."
    )
    format: FileFormat = Field(description="The files' format and its options.")
    partitioning: Partitioning = Field(
        default_factory=ArrivalPartitioning,
        description="by: arrival (the file's day) or by: column (a column of its rows).",
    )
    columns: dict[str, str] | None = Field(
        None,
        description="The declared schema (recommended), column -> type as for a REST stream's "
        f"fields ({FIELD_TYPES_HELP}); without it each file's types are inferred.",
    )
    deleted_files: Literal["keep", "remove"] = Field(
        "keep",
        description="A file of a day the table holds that is gone from the landing zone when the "
        "day runs again: keep its rows (the default), or remove them. Either way it is reported.",
    )
    rescue: bool = Field(
        True,
        description="A value that does not fit its declared type is kept, as text, in the "
        "`_rescued_data` JSON column (the column is NULL); false: the file is refused.",
    )

    @field_validator("columns")
    @classmethod
    def _types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        for column, kind in (value or {}).items():
            if not FIELD_TYPE.match(kind):
                raise ValueError(f"column {column}: unknown type '{kind}'; use {FIELD_TYPES_HELP}")
        return value

    @model_validator(mode="after")
    def _replace_only(self) -> FileDatasetSpec:
        if self.mode != "replace":
            raise ValueError(
                f"dataset {self.name}: a files dataset replaces its days (mode: replace); merge "
                "and cdc read a database's changes"
            )
        return self

    @property
    def qualified_name(self) -> str:
        """`name (glob)`."""
        return f"{self.name} ({self.glob})"

    @property
    def origin(self) -> str:
        """How descriptions name it."""
        return f"files `{self.glob}`"

    @property
    def partition_column(self) -> str | None:
        """The column that assigns a row to its day: the arrival date the source adds, or
        the dataset's own column."""
        if isinstance(self.partitioning, ColumnPartitioning):
            return self.partitioning.column
        return ARRIVAL_DATE

    @property
    def declares_every_column(self) -> bool:
        """Declared `columns` (and the columns the source adds) are every column."""
        return self.columns is not None


class FilesSourceSpec(SourceSpecBase):
    """A landing zone: files dropped in a folder or a bucket, each ingested for its days."""

    type: Literal["files"] = "files"
    root: str = Field(
        description="A folder, or s3://bucket/prefix, gs://..., az://container/prefix; may be ${VAR}."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="Object-store settings as for the lake (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, "
        "AWS_REGION, ...); secrets as ${VAR}.",
    )
    files: tuple[FileDatasetSpec, ...] = Field(
        min_length=1, description="The datasets: each a glob of files in one format."
    )
    batch_rows: int = Field(65_536, gt=0, description="Rows per Arrow record batch.")
    max_files_per_run: int | None = Field(
        None,
        gt=0,
        description="Files one run reads at most (a first run over a large backlog): more fail "
        "the run with the days to run in smaller ranges.",
    )

    @field_validator("root")
    @classmethod
    def _root(cls, value: str) -> str:
        return _check_reference_syntax(value)

    @field_validator("storage_options")
    @classmethod
    def _options(cls, value: dict[str, str]) -> dict[str, str]:
        for item in value.values():
            _check_reference_syntax(item)
        return value

    @model_validator(mode="after")
    def _datasets(self) -> FilesSourceSpec:
        self._check_datasets("files")
        return self

    @property
    def datasets(self) -> tuple[DatasetSpec, ...]:
        """The source's datasets."""
        return self.files

    @property
    def asset_kind(self) -> str:
        """`files`, or the object store's name."""
        scheme = self.root.split("://", 1)[0] if "://" in self.root else ""
        return {"s3": "s3", "gs": "gcs", "az": "azure", "abfs": "azure"}.get(scheme, "files")
