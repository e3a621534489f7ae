"""JSON records to Arrow: declared field types, exact coercion, the window filter, inference.

A page is converted column by column: each declared field's values go to Arrow as they are, and
the kind Arrow infers for them (every value an integer, a text, a number, ...) decides whether an
Arrow cast means what the record coercer means: integers cast to the declared width (an overflow
fails), decimals from texts or integers through their digits (exact or an error, never through a
float), date-times from ISO texts of the forms both parsers read alike (a source zone's local
times through `assume_timezone`, refusing the skipped and repeated ones), and the window filter
as a comparison of the column. A column in another form (a number in a text field, an offset
into a naive column, a `json` field) goes value by value through the coercer; a page where any
value fails goes record by record through the same coercers, so a bad value is reported with its
record's key and field, and fails the run or is kept for the stream's `_rejected` table
(`on_invalid`). Measured on the demo API's pages of 1,000 SalesOrderDetail records (11 fields):
4.2 ms a page converted with per-value coercers, 1.2 ms now; tests check that both paths give the
same batch or the same error for any page (hypothesis). Records whose partition field falls
outside the window fail the read with a sample of their values (`outside_window: fail`, the
default: the API misread the window parameters, so what it sent for the window cannot be trusted
to be the window), or are dropped and counted (`drop`, for an API known to ignore the filter);
either way they never land in another day. No HTTP here: this module is the pure core the reader
feeds pages into.
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.stream import RejectedRecord
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import FIELD_TYPE, StreamSpec

OUTSIDE_SAMPLE_SIZE = 5


class OutsideWindowError(SourceError):
    """Records whose partition field is outside the window asked for: the API misread it."""


def outside_window_error(
    label: str, stream: StreamSpec, window: PartitionWindow, outside: int, sample: Sequence[Any]
) -> OutsideWindowError:
    """The error for `outside` records of a window, with a sample of their partition values."""
    shown = ", ".join(str(value) for value in sample[:OUTSIDE_SAMPLE_SIZE])
    return OutsideWindowError(
        f"{label}: the API answered {outside} record(s) whose {stream.partition_field} is "
        f"outside the window [{window.start.isoformat()}, {window.end.isoformat()}) (e.g. "
        f"{shown}); nothing was written. The API misreads the window: check the stream's "
        "window parameters (`params`: the placeholder and its format, e.g. "
        "`{start:%Y-%m-%dT%H:%M:%S}` for an API that compares text, `{end_inclusive}` for an "
        "inclusive upper bound), or set `outside_window: drop` on the stream if the API is "
        "known to ignore the filter."
    )


class RecordError(ValueError):
    """A value that does not fit its declared type."""

    def __init__(self, field_name: str, value: Any, reason: str) -> None:
        super().__init__(f"field {field_name}: {reason}")
        self.field_name, self.value, self.reason = field_name, value, reason


def arrow_field_type(kind: str) -> pa.DataType:
    """A declared field type (`decimal(19,4)`, `timestamp_tz`, ...) as an Arrow type."""
    match = FIELD_TYPE.match(kind)
    if match is None:
        raise ValueError(f"unknown field type {kind}")
    if match.group(2):
        return pa.decimal128(int(match.group(2)), int(match.group(3)))
    return {
        "string": pa.string(),
        "json": pa.string(),
        "bool": pa.bool_(),
        "date": pa.date32(),
        "timestamp": pa.timestamp("us"),
        "timestamp_tz": pa.timestamp("us", "UTC"),
        "int8": pa.int8(),
        "int16": pa.int16(),
        "int32": pa.int32(),
        "int64": pa.int64(),
        "float32": pa.float32(),
        "float64": pa.float64(),
    }[kind]


def _parse_datetime(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    if not isinstance(value, str):
        raise ValueError("expected an ISO 8601 date-time string")
    return datetime.datetime.fromisoformat(value.strip())


def coercer(kind: str, zone: ZoneInfo) -> Callable[[Any], Any]:
    """A function from a JSON value to the Python value Arrow stores for `kind`; raises ValueError."""
    arrow = arrow_field_type(kind)
    if kind == "json":
        return lambda value: json.dumps(value, ensure_ascii=False, sort_keys=True)
    if kind == "string":

        def text(value: Any) -> str:
            if isinstance(value, dict | list):
                raise ValueError("expected text, got a nested object (declare it as json)")
            return value if isinstance(value, str) else json.dumps(value)

        return text
    if kind == "bool":

        def boolean(value: Any) -> bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise ValueError("expected true or false")

        return boolean
    if pa.types.is_integer(arrow):
        low, high = -(2 ** (arrow.bit_width - 1)), 2 ** (arrow.bit_width - 1) - 1

        def integer(value: Any) -> int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError("expected a whole number")
            number = int(value) if not isinstance(value, str) else int(value.strip())
            if not low <= number <= high:
                raise ValueError(f"{number} is out of range for {kind}")
            return number

        return integer
    if pa.types.is_floating(arrow):
        return lambda value: float(value) if not isinstance(value, bool) else _fail("a number")
    if pa.types.is_decimal(arrow):
        exponent = decimal.Decimal(1).scaleb(-arrow.scale)
        limit = decimal.Decimal(10) ** (arrow.precision - arrow.scale)
        exact_digits = decimal.Context(prec=decimal.MAX_PREC, traps=[decimal.Inexact])

        def exact(value: Any) -> decimal.Decimal:
            if isinstance(value, bool):
                raise ValueError("expected a decimal number")
            try:
                number = decimal.Decimal(str(value).strip())
            except decimal.InvalidOperation:
                # its own message is `[<class 'decimal.ConversionSyntax'>]`
                raise ValueError("expected a decimal number") from None
            if not number.is_finite():
                raise ValueError("not a finite number")
            if number and number.adjusted() >= arrow.precision - arrow.scale:
                raise ValueError(f"{number} does not fit decimal({arrow.precision},{arrow.scale})")
            try:
                # as many digits as the value has: 28 (the default) would refuse decimal(38,s)
                quantized = number.quantize(exponent, context=exact_digits)
            except decimal.Inexact:
                raise ValueError(f"{number} has more than {arrow.scale} decimal places") from None
            if abs(quantized) >= limit:
                raise ValueError(f"{number} does not fit decimal({arrow.precision},{arrow.scale})")
            return quantized

        return exact
    if kind == "date":
        return lambda value: datetime.date.fromisoformat(str(value).strip()[:10])
    if kind == "timestamp":

        def local(value: Any) -> datetime.datetime:
            moment = _parse_datetime(value)
            # an instant with an offset becomes the source zone's local time, like a naive column
            return moment.astimezone(zone).replace(tzinfo=None) if moment.tzinfo else moment

        return local

    def instant(value: Any) -> datetime.datetime:
        moment = _parse_datetime(value)
        return (moment if moment.tzinfo else moment.replace(tzinfo=zone)).astimezone(datetime.UTC)

    return instant


def _fail(what: str) -> Any:
    raise ValueError(f"expected {what}")


@dataclass
class ConversionStatistics:
    """What happened to the records of a run."""

    records: int = 0
    outside_window: int = 0
    rejected: list[RejectedRecord] = field(default_factory=list)

    def reset(self) -> None:
        """Back to nothing seen, for a window read again from its first page."""
        self.records = self.outside_window = 0
        # cleared in place: the stream handed this list to its writer already
        self.rejected.clear()


# the date-time texts both Arrow's cast and `datetime.fromisoformat` read, to the same value:
# seconds given (fractions up to microseconds), and an offset written `Z` or `+hh:mm`
_NAIVE_TEXT = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?$"
_OFFSET_TEXT = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,6})?(Z|[+-]\d{2}:\d{2})$"
_DATE_TEXT = r"^\d{4}-\d{2}-\d{2}$"
# Python's datetime stops at years 1 and 9999; Arrow's timestamps do not
_FIRST_MOMENT = datetime.datetime(1, 1, 1)
_LAST_MOMENT = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999)


def _all_match(texts: pa.Array, pattern: str) -> bool:
    return bool(pc.all(pc.match_substring_regex(texts, pattern)).as_py() is not False)


def _within_python_years(moments: pa.Array) -> bool:
    if moments.null_count == len(moments):
        return True
    bounds = pc.min_max(moments.cast(pa.int64()))
    low = pa.scalar(_FIRST_MOMENT, pa.timestamp("us")).cast(pa.int64()).as_py()
    high = pa.scalar(_LAST_MOMENT, pa.timestamp("us")).cast(pa.int64()).as_py()
    return bool(low <= bounds["min"].as_py() and bounds["max"].as_py() <= high)


def _timestamp_column(texts: pa.Array, kind: pa.TimestampType, zone: ZoneInfo) -> pa.Array | None:
    """Date-time texts as Arrow casts them, where that is what the record coercer gives; None
    for a column of other forms (local times of another zone, an offset into a naive column)."""
    if kind.tz is None:
        # an offset is converted to the source zone's local time: the coercer does that
        if not _all_match(texts, _NAIVE_TEXT):
            return None
        moments = texts.cast(kind)
    elif _all_match(texts, _OFFSET_TEXT):
        moments = texts.cast(kind)
    elif _all_match(texts, _NAIVE_TEXT):
        local = texts.cast(pa.timestamp("us"))
        if str(zone) == "UTC":
            moments = local.cast(kind)
        else:
            # a time that the zone's clock changes skip or repeat goes the coercer's way
            moments = pc.assume_timezone(
                local, str(zone), ambiguous="raise", nonexistent="raise"
            ).cast(kind)
    else:
        return None
    return moments if _within_python_years(moments) else None


def _plain_column(
    raw: list[Any],
    kind: pa.DataType,
    coerce: Callable[[Any], Any],
    zone: ZoneInfo,
    by_arrow: bool = True,
) -> pa.Array | None:
    """A column converted by Arrow where the JSON kinds of its values (as Arrow infers them:
    every value an integer, a text, ...) have one meaning for the declared type: exact or an
    error, never rounded, and the same value the record coercer gives. Other columns go value by
    value through that coercer. None when a value fails: the record path names it."""
    try:
        found = None
        if by_arrow:
            try:
                found = pa.array(raw)
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                # mixed kinds (a number and a text), or an integer beyond 64 bits
                found = None
        array = None if found is None else _arrow_column(found, kind, zone)
        if array is None:
            array = pa.array([None if value is None else coerce(value) for value in raw], kind)
        return array
    except (ValueError, TypeError, ArithmeticError, OverflowError, pa.ArrowException):
        return None


def _arrow_column(found: pa.Array, kind: pa.DataType, zone: ZoneInfo) -> pa.Array | None:
    """`found` (the values as Arrow inferred them) cast to `kind`, or None where the cast could
    mean something else than the record coercer (raises where the coercer would too)."""
    kinds = found.type
    if pa.types.is_null(kinds):
        return pa.nulls(len(found), kind)
    if pa.types.is_string(kind) and pa.types.is_string(kinds):
        return found
    if pa.types.is_integer(kind) and pa.types.is_int64(kinds):
        return found.cast(kind)
    if pa.types.is_boolean(kind) and pa.types.is_boolean(kinds):
        return found
    if pa.types.is_floating(kind) and pa.types.is_float64(kinds):
        return found.cast(kind, safe=False)
    if pa.types.is_decimal(kind) and pa.types.is_string(kinds):
        return found.cast(kind)
    if pa.types.is_decimal(kind) and pa.types.is_int64(kinds):
        # through the digits: a cast from int64 wants a precision of 19 and more
        return found.cast(pa.string()).cast(kind)
    if pa.types.is_timestamp(kind) and pa.types.is_string(kinds):
        assert isinstance(kind, pa.TimestampType)
        return _timestamp_column(found, kind, zone)
    if pa.types.is_date32(kind) and pa.types.is_string(kinds):
        if not _all_match(found, _DATE_TEXT):
            return None
        days = found.cast(kind)
        return days if _within_python_years(days.cast(pa.timestamp("us"))) else None
    return None


class RecordConverter:
    """Records (dicts) -> Arrow batches of the declared schema; bad records fail or are rejected."""

    def __init__(
        self,
        stream: StreamSpec,
        zone: ZoneInfo,
        window: PartitionWindow | None,
        label: str,
    ) -> None:
        assert stream.fields is not None
        self.stream, self.window, self.label = stream, window, label
        self.schema = pa.schema(
            [pa.field(name, arrow_field_type(kind)) for name, kind in stream.fields.items()]
        )
        self.zone, self.kinds = zone, dict(stream.fields)
        self.coercers = {name: coercer(kind, zone) for name, kind in stream.fields.items()}
        self.statistics = ConversionStatistics()

    def _key(self, record: Mapping[str, Any]) -> str:
        if not self.stream.primary_key:
            return "(no primary key declared)"
        return ", ".join(f"{name}={record.get(name)!r}" for name in self.stream.primary_key)

    def _in_window(self, value: Any) -> bool:
        if self.window is None or value is None:
            return True
        if isinstance(value, datetime.datetime) and value.tzinfo is not None:
            return bool(self.window.start <= value < self.window.end)
        if isinstance(value, datetime.datetime):
            start = self.window.start.replace(tzinfo=None)
            return bool(start <= value < self.window.end.replace(tzinfo=None))
        return bool(self.window.start.date() <= value < self.window.end.date())

    def convert(self, records: Sequence[Any]) -> pa.RecordBatch:
        """One page's records as a batch; records outside the window are dropped and counted."""
        batch = self._convert_columns(records)
        if batch is not None:
            return batch
        return self._convert_records(records)

    def _convert_columns(self, records: Sequence[Any]) -> pa.RecordBatch | None:
        """The page converted column by column, or None when a value fails (or the partition
        field is empty), so the record-by-record path names the record and field."""
        if not all(type(record) is dict for record in records):
            return None
        arrays = []
        partition: pa.Array | None = None
        partition_raw: list[Any] = []
        for field_spec in self.schema:
            name = field_spec.name
            raw = [record.get(name) for record in records]
            array = _plain_column(
                raw,
                field_spec.type,
                self.coercers[name],
                self.zone,
                by_arrow=self.kinds[name] != "json",
            )
            if array is None:
                return None
            if name == self.stream.partition_field:
                if array.null_count:
                    return None
                partition, partition_raw = array, raw
            arrays.append(array)
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self.statistics.records += len(records)
        if partition is not None and self.window is not None:
            inside = self._inside(partition)
            outside = pc.indices_nonzero(pc.invert(inside)).to_pylist()
            if outside:
                self._outside([partition_raw[index] for index in outside])
                batch = batch.filter(inside)
        return batch

    def _inside(self, values: pa.Array) -> pa.Array:
        """Which partition values fall in the window (the columnar `_in_window`)."""
        assert self.window is not None
        kind = values.type
        if pa.types.is_timestamp(kind) and kind.tz is not None:
            start: Any = self.window.start
            end: Any = self.window.end
        elif pa.types.is_timestamp(kind):
            start = self.window.start.replace(tzinfo=None)
            end = self.window.end.replace(tzinfo=None)
        else:
            start, end = self.window.start.date(), self.window.end.date()
        low, high = pa.scalar(start, kind), pa.scalar(end, kind)
        return pc.and_(pc.greater_equal(values, low), pc.less(values, high))

    def _outside(self, values: Sequence[Any]) -> None:
        """Records outside the window: fail with a sample, or count them as dropped."""
        if self.stream.outside_window == "fail" and self.window is not None:
            raise outside_window_error(self.label, self.stream, self.window, len(values), values)
        self.statistics.outside_window += len(values)

    def _convert_records(self, records: Sequence[Any]) -> pa.RecordBatch:
        columns: dict[str, list[Any]] = {name: [] for name in self.schema.names}
        partition_field = self.stream.partition_field
        outside: list[Any] = []
        for record in records:
            self.statistics.records += 1
            if not isinstance(record, Mapping):
                self._invalid(record, "(record)", "a record must be a JSON object", None)
                continue
            try:
                values = self._coerce(record)
            except RecordError as error:
                self._invalid(record, error.field_name, error.reason, error.value)
                continue
            if partition_field is not None:
                if values[partition_field] is None:
                    self._invalid(record, partition_field, "the partition field is empty", None)
                    continue
                if not self._in_window(values[partition_field]):
                    outside.append(record.get(partition_field))
                    continue
            for name, value in values.items():
                columns[name].append(value)
        if outside:
            self._outside(outside)
        return pa.RecordBatch.from_pydict(columns, schema=self.schema)

    def _coerce(self, record: Mapping[str, Any]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, coerce in self.coercers.items():
            raw = record.get(name)
            if raw is None:
                values[name] = None
                continue
            try:
                values[name] = coerce(raw)
            except (ValueError, TypeError, ArithmeticError) as error:
                raise RecordError(name, raw, str(error) or type(error).__name__) from None
        return values

    def _invalid(self, record: Any, field_name: str, reason: str, value: Any) -> None:
        shown = f" value {value!r}" if value is not None else ""
        if self.stream.on_invalid == "fail":
            raise SourceError(
                f"{self.label}: record {self._key(record) if isinstance(record, Mapping) else ''} "
                f"field {field_name}:{shown} {reason}. Fix the data at the API, declare the "
                "field's type to match it, or set `on_invalid: quarantine` on the stream to "
                "keep such records in its _rejected table."
            )
        day = self.window.first_day if self.window is not None else None
        self.statistics.rejected.append(
            RejectedRecord(
                record=json.dumps(record, ensure_ascii=False, sort_keys=True, default=str),
                field=field_name,
                reason=f"{shown.strip()} {reason}".strip(),
                day=day,
            )
        )


def infer_table(
    pages: Sequence[Sequence[Any]], partition_field: str | None, zone: ZoneInfo
) -> pa.Table:
    """Without declared fields: infer each page, widen across pages, parse the partition field."""
    tables = []
    for records in pages:
        if records:
            tables.append(pa.Table.from_pylist([dict(record) for record in records]))
    if not tables:
        return pa.table({})
    schema = pa.unify_schemas([table.schema for table in tables], promote_options="permissive")
    table = pa.concat_tables(
        [t.select([n for n in schema.names if n in t.schema.names]) for t in tables],
        promote_options="permissive",
    )
    if partition_field and partition_field in table.schema.names:
        local = coercer("timestamp", zone)
        parsed = pa.array(
            [None if v is None else local(v) for v in table.column(partition_field).to_pylist()],
            pa.timestamp("us"),
        )
        table = table.set_column(
            table.schema.get_field_index(partition_field), partition_field, parsed
        )
    return table


def within_window(
    table: pa.Table, partition_field: str | None, window: PartitionWindow | None
) -> pa.Table:
    """The rows whose (local, naive) partition value falls in the window."""
    if window is None or not partition_field or partition_field not in table.schema.names:
        return table
    values = table.column(partition_field)
    start = pa.scalar(window.start.replace(tzinfo=None), pa.timestamp("us"))
    end = pa.scalar(window.end.replace(tzinfo=None), pa.timestamp("us"))
    keep = pc.and_(pc.greater_equal(values, start), pc.less(values, end))
    return table.filter(pc.fill_null(keep, True))


def outside_window_values(
    table: pa.Table, partition_field: str | None, window: PartitionWindow | None
) -> list[Any]:
    """The partition values (as ISO text) of the rows `within_window` leaves out, a sample."""
    if window is None or not partition_field or partition_field not in table.schema.names:
        return []
    values = table.column(partition_field)
    start = pa.scalar(window.start.replace(tzinfo=None), pa.timestamp("us"))
    end = pa.scalar(window.end.replace(tzinfo=None), pa.timestamp("us"))
    keep = pc.fill_null(pc.and_(pc.greater_equal(values, start), pc.less(values, end)), True)
    outside = values.filter(pc.invert(keep)).slice(0, OUTSIDE_SAMPLE_SIZE).to_pylist()
    return [value.isoformat() for value in outside]
