"""Batches as a reader decoded them, conformed to the file's columns: exact types, misfits rescued.

A file's columns are fixed by its first batch: the declared schema's columns first (in their order
and types), then the file's other columns with the types the first batch shows. Text formats (CSV,
TSV, XML) infer a text column from the first batch's values: int64 or float64 (unless a value has
a leading zero: codes like `007` stay text), bool, date32, timestamp[us], timestamp[us, UTC] when
every value carries a zone offset, else string; an all-null column is string, never Arrow's `null`
type. JSON and Excel values carry their kind (number, string, date...) and are typed by it.

Text is converted with pyarrow's casts, never through float: `12.3456` into `decimal(19,4)` is
exact; a timestamp with an offset into a zoned type is that instant; one without an offset is taken
to be in the column's zone. A value that does not fit its column becomes null and, with `rescue`,
its original text goes into `_rescued_data` (a JSON object `{"column": "text"}`, null when nothing in
the row was rescued), as Databricks Auto Loader does; columns first seen after the first batch go
there too. Finding the misfits stays columnar: a cheap regex first removes values no cast could
accept, then a failing cast is split in halves until each misfit stands alone (log n casts each).
Only the rescued rows are touched one by one, to write their JSON.
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ingestion_assets.sources.files.formats import MalformedFileError, ReadReport

RESCUED_COLUMN = "_rescued_data"

_CAST_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError, ValueError)

# Each pattern admits every text pyarrow's cast to that kind could accept (and more): what it
# rejects is certainly a misfit, without trying a cast.
_INT_TEXT = r"^[+-]?(?:0[xX])?[0-9a-fA-F]+$"
_FLOAT_TEXT = r"^[+-]?[0-9a-zA-Z.]+(?:[eE][+-]?[0-9]+)?$"
_DECIMAL_TEXT = r"^[+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?$"
_TEMPORAL_TEXT = r"^[0-9TtZz :.,+-]+$"
_OFFSET_TEXT = r"\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:[Zz]|[+-]\d{2}(?::?\d{2})?)$"
_LEADING_ZERO = r"^[+-]?0[0-9]"


def _is_text(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_string(data_type) or pa.types.is_large_string(data_type))


def _is_nested(data_type: pa.DataType) -> bool:
    return bool(pa.types.is_nested(data_type))


def infer_text_type(values: pa.Array) -> pa.DataType:
    """The narrowest of int64, float64, bool, date32, timestamp[us](, UTC) all values cast to."""
    present = pc.drop_null(values)
    if len(present) == 0:
        return pa.string()
    candidates: list[pa.DataType] = [pa.int64(), pa.float64(), pa.bool_(), pa.date32()]
    if pc.all(pc.match_substring_regex(present, _OFFSET_TEXT)).as_py():
        candidates.append(pa.timestamp("us", tz="UTC"))
    else:
        candidates.append(pa.timestamp("us"))
    for candidate in candidates:
        numeric = pa.types.is_integer(candidate) or pa.types.is_floating(candidate)
        if numeric and pc.any(pc.match_substring_regex(present, _LEADING_ZERO)).as_py():
            continue
        try:
            _convert(present, candidate)
        except (*_CAST_ERRORS, pa.ArrowNotImplementedError):
            continue
        return candidate
    return pa.string()


def rows_without_columns(rows: int) -> pa.Table:
    """A table of `rows` rows and no columns: records without fields are rows all the same."""
    return pa.table({"_": pa.nulls(rows)}).drop_columns(["_"])


def python_column(values: Sequence[object]) -> tuple[pa.Array, pa.DataType]:
    """Decoded JSON or Excel values as text, with the type their kinds suggest."""
    kinds = {type(value) for value in values if value is not None}
    text = pa.array(
        [None if value is None else python_text(value) for value in values], pa.string()
    )
    return text, _python_type(kinds, values)


def _python_type(kinds: set[type], values: Sequence[object]) -> pa.DataType:
    if kinds == {bool}:
        return pa.bool_()
    if kinds and kinds <= {int, float, decimal.Decimal}:
        integral = all(
            isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            for value in values
            if value is not None
        )
        return pa.int64() if integral else pa.float64()
    if kinds == {datetime.datetime}:
        zones = {
            value.tzinfo is not None for value in values if isinstance(value, datetime.datetime)
        }
        if zones == {True}:
            return pa.timestamp("us", tz="UTC")
        return pa.timestamp("us") if zones == {False} else pa.string()
    if kinds == {datetime.date}:
        return pa.date32()
    if kinds == {datetime.time}:
        return pa.time64("us")
    return pa.string()


def python_text(value: object) -> str:
    """A decoded value as text: numbers and dates as written, nested values as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int | decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return orjson.dumps(value, default=str).decode()


def _convert(values: pa.Array, target: pa.DataType) -> pa.Array:
    """`values` as `target`, raising when any value does not fit."""
    if values.type == target:
        return values
    if _is_text(values.type):
        if pa.types.is_timestamp(target) and target.tz is not None:
            return _text_to_zoned_timestamp(values, target)
        if pa.types.is_time(target):
            stamps = pc.cast(
                pc.binary_join_element_wise("1970-01-01T", values, ""), pa.timestamp("ns")
            )
            return pc.cast(stamps, target)
        if _is_nested(target):
            decoded = [None if text is None else json.loads(text) for text in values.to_pylist()]
            return pa.array(decoded, target)
    if _is_text(target) and _is_nested(values.type):
        return pa.array(
            [None if value is None else python_text(value) for value in values.to_pylist()],
            target,
        )
    return pc.cast(values, target, safe=True)


def _text_to_zoned_timestamp(values: pa.Array, target: pa.TimestampType) -> pa.Array:
    with_offset = pc.fill_null(pc.match_substring_regex(values, _OFFSET_TEXT), False)
    null_text = pa.scalar(None, values.type)
    zoned = pc.cast(pc.if_else(with_offset, values, null_text), target)
    naive = pc.cast(pc.if_else(with_offset, null_text, values), pa.timestamp(target.unit))
    if target.tz in ("UTC", "+00:00", "Z"):
        local = pc.cast(naive, target)
    else:
        local = pc.assume_timezone(naive, target.tz, ambiguous="raise", nonexistent="raise")
    return pc.if_else(with_offset, zoned, local)


def _certain_misfits(values: pa.Array, target: pa.DataType) -> pa.Array | None:
    """Text values that no cast to `target` could accept, or None when that is not known cheaply."""
    if not _is_text(values.type):
        return None
    if pa.types.is_integer(target):
        pattern = _INT_TEXT
    elif pa.types.is_floating(target):
        pattern = _FLOAT_TEXT
    elif pa.types.is_decimal(target):
        pattern = _DECIMAL_TEXT
    elif pa.types.is_temporal(target):
        pattern = _TEMPORAL_TEXT
    else:
        return None
    return pc.fill_null(pc.invert(pc.match_substring_regex(values, pattern)), False)


def convert_rescuing(values: pa.Array, target: pa.DataType) -> tuple[pa.Array, list[int]]:
    """`values` as `target`, with null where a value does not fit, and those values' positions."""
    try:
        return _convert(values, target), []
    except _CAST_ERRORS:
        pass
    except pa.ArrowNotImplementedError:
        return pa.nulls(len(values), target), _valid_positions(values)
    misfit_mask = _certain_misfits(values, target)
    misfits: list[int] = []
    if misfit_mask is not None and pc.any(misfit_mask).as_py():
        misfits = pc.indices_nonzero(misfit_mask).to_pylist()
        values = pc.if_else(misfit_mask, pa.scalar(None, values.type), values)
    parts = _convert_halving(values, target, 0, misfits)
    converted = pa.concat_arrays(parts) if len(parts) > 1 else parts[0]
    return converted, sorted(misfits)


def _convert_halving(
    values: pa.Array, target: pa.DataType, offset: int, misfits: list[int]
) -> list[pa.Array]:
    try:
        return [_convert(values, target)]
    except _CAST_ERRORS:
        if len(values) == 1:
            misfits.append(offset)
            return [pa.nulls(1, target)]
    half = len(values) // 2
    return _convert_halving(values.slice(0, half), target, offset, misfits) + _convert_halving(
        values.slice(half), target, offset + half, misfits
    )


def _valid_positions(values: pa.Array) -> list[int]:
    return [int(index) for index in pc.indices_nonzero(pc.is_valid(values)).to_pylist()]


def as_text(values: pa.Array) -> pa.Array:
    """Values as the text a rescue keeps: strings as they are, nested values as JSON, bytes as hex."""
    if _is_text(values.type):
        return values
    if _is_nested(values.type):
        return _convert(values, pa.string())
    if pa.types.is_binary(values.type) or pa.types.is_fixed_size_binary(values.type):
        return pa.array([None if value is None else value.hex() for value in values.to_pylist()])
    return pc.cast(values, pa.string())


class Conformer:
    """Conforms one file's raw batches to its columns; the first batch fixes the columns."""

    def __init__(
        self,
        file_name: str,
        declared: pa.Schema | None,
        *,
        rescue: bool,
        infer_text: bool,
        report: ReadReport,
    ) -> None:
        self.file_name = file_name
        self.declared = declared
        self.rescue = rescue
        self.infer_text = infer_text
        self.report = report
        self.target: pa.Schema | None = None

    def output_schema(self) -> pa.Schema:
        """The schema of every batch this file yields (the declared one until a batch was seen)."""
        schema = self.target if self.target is not None else (self.declared or pa.schema([]))
        if self.rescue:
            schema = schema.append(pa.field(RESCUED_COLUMN, pa.string()))
        return schema

    def conform(
        self,
        raw: pa.Table | pa.RecordBatch,
        row_offset: int,
        hints: Mapping[str, pa.DataType] | None = None,
    ) -> pa.RecordBatch:
        """`raw` as a batch of the file's columns; `row_offset` is its first row's index in the file."""
        if self.target is None:
            self.target = self._first_target(raw, hints or {})
        target = self.target
        columns: list[pa.Array] = []
        rescued: dict[str, tuple[list[int], pa.Array]] = {}
        present_names = set(raw.column_names)
        for field in target:
            if field.name not in present_names:
                columns.append(pa.nulls(raw.num_rows, field.type))
                continue
            values = _single_array(raw.column(field.name))
            converted, misfits = convert_rescuing(values, field.type)
            columns.append(converted)
            if misfits:
                rescued[field.name] = (misfits, values)
        for name in raw.column_names:
            if target.get_field_index(name) == -1 and name != RESCUED_COLUMN:
                values = _single_array(raw.column(name))
                if present := _valid_positions(values):
                    rescued[name] = (present, values)
        if rescued and not self.rescue:
            self._refuse(rescued, row_offset)
        batch_columns = list(columns)
        if self.rescue:
            batch_columns.append(self._rescued_column(raw.num_rows, rescued))
        return pa.RecordBatch.from_arrays(batch_columns, schema=self.output_schema())

    def _first_target(
        self, raw: pa.Table | pa.RecordBatch, hints: Mapping[str, pa.DataType]
    ) -> pa.Schema:
        fields = list(self.declared) if self.declared is not None else []
        known = {field.name for field in fields}
        for name in raw.column_names:
            if name in known or name == RESCUED_COLUMN:
                continue
            values = _single_array(raw.column(name))
            if name in hints:
                data_type = hints[name]
            elif self.infer_text and _is_text(values.type):
                data_type = infer_text_type(values)
            elif pa.types.is_null(values.type):
                data_type = pa.string()
            else:
                data_type = values.type
            fields.append(pa.field(name, data_type))
            known.add(name)
        return pa.schema(fields)

    def _rescued_column(
        self, rows: int, rescued: dict[str, tuple[list[int], pa.Array]]
    ) -> pa.Array:
        if not rescued:
            return pa.nulls(rows, pa.string())
        per_row: dict[int, dict[str, Any]] = {}
        for name, (positions, values) in rescued.items():
            texts = as_text(values.take(pa.array(positions, pa.int64()))).to_pylist()
            for position, text in zip(positions, texts, strict=True):
                per_row.setdefault(position, {})[name] = text
        self.report.rescued_rows += len(per_row)
        rescued_text: list[str | None] = [None] * rows
        for position, fields in per_row.items():
            rescued_text[position] = orjson.dumps(fields).decode()
        return pa.array(rescued_text, pa.string())

    def _refuse(self, rescued: dict[str, tuple[list[int], pa.Array]], row_offset: int) -> None:
        name, (positions, values) = min(rescued.items(), key=lambda item: item[1][0][0])
        text = as_text(values.take(pa.array(positions[:1], pa.int64())))[0].as_py()
        assert self.target is not None
        index = self.target.get_field_index(name)
        expected = (
            f"column '{name}' of type {self.target.field(index).type}"
            if index >= 0
            else (f"a column '{name}' that the file's first batch did not have")
        )
        raise MalformedFileError(
            self.file_name,
            f"row {row_offset + positions[0] + 1}: value {text!r} does not fit {expected}",
            "correct the file, declare a type that holds the value, or read with rescue on "
            f"to keep such values in {RESCUED_COLUMN}",
        )


def _single_array(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        return column.combine_chunks()
    return column
