"""Source column types to Arrow types, and driver values to Arrow arrays, exactly."""

from __future__ import annotations

import datetime
import decimal
import struct
import uuid
from typing import Any

import pyarrow as pa
import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import mssql, mysql, postgresql, sqlite
from sqlalchemy.types import TypeEngine

from ingestion_assets.sources.sql import _timestamp_nanoseconds, _timestamp_offset_nanoseconds
from ingestion_assets.sources.types import (
    array_builder,
    arrow_type,
    declared_type,
    integer_booleans,
)

EPOCH = datetime.datetime(1970, 1, 1)
NS_PER_US = 1_000


# --- SQL Server ---------------------------------------------------------------------------------


def test_mssql_money_types_are_their_fixed_decimals() -> None:
    assert arrow_type(mssql.MONEY(), "mssql") == pa.decimal128(19, 4)
    assert arrow_type(mssql.SMALLMONEY(), "mssql") == pa.decimal128(10, 4)


def test_mssql_uniqueidentifier_xml_variant_and_unknown_types_are_text() -> None:
    assert arrow_type(mssql.UNIQUEIDENTIFIER(), "mssql") == pa.string()
    assert arrow_type(mssql.XML(), "mssql") == pa.string()
    assert arrow_type(mssql.SQL_VARIANT(), "mssql") == pa.string()
    # hierarchyid and geography reflect as NullType: read as text through mssql_select_expression
    assert arrow_type(sa.types.NullType(), "mssql") == pa.string()
    assert arrow_type(mssql.NVARCHAR(50), "mssql") == pa.string()


def test_mssql_datetimeoffset_is_utc_with_the_unit_its_precision_needs() -> None:
    assert arrow_type(mssql.DATETIMEOFFSET(7), "mssql") == pa.timestamp("ns", "UTC")
    assert arrow_type(mssql.DATETIMEOFFSET(3), "mssql") == pa.timestamp("us", "UTC")


def test_mssql_datetime2_keeps_100_ns_only_when_declared() -> None:
    assert arrow_type(mssql.DATETIME2(7), "mssql") == pa.timestamp("ns")
    assert arrow_type(mssql.DATETIME2(3), "mssql") == pa.timestamp("us")


def test_mssql_datetime_and_smalldatetime_are_naive_microsecond_timestamps() -> None:
    # datetime ticks are 1/300 s and smalldatetime is whole minutes: microseconds hold both
    assert arrow_type(mssql.DATETIME(), "mssql") == pa.timestamp("us")
    assert arrow_type(mssql.SMALLDATETIME(), "mssql") == pa.timestamp("us")


def test_mssql_tinyint_is_unsigned_and_bit_is_bool() -> None:
    # SQL Server's tinyint is 0..255
    assert arrow_type(mssql.TINYINT(), "mssql") == pa.uint8()
    assert arrow_type(mssql.BIT(), "mssql") == pa.bool_()


def test_mssql_exact_numerics_are_decimals_of_the_declared_size() -> None:
    assert arrow_type(mssql.NUMERIC(38, 6), "mssql") == pa.decimal128(38, 6)
    assert arrow_type(mssql.DECIMAL(8, 2), "mssql") == pa.decimal128(8, 2)


def test_mssql_real_is_float32_and_float53_is_float64() -> None:
    assert arrow_type(mssql.REAL(), "mssql") == pa.float32()
    assert arrow_type(mssql.FLOAT(53), "mssql") == pa.float64()


def test_mssql_varbinary_is_binary_and_time7_is_nanoseconds() -> None:
    assert arrow_type(mssql.VARBINARY(), "mssql") == pa.binary()
    assert arrow_type(mssql.TIME(7), "mssql") == pa.time64("ns")


# --- PostgreSQL, MySQL/MariaDB, SQLite ----------------------------------------------------------


@pytest.mark.parametrize(
    ("column_type", "dialect", "expected"),
    [
        (postgresql.NUMERIC(), "postgresql", pa.string()),
        (postgresql.NUMERIC(19, 4), "postgresql", pa.decimal128(19, 4)),
        (postgresql.NUMERIC(50, 10), "postgresql", pa.decimal256(50, 10)),
        (postgresql.TIMESTAMP(timezone=True), "postgresql", pa.timestamp("us", "UTC")),
        (postgresql.TIMESTAMP(), "postgresql", pa.timestamp("us")),
        (postgresql.DATE(), "postgresql", pa.date32()),
        (postgresql.ARRAY(sa.Integer()), "postgresql", pa.list_(pa.int32())),
        (postgresql.JSONB(), "postgresql", pa.string()),
        (postgresql.UUID(), "postgresql", pa.string()),
        (postgresql.BYTEA(), "postgresql", pa.binary()),
        (postgresql.BOOLEAN(), "postgresql", pa.bool_()),
        (postgresql.SMALLINT(), "postgresql", pa.int16()),
        (postgresql.INTEGER(), "postgresql", pa.int32()),
        (postgresql.BIGINT(), "postgresql", pa.int64()),
        (postgresql.REAL(), "postgresql", pa.float32()),
        (postgresql.DOUBLE_PRECISION(), "postgresql", pa.float64()),
        (mysql.TINYINT(unsigned=True), "mysql", pa.uint8()),
        (mysql.TINYINT(), "mysql", pa.int8()),
        # what MySQL/MariaDB store for BOOLEAN and BOOL, and reflect for TINYINT(1)
        (mysql.TINYINT(display_width=1), "mysql", pa.bool_()),
        (mysql.TINYINT(display_width=1), "mariadb", pa.bool_()),
        # a number 0..255 (or zero-filled) is no flag, whatever its display width
        (mysql.TINYINT(display_width=1, unsigned=True), "mysql", pa.uint8()),
        (mysql.TINYINT(display_width=1, unsigned=True, zerofill=True), "mysql", pa.uint8()),
        (mysql.TINYINT(display_width=4), "mysql", pa.int8()),
        (mysql.TINYINT(display_width=2), "mysql", pa.int8()),
        (mysql.SMALLINT(unsigned=True), "mysql", pa.uint16()),
        (mysql.INTEGER(unsigned=True), "mysql", pa.uint32()),
        (mysql.BIGINT(unsigned=True), "mysql", pa.uint64()),
        (mysql.BIT(1), "mysql", pa.bool_()),
        (mysql.BIT(8), "mysql", pa.uint64()),
        (mysql.DECIMAL(65, 30), "mysql", pa.decimal256(65, 30)),
        (mysql.DATETIME(fsp=6), "mysql", pa.timestamp("us")),
        (mysql.DOUBLE(), "mysql", pa.float64()),
        (mysql.VARCHAR(20), "mysql", pa.string()),
        (mysql.VARBINARY(20), "mysql", pa.binary()),
        (sqlite.INTEGER(), "sqlite", pa.int64()),
        (sqlite.NUMERIC(), "sqlite", pa.string()),
        (sqlite.DECIMAL(10, 2), "sqlite", pa.decimal128(10, 2)),
        (sqlite.REAL(), "sqlite", pa.float64()),
        (sqlite.DATETIME(), "sqlite", pa.timestamp("us")),
    ],
    ids=lambda value: repr(value) if isinstance(value, TypeEngine) else None,
)
def test_arrow_type_of_other_dialects(
    column_type: TypeEngine[Any], dialect: str, expected: pa.DataType
) -> None:
    assert arrow_type(column_type, dialect) == expected


def test_mysql_tinyint1_is_a_number_when_the_project_file_says_so() -> None:
    assert arrow_type(mysql.TINYINT(display_width=1), "mysql", tinyint1_as_bool=False) == pa.int8()
    # the setting is MySQL's TINYINT(1) only: other booleans stay booleans
    assert arrow_type(postgresql.BOOLEAN(), "postgresql", tinyint1_as_bool=False) == pa.bool_()
    assert arrow_type(mysql.BIT(1), "mysql", tinyint1_as_bool=False) == pa.bool_()


def test_declared_types_are_the_source_s_own_words_without_charset_or_collation() -> None:
    assert declared_type(mysql.TINYINT(display_width=1), mysql.dialect()) == "TINYINT(1)"
    varchar = mysql.VARCHAR(25, charset="utf8mb4", collation="utf8mb4_general_ci")
    assert declared_type(varchar, mysql.dialect()) == "VARCHAR(25)"
    assert declared_type(mysql.DECIMAL(19, 4), mysql.dialect()) == "DECIMAL(19, 4)"
    assert declared_type(mssql.DATETIME2(precision=7), mssql.dialect()) == "DATETIME2(7)"
    assert declared_type(sa.types.NullType(), mssql.dialect()) == (
        "a type SQLAlchemy does not know, read as text"
    )


# --- invariants over every dialect --------------------------------------------------------------

DIALECTS = ("mssql", "postgresql", "mysql", "sqlite")


def _numeric_types() -> st.SearchStrategy[sa.Numeric[Any]]:
    classes = st.sampled_from(
        [sa.Numeric, sa.DECIMAL, mssql.NUMERIC, postgresql.NUMERIC, mysql.DECIMAL, sqlite.NUMERIC]
    )

    @st.composite
    def build(draw: st.DrawFn) -> sa.Numeric[Any]:
        precision = draw(st.none() | st.integers(1, 76))
        scale = None if precision is None else draw(st.none() | st.integers(0, precision))
        column_type: sa.Numeric[Any] = draw(classes)(precision=precision, scale=scale)
        return column_type

    return build() | st.sampled_from([mssql.MONEY(), mssql.SMALLMONEY()])


@given(_numeric_types(), st.sampled_from(DIALECTS))
def test_an_exact_numeric_is_never_a_float(column_type: sa.Numeric[Any], dialect: str) -> None:
    arrow = arrow_type(column_type, dialect)
    assert not pa.types.is_floating(arrow)
    assert pa.types.is_decimal(arrow) or pa.types.is_string(arrow)
    precision = getattr(column_type, "precision", None)
    if isinstance(column_type, sa.Numeric) and precision is not None:
        assert (arrow.precision, arrow.scale) == (precision, column_type.scale or 0)


# (type, dialect, the bits every value needs, signed): the Arrow int is exactly that wide
INTEGER_TYPES: list[tuple[sa.Integer, str, int, bool]] = [
    (mssql.TINYINT(), "mssql", 8, False),
    (mssql.SMALLINT(), "mssql", 16, True),
    (mssql.INTEGER(), "mssql", 32, True),
    (mssql.BIGINT(), "mssql", 64, True),
    (postgresql.SMALLINT(), "postgresql", 16, True),
    (postgresql.INTEGER(), "postgresql", 32, True),
    (postgresql.BIGINT(), "postgresql", 64, True),
    (mysql.TINYINT(), "mysql", 8, True),
    (mysql.TINYINT(unsigned=True), "mysql", 8, False),
    (mysql.SMALLINT(), "mysql", 16, True),
    (mysql.SMALLINT(unsigned=True), "mysql", 16, False),
    # 24 bits: int32 is the narrowest Arrow type that holds them
    (mysql.MEDIUMINT(), "mysql", 32, True),
    (mysql.MEDIUMINT(unsigned=True), "mysql", 32, False),
    (mysql.INTEGER(), "mysql", 32, True),
    (mysql.INTEGER(unsigned=True), "mysql", 32, False),
    (mysql.BIGINT(), "mysql", 64, True),
    (mysql.BIGINT(unsigned=True), "mysql", 64, False),
    (sa.SmallInteger(), "postgresql", 16, True),
    (sa.Integer(), "postgresql", 32, True),
    (sa.BigInteger(), "postgresql", 64, True),
    (sa.Integer(), "sqlite", 64, True),
]


@pytest.mark.parametrize(("column_type", "dialect", "bits", "signed"), INTEGER_TYPES, ids=repr)
def test_an_integer_is_never_wider_or_narrower_than_the_source(
    column_type: sa.Integer, dialect: str, bits: int, signed: bool
) -> None:
    arrow = arrow_type(column_type, dialect)
    assert pa.types.is_integer(arrow)
    assert arrow.bit_width == bits
    assert pa.types.is_signed_integer(arrow) == signed


@given(st.integers(1, 53), st.sampled_from(("mssql", "postgresql", "mysql")))
def test_a_float_precision_picks_single_or_double(precision: int, dialect: str) -> None:
    expected = pa.float32() if precision <= 24 else pa.float64()
    assert arrow_type(sa.Float(precision), dialect) == expected


# --- decimals: exact to the last digit ----------------------------------------------------------


@st.composite
def _decimal_column(draw: st.DrawFn) -> tuple[int, int, list[decimal.Decimal]]:
    precision = draw(st.integers(1, 38))
    scale = draw(st.integers(0, precision))
    # all nines, built from digits: decimal arithmetic would round past 28 digits
    largest = decimal.Decimal((0, (9,) * precision, -scale))
    # hypothesis scales the bounds with the current context: 28 digits would round 38 nines up
    with decimal.localcontext(prec=80):
        values = draw(
            st.lists(
                st.decimals(
                    min_value=-largest,
                    max_value=largest,
                    places=scale,
                    allow_nan=False,
                    allow_infinity=False,
                ),
                min_size=1,
                max_size=20,
            )
        )
    return precision, scale, values


@given(_decimal_column())
def test_a_numeric_column_round_trips_every_digit(
    column: tuple[int, int, list[decimal.Decimal]],
) -> None:
    precision, scale, values = column
    assert all(len(value.as_tuple().digits) <= precision for value in values)
    arrow = arrow_type(sa.Numeric(precision, scale), "postgresql")
    assert arrow == pa.decimal128(precision, scale)
    array = array_builder(arrow)([*values, None])
    assert array.type == arrow
    back = array.to_pylist()
    assert back[-1] is None
    for value, result in zip(values, back[:-1], strict=True):
        # same value and same exponent: the same digits, the last one included
        assert result == value
        assert result.as_tuple().exponent == value.as_tuple().exponent == -scale


@st.composite
def _overlong_decimal(draw: st.DrawFn) -> tuple[int, int, decimal.Decimal]:
    """A value whose whole part fits, with 1..10 places more than the scale, last one non-zero."""
    precision = draw(st.integers(1, 38))
    scale = draw(st.integers(0, precision))
    places = scale + draw(st.integers(1, 10))
    coefficient = draw(
        st.integers(1, 10 ** (precision - scale + places) - 1).filter(lambda n: n % 10 != 0)
    )
    digits = tuple(int(digit) for digit in str(coefficient))
    return precision, scale, decimal.Decimal((draw(st.integers(0, 1)), digits, -places))


@given(_overlong_decimal())
def test_a_decimal_with_more_places_than_the_scale_raises(
    column: tuple[int, int, decimal.Decimal],
) -> None:
    precision, scale, value = column
    # never rounded to the scale in silence
    with pytest.raises(pa.ArrowInvalid):
        array_builder(pa.decimal128(precision, scale))([value])


def test_a_decimal_too_large_for_the_precision_raises() -> None:
    with pytest.raises(pa.ArrowInvalid):
        array_builder(pa.decimal128(5, 2))([decimal.Decimal("1000.00")])


# --- ODBC timestamp structs ---------------------------------------------------------------------

# datetimes a SQL Server datetime2 can hold, whole seconds (the fraction is separate)
odbc_datetimes = st.datetimes(
    min_value=datetime.datetime(1, 1, 1), max_value=datetime.datetime(9999, 12, 31, 23, 59, 59)
).map(lambda value: value.replace(microsecond=0))
fractions = st.integers(0, 999_999_999)


def _exact_nanoseconds(value: datetime.datetime, fraction: int) -> int:
    return (value - EPOCH) // datetime.timedelta(seconds=1) * 1_000_000_000 + fraction


def _timestamp_struct(value: datetime.datetime, fraction: int) -> bytes:
    return struct.pack(
        "<6hI",
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        fraction,
    )


@given(odbc_datetimes, fractions)
def test_timestamp_struct_is_exact_nanoseconds(value: datetime.datetime, fraction: int) -> None:
    assert _timestamp_nanoseconds(_timestamp_struct(value, fraction)) == _exact_nanoseconds(
        value, fraction
    )


@given(odbc_datetimes, fractions, st.integers(-14 * 60, 14 * 60))
def test_datetimeoffset_struct_is_the_utc_instant(
    local: datetime.datetime, fraction: int, offset_minutes: int
) -> None:
    # SQL Server gives both offset parts the offset's sign: -05:30 is (-5, -30)
    hours = int(offset_minutes / 60)
    minutes = offset_minutes - hours * 60
    raw = _timestamp_struct(local, fraction) + struct.pack("<2h", hours, minutes)
    utc = (local - EPOCH) - datetime.timedelta(minutes=offset_minutes)
    expected = utc // datetime.timedelta(seconds=1) * 1_000_000_000 + fraction
    assert _timestamp_offset_nanoseconds(raw) == expected


def test_null_timestamps_stay_null() -> None:
    assert _timestamp_nanoseconds(None) is None
    assert _timestamp_offset_nanoseconds(None) is None


def test_a_known_datetimeoffset_is_its_utc_instant() -> None:
    # 2024-03-10 01:30:00.1234567 -08:00 is 09:30:00.1234567 UTC
    raw = struct.pack("<6hI2h", 2024, 3, 10, 1, 30, 0, 123_456_700, -8, 0)
    utc = datetime.datetime(2024, 3, 10, 9, 30) - EPOCH
    assert (
        _timestamp_offset_nanoseconds(raw)
        == utc // datetime.timedelta(microseconds=1) * NS_PER_US + 123_456_700
    )


# --- timestamp arrays from nanosecond ints (the pyodbc path) ------------------------------------

# instants a timestamp[ns] can hold, in SQL Server's 100 ns steps
nanosecond_instants = st.integers(-(2**63) // 100 + 1, (2**63 - 1) // 100).map(lambda n: n * 100)


@given(
    st.lists(nanosecond_instants | st.none(), min_size=1, max_size=20),
    st.sampled_from([None, "UTC"]),
)
def test_a_nanosecond_column_keeps_100_ns_digits(
    values: list[int | None], zone: str | None
) -> None:
    arrow = pa.timestamp("ns", zone)
    array = array_builder(arrow)(values)
    assert array.type == arrow
    assert array.cast(pa.int64()).to_pylist() == values


def test_a_datetime2_7_value_keeps_its_last_digit() -> None:
    ns = _timestamp_nanoseconds(
        _timestamp_struct(datetime.datetime(2024, 1, 4, 10, 11, 12), 123_456_700)
    )
    array = array_builder(pa.timestamp("ns"))([ns])
    assert array.cast(pa.int64())[0].as_py() % 1_000 == 700


@given(
    st.lists(
        st.integers(-(2**62), 2**62).filter(lambda n: n % NS_PER_US != 0), min_size=1, max_size=5
    )
)
def test_a_microsecond_column_refuses_sub_microsecond_digits(values: list[int]) -> None:
    with pytest.raises((ValueError, pa.ArrowInvalid)):
        array_builder(pa.timestamp("us"))(values)


@given(st.lists(odbc_datetimes | st.none(), min_size=1, max_size=10), st.integers(0, 999_999))
def test_a_microsecond_column_holds_any_datetime_from_year_1_to_9999(
    values: list[datetime.datetime | None], microsecond: int
) -> None:
    # SQL Server's datetime/datetime2(3) through pyodbc: 9999-12-31 is a common "no end" marker
    # and lies beyond what int64 nanoseconds can hold
    datetimes = [
        None if value is None else value.replace(microsecond=microsecond) for value in values
    ]
    raw = [
        None
        if value is None
        else _timestamp_struct(value.replace(microsecond=0), microsecond * 1000)
        for value in datetimes
    ]
    array = array_builder(pa.timestamp("us"))([_timestamp_nanoseconds(item) for item in raw])
    assert array.to_pylist() == datetimes


def test_a_nanosecond_column_refuses_what_int64_nanoseconds_cannot_hold() -> None:
    ns = _timestamp_nanoseconds(_timestamp_struct(datetime.datetime(9999, 12, 31), 0))
    with pytest.raises((OverflowError, pa.ArrowInvalid)):
        array_builder(pa.timestamp("ns"))([ns])


# --- other builders -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([True, False, None], [True, False, None]),
        ([1, 0], [True, False]),
        ([b"\x01", b"\x00"], [True, False]),
        # psqlODBC's default BoolsAsChar hands booleans over as '1' / '0'
        (["1", "0", "t", "f", "true", "false"], [True, False, True, False, True, False]),
    ],
)
def test_booleans_from_every_driver(values: list[Any], expected: list[bool | None]) -> None:
    assert array_builder(pa.bool_())(values).to_pylist() == expected


def test_a_text_that_is_no_boolean_raises() -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        array_builder(pa.bool_())(["yes please"])


@given(st.integers(-128, 127).filter(lambda value: value not in (0, 1)))
def test_a_tinyint_that_is_neither_0_nor_1_is_no_boolean_by_row_or_in_bulk(value: int) -> None:
    message = f"{value} is neither 0 nor 1, so it is no boolean"
    with pytest.raises(ValueError, match=message):
        array_builder(pa.bool_())([1, None, value, 0])
    with pytest.raises(ValueError, match=message):
        integer_booleans(pa.array([1, None, value, 0], pa.int8()))


def test_tinyint_zeros_and_ones_fetched_in_bulk_are_booleans() -> None:
    booleans = integer_booleans(pa.array([1, None, 0, 1], pa.int8()))
    assert booleans.type == pa.bool_()
    assert booleans.to_pylist() == [True, None, False, True]
    assert integer_booleans(pa.array([None, None], pa.int8())).to_pylist() == [None, None]


def test_a_date_column_accepts_midnight_datetimes() -> None:
    array = array_builder(pa.date32())(
        [datetime.datetime(2024, 1, 4), datetime.date(2024, 1, 5), None]
    )
    assert array.to_pylist() == [datetime.date(2024, 1, 4), datetime.date(2024, 1, 5), None]


def test_mysql_bit_n_bytes_are_unsigned_integers() -> None:
    array = array_builder(pa.uint64())([b"\x01\x02", b"\xff" * 8, None])
    assert array.to_pylist() == [258, 2**64 - 1, None]


def test_text_columns_take_json_bytes_and_uuids_as_text() -> None:
    value = uuid.UUID("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
    array = array_builder(pa.string())([value, {"b": 1, "a": "é"}, b"\x01\xff", "Łódź", None])
    assert array.to_pylist() == [
        "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
        '{"a": "é", "b": 1}',
        "01ff",
        "Łódź",
        None,
    ]
