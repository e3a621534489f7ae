"""Column statistics of a data file, in the JSON of a Delta add action.

Every column gets its null count and, where Delta readers compare values (numbers, booleans,
dates, timestamps, decimals, strings), its min and max, so DuckDB, Spark and delta-rs skip files
on any column, not only on `_partition_date`. They are computed with pyarrow.compute on each row
group as it is written: a pass over data already in memory, no reading back. The JSON follows
what delta-rs's own writer records for the same types (checked against `write_deltalake`):
dates as ISO text, timestamps to the millisecond (`...T12:00:00.123Z` when zone-aware,
`... 12:00:00.123` without a zone), decimals as numbers; binary and nested columns get only null
counts. Bounds are kept true where that writer rounds: a timestamp's max is rounded up to the
millisecond, a decimal is written with every digit, text longer than 32 characters is cut (the
max's last kept character raised by one), and a float column holding NaN or an infinity gets no
bounds at all (nor does a timestamp max in the last millisecond of year 9999)."""

from __future__ import annotations

import datetime
import decimal
import json
import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

# text bounds are cut to this many characters, as Spark does: a long column would bloat the log
STRING_PREFIX = 32
_MILLISECOND = datetime.timedelta(milliseconds=1)


def has_bounds(kind: pa.DataType) -> bool:
    """Whether Delta statistics carry a min and max for a column of this type."""
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_date(kind)
        or pa.types.is_timestamp(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
    )


def _null_counts(values: pa.ChunkedArray | pa.Array) -> Any:
    """A column's null count; for a struct, its fields' counts (a null struct counts as null
    in each), as Delta nests them; None for a list or map, which gets none."""
    kind = values.type
    if pa.types.is_struct(kind):
        chunks = values.chunks if isinstance(values, pa.ChunkedArray) else [values]
        nested: dict[str, Any] = {}
        for index in range(kind.num_fields):
            child = pa.chunked_array(
                [chunk.flatten()[index] for chunk in chunks], type=kind.field(index).type
            )
            count = _null_counts(child)
            if count is not None:
                nested[kind.field(index).name] = count
        return nested
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_map(kind):
        return None
    return values.null_count


def _add_counts(total: Any, more: Any) -> Any:
    if isinstance(total, dict):
        return {name: _add_counts(total[name], more[name]) for name in total}
    return total + more


class FileStatistics:
    """The statistics of one data file, gathered row group by row group as it is written."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.rows = 0
        self.low: dict[str, Any] = {}
        self.high: dict[str, Any] = {}
        self.nulls: dict[str, Any] = {}
        # columns whose values cannot be bounded (a NaN compares above every number in Spark)
        self.unbounded: set[str] = set()

    def add(self, rows: pa.Table) -> None:
        """Take in one row group's rows."""
        self.rows += rows.num_rows
        for column_field in self.schema:
            name = column_field.name
            values = rows.column(name)
            count = _null_counts(values)
            if count is not None:
                self.nulls[name] = (
                    count if name not in self.nulls else _add_counts(self.nulls[name], count)
                )
            if not has_bounds(column_field.type) or name in self.unbounded:
                continue
            if (
                pa.types.is_floating(column_field.type)
                and pc.any(pc.invert(pc.is_finite(values))).as_py()
            ):
                self._unbound(name)
                continue
            bounds = pc.min_max(values)
            try:
                low, high = bounds["min"].as_py(), bounds["max"].as_py()
            except (OverflowError, ValueError):
                # a time beyond Python's years 1..9999: left unbounded rather than failing
                self._unbound(name)
                continue
            if low is None or high is None:
                continue  # only nulls so far
            self.low[name] = low if name not in self.low else min(self.low[name], low)
            self.high[name] = high if name not in self.high else max(self.high[name], high)

    def _unbound(self, name: str) -> None:
        self.unbounded.add(name)
        self.low.pop(name, None)
        self.high.pop(name, None)

    def json(self) -> str:
        """The add action's `stats`: numRecords, minValues, maxValues, nullCount."""
        kinds = {f.name: f.type for f in self.schema}
        minimum = {
            name: _bound(value, kinds[name], upper=False) for name, value in self.low.items()
        }
        maximum = {
            name: _bound(value, kinds[name], upper=True) for name, value in self.high.items()
        }
        return _dumps(
            {
                "numRecords": self.rows,
                "minValues": {name: value for name, value in minimum.items() if value is not None},
                "maxValues": {name: value for name, value in maximum.items() if value is not None},
                "nullCount": self.nulls,
            }
        )


def _bound(value: Any, kind: pa.DataType, upper: bool) -> Any:
    """A min (or max) as Delta's JSON holds it, still a true bound; None when there is none."""
    if pa.types.is_timestamp(kind):
        moment: datetime.datetime = value
        if moment.tzinfo is not None:
            moment = moment.astimezone(datetime.UTC)
        cut = moment.replace(microsecond=moment.microsecond // 1000 * 1000)
        if upper and cut != moment:
            if cut.replace(tzinfo=None) > datetime.datetime.max - _MILLISECOND:
                return None  # the last millisecond of year 9999 has no millisecond above it
            cut += _MILLISECOND
        # isoformat, not strftime: the year keeps its four digits (`0001`, which strftime cuts)
        text = cut.replace(tzinfo=None).isoformat(
            sep="T" if kind.tz is not None else " ",
            timespec="milliseconds" if cut.microsecond else "seconds",
        )
        return text + ("Z" if kind.tz is not None else "")
    if pa.types.is_date(kind):
        day: datetime.date = value
        return day.isoformat()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _text_bound(value, upper)
    return value


def _text_bound(text: str, upper: bool) -> str | None:
    """`text` cut to STRING_PREFIX characters; a cut max has its last character raised by one."""
    if len(text) <= STRING_PREFIX:
        return text
    prefix = text[:STRING_PREFIX]
    if not upper:
        return prefix
    for position in range(STRING_PREFIX - 1, -1, -1):
        code = ord(prefix[position]) + 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000  # surrogates are no characters
        if code <= 0x10FFFF:
            return prefix[:position] + chr(code)
    return None  # every character is the last one: no shorter bound exists


def _dumps(value: Any) -> str:
    """JSON text; a decimal as a number with every digit (json would need a float)."""
    if isinstance(value, dict):
        items = (f"{json.dumps(key)}:{_dumps(item)}" for key, item in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, decimal.Decimal):
        return format(value, "f")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"no JSON number for {value}")  # filtered out before: unbounded
    return json.dumps(value)
