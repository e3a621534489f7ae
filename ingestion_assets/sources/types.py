"""Exact mapping of database column types (as SQLAlchemy reflects them) to Arrow types and arrays."""

from __future__ import annotations

import datetime
import decimal
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.dialects import mssql, mysql, postgresql
from sqlalchemy.types import TypeEngine

# SQL Server reports no precision for its money types; these are their fixed definitions.
MSSQL_MONEY = pa.decimal128(19, 4)
MSSQL_SMALLMONEY = pa.decimal128(10, 4)
# Types SQLAlchemy does not know (hierarchyid, geography, ...) are read as text.
UNKNOWN_AS_TEXT = pa.string()
# the widest Arrow decimal (decimal256)
MAX_DECIMAL_DIGITS = 76
# PostgreSQL's numeric(p, s) holds NaN, which no decimal does (Infinity it refuses)
NOT_A_NUMBER_FIX = (
    "PostgreSQL's numeric NaN is no number a decimal can hold: replace it at the source (e.g. a "
    "view with NULLIF(column, 'NaN')), or read the column as numeric without (precision, scale) "
    "(e.g. a view with column::numeric), which lands as text, NaN included"
)


def _time_unit(precision: int | None) -> str:
    """Fractional-second digits -> Arrow unit: 7 (SQL Server's 100 ns) needs nanoseconds."""
    return "ns" if precision is not None and precision > 6 else "us"


def _integer_type(column_type: sa.Integer, dialect: str) -> pa.DataType:
    unsigned = bool(getattr(column_type, "unsigned", False))
    if isinstance(column_type, mssql.TINYINT):
        return pa.uint8()
    if isinstance(column_type, mysql.TINYINT):
        return pa.uint8() if unsigned else pa.int8()
    if isinstance(column_type, sa.BigInteger):
        return pa.uint64() if unsigned else pa.int64()
    if isinstance(column_type, sa.SmallInteger):
        return pa.uint16() if unsigned else pa.int16()
    if dialect == "sqlite":
        # SQLite's INTEGER holds any 64-bit value whatever the declared name
        return pa.int64()
    return pa.uint32() if unsigned else pa.int32()


def _numeric_type(column_type: sa.Numeric[Any] | sa.Float[Any], dialect: str) -> pa.DataType:
    if isinstance(column_type, sa.Float):
        if isinstance(column_type, sa.Double) or dialect == "sqlite":
            return pa.float64()
        precision = column_type.precision
        if isinstance(column_type, sa.REAL) or (precision is not None and precision <= 24):
            return pa.float32()
        return pa.float64()
    precision, scale = column_type.precision, column_type.scale or 0
    if precision is None:
        # an unconstrained NUMERIC can hold any number of digits: text keeps them all
        return pa.string()
    # PostgreSQL also takes a scale above the precision (numeric(2,5) holds at most 0.00099) and
    # a negative one (numeric(3,-2) holds 99900): the digits a decimal needs for every value
    digits = max(precision, scale) - min(scale, 0)
    scale = max(scale, 0)
    if digits > MAX_DECIMAL_DIGITS:
        # PostgreSQL's numeric(1000, s): more digits than any Arrow decimal, text keeps them all
        return pa.string()
    return pa.decimal128(digits, scale) if digits <= 38 else pa.decimal256(digits, scale)


def mysql_boolean(column_type: TypeEngine[Any]) -> bool:
    """Whether a column is what MySQL/MariaDB store for BOOLEAN and BOOL: a signed TINYINT(1)
    (reflected as `TINYINT(display_width=1)`; the server keeps no other trace of BOOLEAN)."""
    return (
        isinstance(column_type, mysql.TINYINT)
        and column_type.display_width == 1
        and not column_type.unsigned
        and not column_type.zerofill
    )


def arrow_type(
    column_type: TypeEngine[Any], dialect: str, tinyint1_as_bool: bool = True
) -> pa.DataType:
    """The Arrow type that holds every value of a source column exactly (never a float for a
    decimal); with `tinyint1_as_bool`, MySQL's TINYINT(1) is a boolean, as BOOLEAN declares it."""
    if tinyint1_as_bool and mysql_boolean(column_type):
        return pa.bool_()
    if isinstance(column_type, mssql.SMALLMONEY):
        return MSSQL_SMALLMONEY
    if isinstance(column_type, mssql.MONEY):
        return MSSQL_MONEY
    if isinstance(column_type, mssql.BIT | sa.Boolean):
        return pa.bool_()
    if isinstance(column_type, mysql.BIT):
        return pa.bool_() if (column_type.length or 1) == 1 else pa.uint64()
    if isinstance(column_type, sa.Integer):
        return _integer_type(column_type, dialect)
    # SQLAlchemy 2.1's Float is no longer a Numeric subclass
    if isinstance(column_type, sa.Numeric | sa.Float):
        return _numeric_type(column_type, dialect)
    if isinstance(column_type, mssql.DATETIMEOFFSET):
        return pa.timestamp(_time_unit(column_type.precision), "UTC")
    if isinstance(column_type, sa.DateTime):
        precision = getattr(column_type, "precision", None) or getattr(column_type, "fsp", None)
        zone = "UTC" if column_type.timezone else None
        return pa.timestamp(_time_unit(precision), zone)
    if isinstance(column_type, sa.Date):
        return pa.date32()
    if isinstance(column_type, sa.Time):
        precision = getattr(column_type, "precision", None) or getattr(column_type, "fsp", None)
        return pa.time64(_time_unit(precision))
    if isinstance(column_type, sa.LargeBinary | sa.types._Binary):
        return pa.binary()
    if isinstance(column_type, postgresql.ARRAY):
        return pa.list_(arrow_type(column_type.item_type, dialect))
    # strings, uuid, xml, json, enums, intervals, network types, unknown types: text
    return pa.string()


def declared_type(column_type: TypeEngine[Any], dialect: sa.Dialect) -> str:
    """A column's type as the source declares it (`DECIMAL(19, 4)`, `TINYINT(1)`), without its
    character set and collation."""
    try:
        text = str(column_type.compile(dialect=dialect))
    except sa.exc.CompileError:
        # a type SQLAlchemy does not know (hierarchyid, geography, ...): read as text
        return "a type SQLAlchemy does not know, read as text"
    return re.split(r" CHARACTER SET | COLLATE ", text, maxsplit=1)[0]


def _to_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, decimal.Decimal):
        # the way databases print numbers (0.0000001, not Python's 1E-7)
        return format(value, "f")
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    return str(value)


def _text_array(values: Sequence[Any], arrow: pa.DataType) -> pa.Array:
    return pa.array([None if value is None else _to_text(value) for value in values], arrow)


_NANOSECONDS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def _timestamp_array(values: Sequence[Any], arrow: pa.DataType) -> pa.Array:
    # pyodbc connections hand timestamps over as nanoseconds since the epoch (see
    # sources/sql.py), so that 100 ns digits survive; other drivers give datetimes
    if any(isinstance(value, int) for value in values):
        per_unit = _NANOSECONDS_PER_UNIT[arrow.unit]
        if per_unit == 1:
            return pa.array(values, arrow)
        # divided here, not cast from timestamp[ns]: int64 ns ends in 2262, a us column does not
        units: list[int | None] = []
        for value in values:
            if value is None:
                units.append(None)
                continue
            whole, rest = divmod(value, per_unit)
            if rest:
                raise ValueError(
                    f"timestamp {value} ns since the epoch has digits below the column's "
                    f"unit ({arrow.unit})"
                )
            units.append(whole)
        return pa.array(units, arrow)
    return pa.array(values, arrow)


def _date_array(values: Sequence[Any], arrow: pa.DataType) -> pa.Array:
    # some drivers return a datetime at midnight for a DATE column
    return pa.array(
        [value.date() if isinstance(value, datetime.datetime) else value for value in values],
        arrow,
    )


def _uint_array(values: Sequence[Any], arrow: pa.DataType) -> pa.Array:
    # MySQL's BIT(n) arrives as bytes
    return pa.array(
        [int.from_bytes(value, "big") if isinstance(value, bytes) else value for value in values],
        arrow,
    )


# drivers that hand booleans over as text (psqlODBC's default BoolsAsChar=1 gives '1'/'0')
_TEXT_BOOLEANS = {"1": True, "0": False, "t": True, "f": False, "true": True, "false": False}


def _to_bool(value: Any) -> bool:
    if isinstance(value, bytes):
        return value != b"\x00"
    if isinstance(value, str):
        # bool("0") is True: text must be read, never tested for emptiness
        try:
            return _TEXT_BOOLEANS[value.strip().lower()]
        except KeyError:
            raise ValueError(f"{value!r} is not a boolean") from None
    if isinstance(value, int) and value not in (0, 1):
        # a TINYINT(1) holds -128..127: 2 is a number, never True
        raise ValueError(f"{value} is neither 0 nor 1, so it is no boolean")
    return bool(value)


def _bool_array(values: Sequence[Any], arrow: pa.DataType) -> pa.Array:
    return pa.array([None if value is None else _to_bool(value) for value in values], arrow)


def integer_booleans(values: pa.Array) -> pa.Array:
    """Integers 0 and 1 (a TINYINT(1) fetched in bulk) as booleans; any other value raises."""
    other = pc.and_(pc.not_equal(values, 0), pc.not_equal(values, 1))
    if pc.any(other).as_py():
        raise ValueError(
            f"{values.filter(other)[0].as_py()} is neither 0 nor 1, so it is no boolean"
        )
    return pc.not_equal(values, 0)


def _decimal_array(values: Sequence[Any], arrow: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, arrow)
    except pa.ArrowInvalid:
        # Arrow's own message ("The string 'NaN' is not a valid decimal128 number") gives no fix
        for value in values:
            if isinstance(value, decimal.Decimal) and not value.is_finite():
                raise ValueError(f"{value} has no {arrow} value. {NOT_A_NUMBER_FIX}") from None
        raise


ArrayBuilder = Callable[[Sequence[Any]], pa.Array]


def array_builder(arrow: pa.DataType) -> ArrayBuilder:
    """A function that turns one column of driver values into an Arrow array of type `arrow`."""
    if pa.types.is_string(arrow):
        return lambda values: _text_array(values, arrow)
    if pa.types.is_timestamp(arrow):
        return lambda values: _timestamp_array(values, arrow)
    if pa.types.is_date(arrow):
        return lambda values: _date_array(values, arrow)
    if pa.types.is_boolean(arrow):
        return lambda values: _bool_array(values, arrow)
    if pa.types.is_uint64(arrow):
        return lambda values: _uint_array(values, arrow)
    if pa.types.is_decimal(arrow):
        return lambda values: _decimal_array(values, arrow)
    return lambda values: pa.array(values, arrow)
