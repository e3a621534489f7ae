"""Apache Iceberg IO manager (pyiceberg, SQL catalog): the Delta writer's contract on Iceberg.

Each asset is the table `<namespace>.<asset path joined by "__">` of a SQL catalog (SQLite or
PostgreSQL), partitioned by day (or month) of `_partition_date`.

`stage()` writes the run's rows as Parquet data files of the table (a chunk of `rows_per_file`
rows at a time, so memory stays bounded by the chunk, not the run) that no snapshot references
yet. `commit()` is one catalog commit of one `overwrite` snapshot: it removes the window's data
files (a file that also holds days outside the window, as under month partitioning, is rewritten
without the window's rows), adds the staged files and applies any schema change under policy
`evolve`, so a reader sees the old rows or the new ones, never a mix. When another writer
committed first the change is planned again on the new snapshot (bounded attempts), so runs of
different days all land and two runs of one day leave one copy. A run killed before its commit
leaves the table at its previous snapshot; its data files are orphans no snapshot names (abort
deletes them when it gets the chance).

Types: the Arrow schema the lake writes (`lake_schema`) maps one to one: decimals keep precision
and scale, timestamps with a zone become `timestamptz`, without one `timestamp` (microseconds).
UUIDs are stored as strings (the sources give them as text; Iceberg's `uuid` type would be a
fixed(16) that DuckDB and pyarrow readers show as bytes).

pyiceberg's public writes (`overwrite`) take the whole window in memory and publish a delete and
an append snapshot; the writer uses its data-file writer and overwrite snapshot producer instead
(pyiceberg internals, hence the upper bound on its version in pyproject.toml)."""

from __future__ import annotations

import contextlib
import datetime
import itertools
import os
import random
import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
from dagster import ConfigurableIOManager, InputContext, MetadataValue, OutputContext
from pydantic import Field
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.rest import RestCatalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NoSuchTableError,
    RESTError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.expressions import (
    AlwaysTrue,
    And,
    BooleanExpression,
    GreaterThanOrEqual,
    LessThanOrEqual,
    Not,
)
from pyiceberg.expressions.visitors import _StrictMetricsEvaluator
from pyiceberg.io.pyarrow import (
    ArrowScan,
    PyArrowFileIO,
    _check_pyarrow_schema_compatible,
    _dataframe_to_data_files,
    bin_pack_arrow_table,
    pyarrow_to_schema,
    write_file,
)
from pyiceberg.manifest import DataFile
from pyiceberg.partitioning import PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema, assign_fresh_schema_ids
from pyiceberg.table import CreateTableTransaction, Table, TableProperties, Transaction, WriteTask
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.transforms import DayTransform, MonthTransform, Transform
from pyiceberg.utils.properties import property_as_int
from requests import RequestException
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from ingestion_assets.errors import IngestionError, SchemaDriftError
from ingestion_assets.io_managers.contract import (
    WriteRequest,
    column_schema,
    context_window,
    output_reader,
    partitions_text,
    write_output,
    write_timing_metadata,
)
from ingestion_assets.lake.files import conform
from ingestion_assets.lake.rows import PARTITION_DATE, WritePlan, lake_schema
from ingestion_assets.sources.rest.redaction import redact
from ingestion_assets.sources.window import PartitionWindow

# commits planned again after another writer committed first (each waits a little longer)
MAX_COMMIT_ATTEMPTS = 20
# a run's rows are written as data files once it holds this much Arrow data (or `rows_per_file`
# rows), whichever comes first: the bound on the rows a run holds, whatever their width
STAGE_BYTES = 64 << 20
# Opening the catalog: retried when a concurrent run created its tables or namespace first.
CATALOG_OPEN_ATTEMPTS = 5
# pyiceberg retries a failed commit itself with the files to delete planned on the old snapshot,
# which could keep a concurrent run's rows of the window: the writer's tables retry here instead
NO_CATALOG_RETRIES = {"commit.retry.num-retries": "0"}
# the first partition field id of a table's spec (Iceberg's convention)
PARTITION_FIELD_ID = 1000

# Iceberg has no 8- or 16-bit integers, nor unsigned ones, nor half floats: the narrowest
# type of its own that holds every value
_WIDER = {
    pa.int8(): pa.int32(),
    pa.int16(): pa.int32(),
    pa.uint8(): pa.int32(),
    pa.uint16(): pa.int32(),
    pa.uint32(): pa.int64(),
    pa.float16(): pa.float32(),
}


def iceberg_types(schema: pa.Schema) -> pa.Schema:
    """`schema` in the types an Iceberg table stores (and hands back), so that what is staged
    and what is committed compare equal."""
    return pa.schema(
        [field.with_type(_WIDER.get(field.type, field.type)) for field in schema],
        metadata=schema.metadata,
    )


class IcebergIOManager(ConfigurableIOManager):
    """Writes each asset to an Iceberg table of a SQL catalog; replaces partitions atomically."""

    # repr=False: a PostgreSQL URI may carry a password (take it from EnvVar)
    catalog_uri: str = Field(
        repr=False,
        description="SQLAlchemy URI of a SQL catalog (sqlite:///path/catalog.db or "
        "postgresql+psycopg2://user:password@host/db), or the http(s):// URI of a REST catalog; "
        "take secrets from EnvVar.",
    )
    warehouse: str = Field(
        description="Folder or object-store URI where the tables' data and metadata files live "
        "(for a REST catalog: the warehouse it is asked for, a location or a name it knows)."
    )
    token: str | None = Field(
        default=None,
        repr=False,
        description="Bearer token for a REST catalog (sent to the catalog's URI only); EnvVar.",
    )
    # repr=False: the options may carry keys
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        repr=False,
        description="The lake's object-store options (AWS_*, AZURE_STORAGE_* keys, as for "
        "delta-rs), given to pyiceberg's file IO for the warehouse's files.",
    )
    namespace: str = Field(default="ingest", description="The catalog namespace of the tables.")
    partition_by: Literal["day", "month"] = Field(
        default="day", description="`day` or `month`: the transform of `_partition_date`."
    )
    rows_per_file: int = Field(
        default=1_000_000,
        gt=0,
        description="Rows a run holds before it writes them as data files (bounds its memory).",
    )

    @property
    def rest(self) -> bool:
        """Whether the catalog is a REST catalog (else a SQL catalog)."""
        return self.catalog_uri.startswith(("http://", "https://"))

    def catalog(self) -> Catalog:
        """The catalog, its namespace created on first use (for a SQL catalog, its tables too).

        Two runs that start on a new catalog both find its tables (or the namespace) missing and
        both create them; the one that loses gets an integrity or "already exists" error from the
        database. Opening again finds what the other created, so the open is retried (bounded)."""
        if self.rest:
            return self._rest_catalog()
        for number in range(1, CATALOG_OPEN_ATTEMPTS + 1):
            try:
                catalog = SqlCatalog(
                    "ingestion",
                    uri=self.catalog_uri,
                    warehouse=self.warehouse,
                    **file_io_properties(self.storage_options),
                )
                catalog.create_namespace_if_not_exists(self.namespace)
                return catalog
            except (IntegrityError, OperationalError, ProgrammingError) as error:
                if number == CATALOG_OPEN_ATTEMPTS:
                    url = make_url(self.catalog_uri).render_as_string(hide_password=True)
                    raise IngestionError(
                        f"Iceberg SQL catalog {url}: cannot open it or create namespace "
                        f"{self.namespace} after {number} attempts "
                        f"({type(error.orig).__name__}: {str(error.orig).splitlines()[0]}); "
                        "check that the database is reachable and writable "
                        "(`lake.iceberg.catalog_uri`)"
                    ) from None
                time.sleep(random.uniform(0.05, 0.2) * number)
        raise AssertionError("unreachable")

    def _rest_catalog(self) -> Catalog:
        """The REST catalog at `catalog_uri` (pyiceberg's client, which retries a failed request
        a bounded number of times), its namespace created on first use."""
        properties = {
            "uri": self.catalog_uri,
            "warehouse": self.warehouse,
            **file_io_properties(self.storage_options),
        }
        if self.token:
            properties["token"] = self.token
        try:
            catalog = RestCatalog("ingestion", **properties)
            # asked first: a writer may load and commit tables without the right to create
            # namespaces, and a create of one that exists is refused by some catalogs
            if not catalog.namespace_exists(self.namespace):
                catalog.create_namespace_if_not_exists(self.namespace)
        except (RESTError, RequestException, OSError) as error:
            # the message names the catalog and the error's kind, never the token
            reason = redact(str(error).splitlines()[0] if str(error) else "", [self.token or ""])
            # user:password@ in the URI (from an EnvVar) is never shown
            shown = re.sub(r"^([a-z]+://)[^/@]*@", r"\1", self.catalog_uri)
            raise IngestionError(
                f"Iceberg REST catalog {shown}: cannot open it or create namespace "
                f"{self.namespace} ({type(error).__name__}: {reason}); check that the catalog "
                "is reachable, `lake.iceberg.catalog_uri` and `lake.iceberg.token`"
            ) from None
        return catalog

    def identifier(self, asset_path: tuple[str, ...] | list[str]) -> str:
        """`<namespace>.<asset path joined by __>`."""
        return f"{self.namespace}.{'__'.join(asset_path)}"

    def open_table(self, asset_path: tuple[str, ...] | list[str]) -> Table | None:
        """The asset's table at its current snapshot; None before its first write."""
        try:
            return self.catalog().load_table(self.identifier(asset_path))
        except NoSuchTableError:
            return None

    def stage(self, request: WriteRequest, data: Any) -> IcebergStagedWrite:
        """Write the rows as data files no snapshot references yet (see the module)."""
        reader, _ = output_reader(data)
        plan = request.plan(iceberg_types(lake_schema(reader.schema, request.nanoseconds)))
        catalog = self.catalog()
        identifier = self.identifier(request.asset_path)
        try:
            existing: Table | None = catalog.load_table(identifier)
        except NoSuchTableError:
            existing = None
        table_schema = existing.schema().as_arrow() if existing is not None else None
        if table_schema is not None and request.schema_policy == "freeze":
            added = [name for name in plan.target.names if name not in table_schema.names]
            if added:
                raise IngestionError(
                    f"{plan.table_label} ({plan.partition_label}): Iceberg table {identifier} "
                    f"has no column(s) {', '.join(added)} and its schema policy is `freeze`; set "
                    "`schema_policy: evolve` on the table to add them, or drop them at the source"
                )
        staged = IcebergStagedWrite(self, request, plan, time.monotonic())
        staged.table_schema = table_schema
        try:
            staged.write(catalog, existing, plan.stream(reader, request.log.info))
        except BaseException:
            staged.abort()
            if plan.source_error is not None:
                raise plan.source_error from None
            raise
        return staged

    def committed_rows(
        self, asset_path: tuple[str, ...], window: PartitionWindow | None, columns: list[str]
    ) -> pa.Table | None:
        """`columns` and `_partition_date` of the committed rows in `window` (all when None)."""
        table = self.open_table(asset_path)
        if table is None:
            return None
        present = set(table.schema().column_names)
        wanted = [name for name in dict.fromkeys([*columns, PARTITION_DATE]) if name in present]
        return table.scan(row_filter=days_filter(window), selected_fields=tuple(wanted)).to_arrow()

    def committed_schema(self, asset_path: tuple[str, ...]) -> pa.Schema | None:
        """The table's schema as Arrow; None before its first write."""
        table = self.open_table(asset_path)
        return None if table is None else table.schema().as_arrow()

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        """Write an asset's Arrow data: replace its partitions (or the whole table) at once."""
        write_output(self, context, obj)

    def load_input(self, context: InputContext) -> pa.Table:
        """The upstream table's rows in the partitions this run asks for."""
        asset_path = list(context.asset_key.path)
        table = self.open_table(asset_path)
        if table is None:
            raise IngestionError(
                f"table {'.'.join(asset_path)}: no Iceberg table {self.identifier(asset_path)}; "
                "materialize the upstream asset first."
            )
        return table.scan(row_filter=days_filter(context_window(context))).to_arrow()

    def expire_snapshots(self, asset_path: tuple[str, ...], older_than: datetime.datetime) -> int:
        """Expire the table's snapshots older than `older_than` (never the current one); how
        many were expired."""
        table = self.open_table(asset_path)
        if table is None:
            return 0
        current = table.current_snapshot()
        cutoff = int(older_than.timestamp() * 1000)
        old = [
            snapshot.snapshot_id
            for snapshot in table.snapshots()
            if snapshot.timestamp_ms < cutoff
            and (current is None or snapshot.snapshot_id != current.snapshot_id)
        ]
        if old:
            table.maintenance.expire_snapshots().by_ids(old).commit()
        return len(old)

    def maintain(
        self, asset_path: tuple[str, ...], retention: datetime.timedelta
    ) -> IcebergMaintenance | None:
        """Expire the snapshots older than `retention` (never the current one), then delete the
        table's files no snapshot or metadata file left names, once they are older than
        `retention`: the data files of expired snapshots, a killed run's data files, old
        manifests and metadata files. None when the table does not exist yet.

        pyiceberg expires snapshots in the metadata only and has no orphan-file removal nor a
        rewrite of small files (0.12); the files are listed and compared here. A file younger
        than `retention` is kept whatever names it: a running write's files are unnamed until
        its commit, so `retention` must be longer than the longest run."""
        table = self.open_table(asset_path)
        if table is None:
            return None
        cutoff = datetime.datetime.now(datetime.UTC) - retention
        expired = self.expire_snapshots(asset_path, cutoff)
        table = self.open_table(asset_path)
        assert table is not None
        named = _named_files(table)
        filesystem, root = _table_filesystem(table)
        removed, removed_bytes, kept = 0, 0, 0
        for folder in ("data", "metadata"):
            selector = pa_fs.FileSelector(f"{root}/{folder}", allow_not_found=True, recursive=True)
            for info in filesystem.get_file_info(selector):
                if info.type != pa_fs.FileType.File:
                    continue
                if info.path in named or info.mtime is None or info.mtime >= cutoff:
                    kept += 1
                    continue
                filesystem.delete_file(info.path)
                removed, removed_bytes = removed + 1, removed_bytes + (info.size or 0)
        snapshot = table.current_snapshot()
        return IcebergMaintenance(
            table=self.identifier(asset_path),
            snapshots_expired=expired,
            snapshots_kept=len(table.snapshots()),
            files_removed=removed,
            bytes_removed=removed_bytes,
            files_kept=kept,
            snapshot_id=None if snapshot is None else snapshot.snapshot_id,
        )


@dataclass(frozen=True)
class IcebergMaintenance:
    """What a maintenance pass did to one Iceberg table."""

    table: str
    snapshots_expired: int
    snapshots_kept: int
    files_removed: int
    bytes_removed: int
    files_kept: int
    snapshot_id: int | None

    def metadata(self) -> dict[str, Any]:
        """As an observation's metadata."""
        return {
            "dagster/table_name": self.table,
            "snapshots_expired": self.snapshots_expired,
            "snapshots_kept": self.snapshots_kept,
            "files_removed": self.files_removed,
            "bytes_removed": self.bytes_removed,
            "files_kept": self.files_kept,
            "iceberg_snapshot_id": self.snapshot_id,
        }


def _named_files(table: Table) -> set[str]:
    """The paths (as the table's filesystem lists them) of every file the table's metadata names:
    its metadata files, each snapshot's manifest list, manifests and data and delete files, and
    statistics files."""
    metadata = table.metadata
    uris = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    uris.update(snapshot.manifest_list for snapshot in table.snapshots())
    if table.snapshots():
        uris.update(table.inspect.all_manifests().column("path").to_pylist())
        uris.update(table.inspect.all_files().column("file_path").to_pylist())
    uris.update(statistics.statistics_path for statistics in metadata.statistics)
    uris.update(statistics.statistics_path for statistics in metadata.partition_statistics)
    return {_listed_path(uri) for uri in uris if uri}


def _table_filesystem(table: Table) -> tuple[pa_fs.FileSystem, str]:
    """The filesystem of a table's location, as its file IO reaches it (credentials and endpoint
    included), and the location's path on it (a warehouse given as a plain path, relative or
    not, is a local folder)."""
    location = table.location()
    if "://" not in location:
        return pa_fs.LocalFileSystem(), _listed_path(location)
    if isinstance(table.io, PyArrowFileIO):
        scheme, netloc, path = PyArrowFileIO.parse_location(location)
        return table.io.fs_by_scheme(scheme, netloc), path
    filesystem, path = pa_fs.FileSystem.from_uri(location)
    return filesystem, str(path)


# the lake's storage options (delta-rs keys, any case) as pyiceberg's file IO properties
_FILE_IO_KEYS = {
    "aws_endpoint_url": "s3.endpoint",
    "aws_endpoint": "s3.endpoint",
    "endpoint": "s3.endpoint",
    "aws_access_key_id": "s3.access-key-id",
    "access_key_id": "s3.access-key-id",
    "aws_secret_access_key": "s3.secret-access-key",
    "secret_access_key": "s3.secret-access-key",
    "aws_session_token": "s3.session-token",
    "session_token": "s3.session-token",
    "aws_region": "s3.region",
    "aws_default_region": "s3.region",
    "region": "s3.region",
    "azure_storage_account_name": "adls.account-name",
    "account_name": "adls.account-name",
    "azure_storage_account_key": "adls.account-key",
    "account_key": "adls.account-key",
}


def file_io_properties(storage_options: dict[str, str]) -> dict[str, str]:
    """pyiceberg file IO properties for the lake's storage options (other keys are delta-rs's
    own and left out). An S3 endpoint without a region gets us-east-1: pyiceberg would otherwise
    ask AWS for the bucket's region, a request to another origin."""
    properties = {
        _FILE_IO_KEYS[key.lower()]: value
        for key, value in storage_options.items()
        if key.lower() in _FILE_IO_KEYS
    }
    if "s3.endpoint" in properties:
        properties.setdefault("s3.region", "us-east-1")
    return properties


def _listed_path(uri: str) -> str:
    """A file URI as pyarrow's filesystems list it (`/tmp/x` for file:///tmp/x or a local path,
    `bucket/key` for s3://bucket/key)."""
    if uri.startswith("file:"):
        return "/" + uri.removeprefix("file:").lstrip("/")
    if "://" in uri:
        return uri.split("://", 1)[1]
    return os.path.abspath(uri)


def days_filter(window: PartitionWindow | None) -> BooleanExpression:
    """The row filter of a window's days; every row without one."""
    if window is None:
        return AlwaysTrue()
    return And(
        GreaterThanOrEqual(term=PARTITION_DATE, value=window.first_day.isoformat()),
        LessThanOrEqual(term=PARTITION_DATE, value=window.last_day.isoformat()),
    )


def _partition_spec(schema: Schema, partition_by: str) -> PartitionSpec:
    """The spec of a new table: `day` or `month` of `_partition_date`."""
    transform: Transform[Any, Any] = MonthTransform() if partition_by == "month" else DayTransform()
    return PartitionSpec(
        PartitionField(
            source_id=schema.find_field(PARTITION_DATE).field_id,
            field_id=PARTITION_FIELD_ID,
            transform=transform,
            name=f"{PARTITION_DATE}_{partition_by}",
        )
    )


def _same_fields(written: Schema, current: Schema) -> bool:
    """Whether every column the files were written with has the same id and type in `current`."""
    for field in written.fields:
        try:
            now = current.find_field(field.field_id)
        except ValueError:
            return False
        if now.name != field.name or now.field_type != field.field_type:
            return False
    return True


def data_files(
    metadata: TableMetadata,
    table: pa.Table,
    io: Any,
    write_uuid: uuid.UUID,
    counter: itertools.count[int],
) -> list[DataFile]:
    """`table`'s rows written as data files of the table `metadata` describes, a file (or
    several, of the table's target size) per partition.

    pyiceberg's own split (`_dataframe_to_data_files`) filters the whole table once per partition
    and hands every partition's copy to its thread pool at once: for a chunk over hundreds of
    days that is hundreds of full scans and a second copy of the chunk in memory. Sorted by
    `_partition_date`, the rows of a partition are one run, and each file is written from a
    zero-copy slice of it."""
    spec, schema = metadata.spec(), metadata.schema()
    fields = spec.fields
    source = schema.find_column_name(fields[0].source_id) if len(fields) == 1 else None
    if source != PARTITION_DATE:  # a spec the writer did not make: pyiceberg's general path
        return list(_dataframe_to_data_files(metadata, table, io, write_uuid, counter))
    days = table.column(PARTITION_DATE)
    if len(days) > 1 and not pc.all(pc.greater_equal(days[1:], days[:-1])).as_py():
        table = table.sort_by(PARTITION_DATE)
        days = table.column(PARTITION_DATE)
    field = fields[0]
    values = field.transform.pyarrow_transform(schema.find_field(field.source_id).field_type)(
        days.combine_chunks()
    )
    changes = pc.indices_nonzero(pc.not_equal(values[1:], values[:-1]))
    starts = [0, *pc.add(changes, 1).to_pylist()]
    task_schema = pyarrow_to_schema(
        table.schema, name_mapping=schema.name_mapping, format_version=metadata.format_version
    )
    target = property_as_int(
        metadata.properties,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES,
        TableProperties.WRITE_TARGET_FILE_SIZE_BYTES_DEFAULT,
    )
    tasks = []
    for start, end in zip(starts, [*starts[1:], table.num_rows], strict=True):
        key = PartitionKey(
            field_values=[PartitionFieldValue(field=field, value=values[start].as_py())],
            partition_spec=spec,
            schema=schema,
        )
        part = table.slice(start, end - start)
        tasks += [
            WriteTask(
                write_uuid=write_uuid,
                task_id=next(counter),
                schema=task_schema,
                record_batches=batches,
                partition_key=key,
            )
            for batches in bin_pack_arrow_table(part, target or 1)
        ]
    return list(write_file(io, metadata, iter(tasks)))


class IcebergStagedWrite:
    """A staged replace of one Iceberg table's window (see `StagedWrite`): data files written,
    not yet named by a snapshot."""

    def __init__(
        self, manager: IcebergIOManager, request: WriteRequest, plan: WritePlan, started: float
    ) -> None:
        self.manager, self.request, self.plan = manager, request, plan
        self.started = started
        self.table_name = manager.identifier(request.asset_path)
        self.incoming_schema: pa.Schema = plan.target
        self.table_schema: pa.Schema | None = None
        self.data_files: list[DataFile] = []
        self.written_schema: Schema | None = None
        self.written_spec: PartitionSpec | None = None
        self.create: CreateTableTransaction | None = None
        self.existing: Table | None = None
        self.io: Any = None
        self.aborted = False

    def _metadata(self, catalog: Catalog, existing: Table | None) -> TableMetadata:
        """The table's metadata as the commit will make it (a new table, or the columns added
        under `evolve`), without publishing anything."""
        target = self.plan.target
        if existing is None:
            schema = assign_fresh_schema_ids(Catalog._convert_schema_if_needed(target))
            # a table's metadata before the catalog has it (a REST catalog stages it without
            # creating it); the commit creates it, or fails when another run created it first
            self.create = catalog.create_table_transaction(
                self.table_name,
                schema,
                partition_spec=_partition_spec(schema, self.manager.partition_by),
                properties=NO_CATALOG_RETRIES,
            )
            self.io = self.create._table.io
            return self.create.table_metadata
        self.io = existing.io
        transaction = existing.transaction()
        if set(target.names) - set(existing.schema().column_names):
            with transaction.update_schema() as update:
                update.union_by_name(target)
        return transaction.table_metadata

    def write(
        self, catalog: Catalog, existing: Table | None, batches: Iterable[pa.RecordBatch]
    ) -> None:
        """Write the batches as data files, `rows_per_file` rows at a time."""
        self.existing = existing
        metadata = self._metadata(catalog, existing)
        try:
            _check_pyarrow_schema_compatible(
                metadata.schema(),
                provided_schema=self.plan.target,
                format_version=metadata.format_version,
            )
        except ValueError as error:
            raise SchemaDriftError(
                f"{self.plan.table_label} ({self.plan.partition_label}): the rows do not fit "
                f"Iceberg table {self.table_name}: {error}. Change the column back at the "
                "source, or write to a new table (asset_name)."
            ) from None
        self.written_schema, self.written_spec = metadata.schema(), metadata.spec()
        write_uuid, counter = uuid.uuid4(), itertools.count(0)
        chunk: list[pa.RecordBatch] = []
        rows = held = 0

        def flush() -> None:
            table = pa.Table.from_batches(chunk, schema=self.plan.target)
            chunk.clear()
            if table.num_rows:
                self.data_files.extend(data_files(metadata, table, self.io, write_uuid, counter))

        for batch in batches:
            chunk.append(batch)
            rows += batch.num_rows
            held += batch.nbytes
            if rows >= self.manager.rows_per_file or held >= STAGE_BYTES:
                flush()
                rows = held = 0
        flush()

    def kept_rows(self, columns: list[str], among: pa.Array | None = None) -> pa.Table:
        """`columns` of the table's rows outside the window, which the commit keeps (none for a
        snapshot); with `among`, only those whose first column holds one of its values. Read
        a batch at a time; a column the table lacks comes back as nulls."""
        schema = pa.schema([self.plan.target.field(name) for name in columns])
        table = self.existing
        if table is None or self.plan.window is None or table.current_snapshot() is None:
            return schema.empty_table()
        present = set(table.schema().column_names)
        if among is not None and columns[0] not in present:
            return schema.empty_table()
        scan = table.scan(
            row_filter=Not(days_filter(self.plan.window)),
            selected_fields=tuple(name for name in columns if name in present),
        )
        kept = []
        reader = scan.to_arrow_batch_reader()
        for batch in reader:
            if among is not None:
                batch = batch.filter(pc.is_in(batch.column(columns[0]), value_set=among))
            kept.append(batch)
        return conform(pa.Table.from_batches(kept, schema=reader.schema), schema)

    def abort(self) -> None:
        """Delete the written data files (best effort: no snapshot names them either way)."""
        self.aborted = True
        self._delete(self.data_files)
        self.data_files = []

    def _delete(self, files: Iterable[DataFile]) -> None:
        for data_file in files:
            # best effort: an orphan left behind is harmless
            with contextlib.suppress(OSError):
                self.io.delete(data_file.file_path)

    def commit(self) -> dict[str, Any]:
        """One overwrite snapshot: the window's files out, the staged files in (planned again
        when another writer committed first)."""
        if self.aborted:
            raise IngestionError(f"{self.plan.table_label}: the staged write was aborted")
        plan = self.plan
        catalog = self.manager.catalog()
        committed: Table | None = None
        for number in range(1, MAX_COMMIT_ATTEMPTS + 1):
            rewritten: list[DataFile] = []
            try:
                transaction, base = self._transaction(catalog, first=number == 1)
                rewritten = self._overwrite(transaction, base)
                committed = transaction.commit_transaction()
                break
            except (CommitFailedException, TableAlreadyExistsError, ValidationException):
                self._delete(rewritten)
                if number == MAX_COMMIT_ATTEMPTS:
                    self.abort()
                    raise
                self.request.log.info(
                    f"{plan.table_label} {plan.partition_label}: another run committed to "
                    f"{self.table_name} first; planning again on its snapshot (attempt "
                    f"{number + 1} of {MAX_COMMIT_ATTEMPTS})"
                )
                time.sleep(random.uniform(0.05, 0.25) * number)
            except BaseException:
                self._delete(rewritten)
                self.abort()
                raise
        assert committed is not None
        written, self.data_files = len(self.data_files), []
        return self._metadata_of(committed, written)

    def _transaction(self, catalog: Catalog, first: bool) -> tuple[Transaction, Table | None]:
        """A transaction on the table's current snapshot with the staged schema applied, and the
        table it starts from (None: the table is created by it)."""
        if first and self.create is not None:
            return self.create, None
        table = catalog.load_table(self.table_name)
        if table.properties.get("commit.retry.num-retries") != "0":
            with table.transaction() as settings:
                settings.set_properties(NO_CATALOG_RETRIES)
            table = catalog.load_table(self.table_name)
        transaction = table.transaction()
        if set(self.plan.target.names) - set(table.schema().column_names):
            with transaction.update_schema() as update:
                update.union_by_name(self.plan.target)
        assert self.written_schema is not None
        metadata = transaction.table_metadata
        if not _same_fields(self.written_schema, metadata.schema()) or (
            self.written_spec is not None and not metadata.spec().compatible_with(self.written_spec)
        ):
            raise IngestionError(
                f"{self.plan.table_label} ({self.plan.partition_label}): Iceberg table "
                f"{self.table_name} changed its schema or partitioning while this run wrote; "
                "nothing was committed: run it again"
            )
        return transaction, table

    def _overwrite(self, transaction: Transaction, table: Table | None) -> list[DataFile]:
        """Stage the snapshot in `transaction`; the files it wrote to keep the rows outside the
        window of files it removes."""
        window = days_filter(self.plan.window)
        removed: list[DataFile] = []
        rewritten: list[DataFile] = []
        if table is not None and table.current_snapshot() is not None:
            strict = _StrictMetricsEvaluator(table.schema(), window)
            counter = itertools.count(0)
            for task in table.scan(row_filter=window).plan_files():
                removed.append(task.file)
                if self.plan.window is None or (not task.delete_files and strict.eval(task.file)):
                    continue
                # the file also holds rows outside the window: write those again
                kept = ArrowScan(
                    table_metadata=table.metadata,
                    io=table.io,
                    projected_schema=table.schema(),
                    row_filter=Not(window),
                ).to_table(tasks=[task])
                if kept.num_rows:
                    rewritten.extend(
                        data_files(
                            transaction.table_metadata, kept, table.io, uuid.uuid4(), counter
                        )
                    )
        properties = {
            "ingestion.run-id": self.request.run_id,
            "ingestion.partitions": partitions_text(self.plan),
        }
        with transaction.update_snapshot(snapshot_properties=properties).overwrite() as snapshot:
            for data_file in removed:
                snapshot.delete_data_file(data_file)
            for data_file in [*rewritten, *self.data_files]:
                snapshot.append_data_file(data_file)
        return rewritten

    def _metadata_of(self, table: Table, written: int) -> dict[str, Any]:
        plan = self.plan
        snapshot = table.current_snapshot()
        summary = (
            dict(snapshot.summary.additional_properties) if snapshot and snapshot.summary else {}
        )
        elapsed = time.monotonic() - self.started
        self.request.log.info(
            f"{plan.table_label} {plan.partition_label}: wrote {plan.rows:,} rows in "
            f"{written:,} data files as Iceberg snapshot "
            f"{snapshot.snapshot_id if snapshot else None} in {elapsed:.2f} s"
        )
        return {
            "dagster/row_count": int(summary.get("total-records", plan.rows)),
            "rows_written": plan.rows,
            "dagster/column_schema": column_schema(table.schema().as_arrow()),
            "dagster/table_name": self.table_name,
            **write_timing_metadata(plan, elapsed),
            "data_files_written": written,
            "iceberg_snapshot_id": snapshot.snapshot_id if snapshot else None,
            "iceberg_operation": str(snapshot.summary.operation.value)
            if snapshot and snapshot.summary
            else None,
            "iceberg_summary": MetadataValue.json(summary),
            "iceberg_added_records": int(summary.get("added-records", 0)),
            "iceberg_deleted_records": int(summary.get("deleted-records", 0)),
            "partition_row_counts": MetadataValue.json(
                {str(day): n for day, n in sorted(plan.rows_by_day.items())}
            ),
        }
