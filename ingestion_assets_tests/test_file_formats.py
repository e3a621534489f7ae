"""One reader per landing-zone file format: real files written here, values compared one by one."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import uuid
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import fastavro
import pyarrow as pa
import pyarrow.orc as orc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from ingestion_assets.errors import SourceError
from ingestion_assets.sources.files.formats import (
    AvroFormat,
    CsvFormat,
    ExcelFormat,
    FileFormat,
    JsonFormat,
    MalformedFileError,
    NdjsonFormat,
    OrcFormat,
    ParquetFormat,
    RaggedRow,
    ReadReport,
    TsvFormat,
    XmlFormat,
)
from ingestion_assets.sources.files.read import read_batches
from ingestion_assets.sources.files.text import TerminatorTranslator

UTC = datetime.UTC


def read(
    source: Any,
    file_format: Any,
    schema: pa.Schema | None = None,
    name: str | None = None,
    **options: Any,
) -> tuple[pa.Table, ReadReport]:
    """All batches of one file as a table, with the read's report."""
    report = ReadReport()
    file_name = name or (source.name if isinstance(source, Path) else "file")
    batches = list(read_batches(source, file_name, file_format, schema, report=report, **options))
    return pa.Table.from_batches(batches), report


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def utc(*parts: int) -> datetime.datetime:
    return datetime.datetime(*parts, tzinfo=UTC)


# --- specs ---------------------------------------------------------------------------------------


def test_a_format_is_chosen_by_its_type_and_an_unknown_one_names_the_allowed_kinds() -> None:
    adapter: TypeAdapter[Any] = TypeAdapter(FileFormat)
    chosen = adapter.validate_python({"type": "tsv", "null_values": ["\\N"]})
    assert chosen == TsvFormat(null_values=["\\N"])
    assert chosen.delimiter == "\t"
    with pytest.raises(ValidationError) as raised:
        adapter.validate_python({"type": "cvs"})
    assert "'csv', 'tsv', 'json', 'ndjson', 'parquet', 'orc', 'avro', 'excel', 'xml'" in str(
        raised.value
    )
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        adapter.validate_python({"type": "csv", "delimeter": ";"})


def test_quoting_with_a_multi_character_terminator_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError, match="set quote_char: null and escape_char: null"):
        CsvFormat(delimiter="+|", row_terminator="&|")


@pytest.mark.parametrize(
    ("delimiter", "row_terminator", "message"),
    [
        ("|+", "+|", "overlap"),
        ("||", "&|", "overlaps itself"),
        ("a\nb", None, "may not contain"),
        ("\x1f", None, "control characters"),
    ],
)
def test_terminators_that_would_split_ambiguously_are_refused(
    delimiter: str, row_terminator: str | None, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        CsvFormat(delimiter=delimiter, row_terminator=row_terminator, quote_char=None)


def test_a_zip_member_without_zip_compression_is_refused() -> None:
    with pytest.raises(ValidationError, match="set compression to zip"):
        CsvFormat(compression="gzip", zip_member="a.csv")


# --- CSV: types --------------------------------------------------------------------------------

ORDERS_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("amount", pa.decimal128(19, 4)),
        ("total", pa.decimal128(38, 6)),
        ("placed_at", pa.timestamp("us", tz="UTC")),
        ("day", pa.date32()),
        ("missing", pa.int32()),
    ]
)


def test_declared_csv_columns_come_back_exact_missing_ones_null_and_extra_ones_kept(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path / "orders.csv",
        b"id,amount,total,placed_at,day,note\n"
        b"1,12.3456,12345678901234567890123456789012.123456,2024-03-01T10:00:00+01:00,2024-03-01,a\n"
        b"2,-0.0001,0.000001,2024-03-01 10:00:00Z,2024-02-29,\n"
        b"3,99999999999999.9999,-1,2024-03-01T10:00:00,2024-12-31,c\n",
    )
    table, report = read(path, CsvFormat(), ORDERS_SCHEMA)
    assert table.schema == ORDERS_SCHEMA.append(pa.field("note", pa.string())).append(
        pa.field("_rescued_data", pa.string())
    )
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("amount").to_pylist() == [
        Decimal("12.3456"),
        Decimal("-0.0001"),
        Decimal("99999999999999.9999"),
    ]
    assert table.column("total").to_pylist() == [
        Decimal("12345678901234567890123456789012.123456"),
        Decimal("0.000001"),
        Decimal("-1.000000"),
    ]
    # an offset is honoured; a value without one is taken to be in the column's zone (UTC)
    assert table.column("placed_at").to_pylist() == [
        utc(2024, 3, 1, 9),
        utc(2024, 3, 1, 10),
        utc(2024, 3, 1, 10),
    ]
    assert table.column("day").to_pylist() == [
        datetime.date(2024, 3, 1),
        datetime.date(2024, 2, 29),
        datetime.date(2024, 12, 31),
    ]
    assert table.column("missing").to_pylist() == [None, None, None]
    assert table.column("note").to_pylist() == ["a", None, "c"]
    assert table.column("_rescued_data").to_pylist() == [None, None, None]
    assert (report.rows, report.rescued_rows, report.ragged_rows) == (3, 0, [])


def test_values_that_do_not_fit_are_null_and_their_text_is_rescued(tmp_path: Path) -> None:
    path = write(
        tmp_path / "orders.csv",
        b"id,amount,day,placed_at\n"
        b"1,12.34567,2024-02-30,yesterday\n"
        b"x,1e3,2024-03-01,2024-03-01T10:00:00-05:00\n"
        b"99999999999999999999,7,2024-03-02,\n",
    )
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("amount", pa.decimal128(19, 4)),
            ("day", pa.date32()),
            ("placed_at", pa.timestamp("us", tz="UTC")),
        ]
    )
    table, report = read(path, CsvFormat(), schema)
    assert table.column("id").to_pylist() == [1, None, None]
    assert table.column("amount").to_pylist() == [None, Decimal("1000.0000"), Decimal("7.0000")]
    assert table.column("day").to_pylist() == [
        None,
        datetime.date(2024, 3, 1),
        datetime.date(2024, 3, 2),
    ]
    assert table.column("placed_at").to_pylist() == [None, utc(2024, 3, 1, 15), None]
    assert [
        None if text is None else json.loads(text)
        for text in table.column("_rescued_data").to_pylist()
    ] == [
        {"amount": "12.34567", "day": "2024-02-30", "placed_at": "yesterday"},
        {"id": "x"},
        {"id": "99999999999999999999"},
    ]
    assert report.rescued_rows == 3


def test_a_value_that_does_not_fit_fails_the_file_when_rescue_is_off(tmp_path: Path) -> None:
    path = write(tmp_path / "orders.csv", b"id,amount\n1,2.5\n2,abc\n")
    schema = pa.schema([("id", pa.int64()), ("amount", pa.decimal128(19, 4))])
    with pytest.raises(MalformedFileError) as raised:
        read(path, CsvFormat(), schema, rescue=False)
    assert str(raised.value) == (
        "file 'orders.csv': row 2: value 'abc' does not fit column 'amount' of type "
        "decimal128(19, 4). Fix: correct the file, declare a type that holds the value, or read "
        "with rescue on to keep such values in _rescued_data"
    )
    assert isinstance(raised.value, SourceError)
    table, _ = read(path, CsvFormat(), pa.schema([("id", pa.int64())]), rescue=False)
    # undeclared, the column is inferred from the first batch, where `abc` makes it text
    assert table.column_names == ["id", "amount"]
    assert table.column("amount").to_pylist() == ["2.5", "abc"]


def test_without_a_schema_the_first_batch_infers_each_column(tmp_path: Path) -> None:
    path = write(
        tmp_path / "inferred.csv",
        b"n,x,flag,day,at,zoned,code,empty,text\n"
        b"1,1.5,true,2024-03-01,2024-03-01 10:00:00,2024-03-01T10:00:00+01:00,007,,a\n"
        b"-2,2,False,2024-03-02,2024-03-01T11:30:00.5,2024-03-01T10:00:00Z,123,,b\n",
    )
    table, _ = read(path, CsvFormat())
    assert table.schema == pa.schema(
        [
            ("n", pa.int64()),
            ("x", pa.float64()),
            ("flag", pa.bool_()),
            ("day", pa.date32()),
            ("at", pa.timestamp("us")),
            ("zoned", pa.timestamp("us", tz="UTC")),
            ("code", pa.string()),
            ("empty", pa.string()),
            ("text", pa.string()),
            ("_rescued_data", pa.string()),
        ]
    )
    assert table.to_pylist()[1] == {
        "n": -2,
        "x": 2.0,
        "flag": False,
        "day": datetime.date(2024, 3, 2),
        "at": datetime.datetime(2024, 3, 1, 11, 30, 0, 500000),
        "zoned": utc(2024, 3, 1, 10),
        "code": "123",
        "empty": None,
        "text": "b",
        "_rescued_data": None,
    }
    assert table.column("code").to_pylist() == ["007", "123"]


def test_a_later_value_that_does_not_fit_the_inferred_type_is_rescued(tmp_path: Path) -> None:
    rows = "".join(f"{index},{index}\n" for index in range(30_000))
    path = write(tmp_path / "late.csv", f"a,b\n{rows}30000,n/a\n".encode())
    table, report = read(path, CsvFormat(), batch_rows=1000, chunk_bytes=1 << 16)
    assert table.schema.field("b").type == pa.int64()
    assert table.column("b").to_pylist()[-2:] == [29999, None]
    assert table.column("_rescued_data").to_pylist()[-1] == '{"b":"n/a"}'
    assert report.rescued_rows == 1


# --- CSV: options ------------------------------------------------------------------------------

BCP_EXPORT = 'id+|name+|note&|1+|Łódź+|two\nlines&|2+|Müller+|&|3+|日本+|a "quoted" +€&|'


@pytest.mark.parametrize("chunk_bytes", [1, 2, 3, 5, 7, 64, 1 << 20])
def test_multi_character_terminators_are_read_at_any_chunk_size(
    tmp_path: Path, chunk_bytes: int
) -> None:
    path = write(tmp_path / "export.dat", BCP_EXPORT.encode())
    spec = CsvFormat(delimiter="+|", row_terminator="&|", quote_char=None)
    table, _ = read(path, spec, chunk_bytes=chunk_bytes)
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("name").to_pylist() == ["Łódź", "Müller", "日本"]
    assert table.column("note").to_pylist() == ["two\nlines", None, 'a "quoted" +€']


def test_a_terminator_split_across_two_chunks_is_found(tmp_path: Path) -> None:
    data = b"a+|b&|x+|y&|"
    # the 4th chunk boundary falls inside the first `&|` (bytes 4-5) at chunk size 5, and inside
    # the second `+|` (bytes 7-8) at chunk size 8
    for chunk_bytes in (5, 8):
        translator = TerminatorTranslator(b"+|", b"&|")
        pieces = [data[start : start + chunk_bytes] for start in range(0, len(data), chunk_bytes)]
        translated = b"".join(translator.feed(piece) for piece in pieces) + translator.finish()
        assert translated == b"\x1ea\x1e\x1f\x1eb\x1e\n\x1ex\x1e\x1f\x1ey\x1e\n"
    path = write(tmp_path / "split.dat", data)
    spec = CsvFormat(delimiter="+|", row_terminator="&|", quote_char=None)
    table, _ = read(path, spec, chunk_bytes=5)
    assert table.to_pylist() == [{"a": "x", "b": "y", "_rescued_data": None}]


def test_a_multi_character_delimiter_with_ordinary_line_ends(tmp_path: Path) -> None:
    path = write(tmp_path / "lines.dat", b"a|~b\r\n1|~x\r\n2|~y\n3|~\r\n")
    spec = CsvFormat(delimiter="|~", quote_char=None)
    for chunk_bytes in (1, 4, 1 << 20):
        table, _ = read(path, spec, chunk_bytes=chunk_bytes)
        assert table.column("a").to_pylist() == [1, 2, 3]
        assert table.column("b").to_pylist() == ["x", "y", None]


field_text = st.text(
    alphabet=st.characters(codec="utf-8", categories=("L", "N", "P", "S", "Z", "Cc")), max_size=6
).filter(lambda text: "+|" not in text and "&|" not in text)


@settings(max_examples=150, deadline=None)
@given(
    rows=st.integers(min_value=1, max_value=3).flatmap(
        lambda width: st.lists(st.lists(field_text, min_size=width, max_size=width), min_size=1)
    ),
    chunk_bytes=st.integers(min_value=1, max_value=40),
)
def test_any_text_without_the_terminators_round_trips_at_any_chunk_size(
    rows: list[list[str]], chunk_bytes: int
) -> None:
    data = "".join("+|".join(row) + "&|" for row in rows).encode()
    whole = TerminatorTranslator(b"+|", b"&|")
    expected = whole.feed(data) + whole.finish()
    chunked = TerminatorTranslator(b"+|", b"&|")
    pieces = [data[start : start + chunk_bytes] for start in range(0, len(data), chunk_bytes)]
    assert b"".join(chunked.feed(piece) for piece in pieces) + chunked.finish() == expected

    names = [f"c{index}" for index in range(len(rows[0]))]
    spec = CsvFormat(
        delimiter="+|",
        row_terminator="&|",
        quote_char=None,
        header=False,
        column_names=names,
        null_values=[],
    )
    schema = pa.schema([(name, pa.string()) for name in names])
    table, _ = read(io.BytesIO(data), spec, schema, rescue=False, chunk_bytes=chunk_bytes)
    assert [[row[name] for name in names] for row in table.to_pylist()] == rows


def test_quotes_escapes_and_doubled_quotes(tmp_path: Path) -> None:
    path = write(
        tmp_path / "quoted.csv",
        b'id,text\n1,"a, b"\n2,"say ""hi"""\n3,"two\nlines"\n4,\'x\'\n',
    )
    table, _ = read(path, CsvFormat())
    assert table.column("text").to_pylist() == ["a, b", 'say "hi"', "two\nlines", "'x'"]

    path = write(tmp_path / "escaped.csv", b"id;text\n1;'it\\'s'\n2;a\\;b\n")
    spec = CsvFormat(delimiter=";", quote_char="'", escape_char="\\", double_quote=False)
    table, _ = read(path, spec)
    assert table.column("text").to_pylist() == ["it's", "a;b"]

    path = write(tmp_path / "literal.csv", b'id,text\n1,"a\n2,b"\n')
    table, _ = read(path, CsvFormat(quote_char=None))
    assert table.column("text").to_pylist() == ['"a', 'b"']


def test_null_markers_are_null_in_every_column(tmp_path: Path) -> None:
    path = write(tmp_path / "nulls.csv", b"id,name,amount\n1,NULL,\\N\n\\N,,2.50\n3,x,NULL\n")
    spec = CsvFormat(null_values=["NULL", "\\N"])
    schema = pa.schema([("amount", pa.decimal128(19, 4))])
    table, _ = read(path, spec, schema)
    assert table.column("id").to_pylist() == [1, None, 3]
    assert table.column("name").to_pylist() == [None, "", "x"]
    assert table.column("amount").to_pylist() == [None, Decimal("2.5000"), None]


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        ("utf-8", "Łódź Müller € 日本"),
        ("utf-8-sig", "Łódź Müller € 日本"),
        ("utf-16", "Łódź Müller € 日本"),
        ("utf-16le", "Łódź Müller € 日本"),
        ("utf-16be", "Łódź Müller € 日本"),
        ("windows-1252", "Müller € Œuvre"),
        ("latin-1", "Müller Ærø ß"),
    ],
)
def test_each_encoding_is_transcoded(tmp_path: Path, encoding: str, text: str) -> None:
    content = f"id;name\n1;{text}\n2;{text[::-1]}\n"
    path = write(tmp_path / "names.csv", content.encode(encoding))
    table, _ = read(path, CsvFormat(delimiter=";", encoding=encoding), chunk_bytes=3)
    assert table.column("name").to_pylist() == [text, text[::-1]]
    assert table.column("id").to_pylist() == [1, 2]


def test_a_byte_order_mark_is_dropped_whatever_the_encoding(tmp_path: Path) -> None:
    path = write(tmp_path / "bom.csv", b"\xef\xbb\xbfid,name\n1,M\xc3\xbcller\n")
    table, _ = read(path, CsvFormat())
    assert table.column_names == ["id", "name", "_rescued_data"]
    assert table.column("name").to_pylist() == ["Müller"]
    path = write(tmp_path / "bom16.csv", "\ufeffid,name\n1,€\n".encode("utf-16le"))
    table, _ = read(path, CsvFormat(encoding="utf-16le"))
    assert table.column_names == ["id", "name", "_rescued_data"]


def test_a_byte_not_valid_in_the_encoding_is_reported_with_its_offset(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", b"id,name\n1,M\xc3\xbcller\n2,M\xfcller\n")
    with pytest.raises(MalformedFileError) as raised:
        read(path, CsvFormat(), chunk_bytes=4)
    assert str(raised.value) == (
        "file 'bad.csv': byte b'\\xfcll' at offset 21 is not valid utf-8 (invalid start byte). "
        "Fix: set the format's encoding to the one the file was written in, or send the file "
        "re-encoded"
    )
    table, _ = read(path, CsvFormat(encoding="latin-1"))
    assert table.column("name").to_pylist() == ["MÃ¼ller", "Müller"]


CSV_CONTENT = "id,name\n1,Łódź\n2,日本\n".encode()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            # a fixed time: the archive's bytes (and the test ids they are in) do not change
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "data", "spec"),
    [
        ("a.csv.gz", gzip.compress(CSV_CONTENT), CsvFormat()),
        (
            "a.csv.gz",
            gzip.compress(CSV_CONTENT[:10]) + gzip.compress(CSV_CONTENT[10:]),
            CsvFormat(),
        ),
        ("a.csv.zst", pa.compress(CSV_CONTENT, "zstd", asbytes=True), CsvFormat()),
        ("a.zip", _zip({"export/a.csv": CSV_CONTENT}), CsvFormat()),
        (
            "a.zip",
            _zip({"readme.txt": b"x", "a.csv": CSV_CONTENT}),
            CsvFormat(zip_member="a.csv"),
        ),
        ("upload.bin", gzip.compress(CSV_CONTENT), CsvFormat(compression="gzip")),
        ("a.csv.gz", CSV_CONTENT, CsvFormat(compression="none")),
    ],
    # ids of their own: compressed bytes in an id would differ between pytest-xdist workers
    ids=["gzip", "gzip-members", "zstd", "zip", "zip-member", "gzip-by-option", "none"],
)
def test_compressed_files_are_decompressed_while_streaming(
    tmp_path: Path, name: str, data: bytes, spec: CsvFormat
) -> None:
    table, _ = read(write(tmp_path / name, data), spec, chunk_bytes=7)
    assert table.column("id").to_pylist() == [1, 2]
    assert table.column("name").to_pylist() == ["Łódź", "日本"]


def test_a_zip_read_from_a_stream_is_spooled_first() -> None:
    class Unseekable(io.RawIOBase):
        def __init__(self, data: bytes) -> None:
            self._data = io.BytesIO(data)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    table, _ = read(Unseekable(_zip({"a.csv": CSV_CONTENT})), CsvFormat(), name="a.zip")
    assert table.column("name").to_pylist() == ["Łódź", "日本"]


@pytest.mark.parametrize(
    ("name", "data", "spec", "reason"),
    [
        (
            "a.csv.gz",
            gzip.compress(CSV_CONTENT * 100, mtime=0)[:-12],
            CsvFormat(),
            "the gzip stream ends before its end marker (truncated). Fix: the file was cut "
            "short, e.g. still being uploaded: send it again complete",
        ),
        (
            "a.csv.zst",
            pa.compress(CSV_CONTENT * 100, "zstd", asbytes=True)[:-5],
            CsvFormat(),
            "the zstd stream ends before its end marker (truncated)",
        ),
        (
            "a.csv.gz",
            CSV_CONTENT,
            CsvFormat(),
            "not a valid gzip stream (zlib inflate failed: incorrect header check)",
        ),
        (
            "a.zip",
            _zip({"a.csv": CSV_CONTENT, "b.csv": CSV_CONTENT}),
            CsvFormat(),
            "the zip holds 2 files and none is named (members: a.csv, b.csv). Fix: set the "
            "format's zip_member to the one to read, or send one file per zip",
        ),
        (
            "a.zip",
            _zip({"a.csv": CSV_CONTENT}),
            CsvFormat(zip_member="b.csv"),
            "the zip has no member 'b.csv' (members: a.csv)",
        ),
        ("a.zip", b"PK not a zip", CsvFormat(), "not a valid zip archive"),
    ],
    ids=[
        "gzip-truncated",
        "zstd-truncated",
        "not-gzip",
        "zip-two-members",
        "zip-no-member",
        "not-zip",
    ],
)
def test_damaged_archives_raise_a_malformed_file_error(
    tmp_path: Path, name: str, data: bytes, spec: CsvFormat, reason: str
) -> None:
    with pytest.raises(MalformedFileError) as raised:
        read(write(tmp_path / name, data), spec, chunk_bytes=64)
    assert str(raised.value).startswith(f"file '{name}': {reason}")


def test_header_column_names_and_skipped_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "report.csv", b"Exported 2024-03-01\n\nid,name\n1,a\n2,b\n")
    table, _ = read(path, CsvFormat(skip_rows=1))
    assert table.column_names == ["id", "name", "_rescued_data"]
    table, _ = read(path, CsvFormat(skip_rows=1, column_names=["key", "label"]))
    assert table.to_pydict() == {"key": [1, 2], "label": ["a", "b"], "_rescued_data": [None, None]}
    path = write(tmp_path / "bare.csv", b"1,a\n2,b\n")
    table, _ = read(path, CsvFormat(header=False, column_names=["key", "label"]))
    assert table.column("label").to_pylist() == ["a", "b"]
    table, _ = read(path, CsvFormat(header=False))
    assert table.column_names == ["f0", "f1", "_rescued_data"]
    with pytest.raises(MalformedFileError, match="column_names names 3 columns, the file has 2"):
        read(path, CsvFormat(header=False, column_names=["a", "b", "c"]))


def test_tsv_is_csv_with_a_tab(tmp_path: Path) -> None:
    path = write(tmp_path / "a.tsv", b"id\tname\r\n1\ta,b\r\n2\t\\N\r\n")
    table, _ = read(path, TsvFormat(null_values=["\\N"]))
    assert table.column("name").to_pylist() == ["a,b", None]


def test_ragged_rows_within_the_tolerance_are_reported_beyond_it_the_file_fails(
    tmp_path: Path,
) -> None:
    path = write(tmp_path / "ragged.csv", b"id,name\n1,a\n2\n3,c,extra\n4,d\n")
    table, report = read(path, CsvFormat(max_ragged_rows=2))
    assert table.column("id").to_pylist() == [1, 4]
    assert report.ragged_rows == [
        RaggedRow(line=3, expected_fields=2, actual_fields=1, text="2"),
        RaggedRow(line=4, expected_fields=2, actual_fields=3, text="3,c,extra"),
    ]
    with pytest.raises(MalformedFileError) as raised:
        read(path, CsvFormat(max_ragged_rows=1))
    assert str(raised.value) == (
        "file 'ragged.csv': line 4 has 3 fields where 2 are expected ('3,c,extra'), and more "
        "than max_ragged_rows=1 rows are like it. Fix: correct the file's rows, check the "
        "delimiter and quoting, or raise max_ragged_rows"
    )


def test_an_empty_file_yields_one_empty_batch_of_the_declared_columns(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64())])
    batches = list(
        read_batches(write(tmp_path / "empty.csv", b""), "empty.csv", CsvFormat(), schema)
    )
    assert [(batch.num_rows, batch.schema.names) for batch in batches] == [
        (0, ["id", "_rescued_data"])
    ]
    table, _ = read(write(tmp_path / "header.csv", b"id,name\n"), CsvFormat())
    assert (table.num_rows, table.column_names) == (0, ["id", "name", "_rescued_data"])


def test_a_large_csv_streams_in_batches_of_at_most_batch_rows(tmp_path: Path) -> None:
    rows = 60_000
    content = "id,name,amount\n" + "".join(f"{i},name {i},{i}.25\n" for i in range(rows))
    path = write(tmp_path / "big.csv.gz", gzip.compress(content.encode()))
    schema = pa.schema([("amount", pa.decimal128(19, 4))])
    sizes = []
    ids: list[int] = []
    batches = read_batches(
        path, "big.csv.gz", CsvFormat(), schema, batch_rows=1000, chunk_bytes=1 << 16
    )
    for batch in batches:
        sizes.append(batch.num_rows)
        ids.extend(batch.column("id").to_pylist())
        last = batch
    # pyarrow parses 64 KiB blocks (about 2,900 rows here), each sliced to batch_rows
    assert len(sizes) >= rows // 1000
    assert max(sizes) == 1000
    assert ids == list(range(rows))
    assert last.column("amount").to_pylist()[-1] == Decimal("59999.2500")


def test_a_pyarrow_native_file_and_a_file_object_are_sources(tmp_path: Path) -> None:
    path = write(tmp_path / "a.csv", CSV_CONTENT)
    with pa.OSFile(str(path)) as native:
        table, _ = read(native, CsvFormat(), name="a.csv")
    assert table.column("name").to_pylist() == ["Łódź", "日本"]
    table, _ = read(pa.BufferReader(gzip.compress(CSV_CONTENT)), CsvFormat(), name="a.csv.gz")
    assert table.column("name").to_pylist() == ["Łódź", "日本"]
    with path.open("rb") as file:
        table, _ = read(file, CsvFormat(), name="a.csv")
    assert table.column("id").to_pylist() == [1, 2]


# --- JSON and NDJSON -----------------------------------------------------------------------------


JSON_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("amount", pa.decimal128(19, 4)),
        ("total", pa.decimal128(38, 6)),
        ("placed_at", pa.timestamp("us", tz="UTC")),
        ("day", pa.date32()),
    ]
)
JSON_RECORDS = (
    b'{"id": 1, "amount": 12.3456, "total": 12345678901234567890123456789012.123456,'
    b' "placed_at": "2024-03-01T10:00:00+01:00", "day": "2024-03-01", "tags": ["a"]}',
    b'{"id": 2, "amount": "0.5", "total": 1, "placed_at": "2024-03-01T10:00:00Z",'
    b' "day": "2024-02-29", "city": "\\u0141\\u00f3d\\u017a"}',
    b'{"id": "three", "amount": 1.23456, "placed_at": null, "day": "soon"}',
)


def _check_json_orders(table: pa.Table) -> None:
    assert table.column("id").to_pylist() == [1, 2, None]
    assert table.column("amount").to_pylist() == [Decimal("12.3456"), Decimal("0.5000"), None]
    assert table.column("total").to_pylist() == [
        Decimal("12345678901234567890123456789012.123456"),
        Decimal("1.000000"),
        None,
    ]
    assert table.column("placed_at").to_pylist() == [utc(2024, 3, 1, 9), utc(2024, 3, 1, 10), None]
    assert table.column("day").to_pylist() == [
        datetime.date(2024, 3, 1),
        datetime.date(2024, 2, 29),
        None,
    ]
    assert table.column("city").to_pylist() == [None, "Łódź", None]
    rescued = [
        json.loads(text) if text else None for text in table.column("_rescued_data").to_pylist()
    ]
    assert rescued == [None, None, {"id": "three", "amount": "1.23456", "day": "soon"}]


def test_a_json_array_is_read_item_by_item_with_exact_types(tmp_path: Path) -> None:
    path = write(tmp_path / "orders.json", b"[\n" + b",\n".join(JSON_RECORDS) + b"\n]")
    table, report = read(path, JsonFormat(), JSON_SCHEMA, batch_rows=2, chunk_bytes=16)
    _check_json_orders(table)
    assert table.column("tags").to_pylist() == ['["a"]', None, None]
    assert report.rescued_rows == 1


def test_records_at_a_path_inside_an_object(tmp_path: Path) -> None:
    path = write(
        tmp_path / "page.json",
        b'{"meta": {"count": 2}, "data": {"items": [{"a": 1, "b": true}, {"a": 2.5, "b": false}]}}',
    )
    table, _ = read(path, JsonFormat(records_path="data.items"))
    assert table.schema.field("a").type == pa.float64()
    assert table.column("a").to_pylist() == [1.0, 2.5]
    assert table.column("b").to_pylist() == [True, False]
    empty = write(tmp_path / "empty.json", b'{"data": {"items": []}}')
    table, _ = read(empty, JsonFormat(records_path="data.items"))
    assert table.num_rows == 0


@pytest.mark.parametrize(
    ("data", "spec", "reason"),
    [
        (
            b'[{"a": 1}, {"a": ',
            JsonFormat(),
            "unparseable JSON after record 1 (parse error: premature EOF",
        ),
        (b'[{"a": 1}, 5]', JsonFormat(), "record 2 is a int, not an object"),
        (b'{"a": 1}', JsonFormat(), "the top level holds a JSON map, not an array of records"),
        (
            b'{"data": {"item": []}}',
            JsonFormat(records_path="data.items"),
            "records_path 'data.items' is not in the file. Fix: set records_path",
        ),
        (b'{"a": 1}\n{"a": 2,}\n', NdjsonFormat(), "line 2 is not valid JSON (Expecting property"),
        (b'{"a": 1}\n[1]\n', NdjsonFormat(), "line 2 is a JSON list, not an object"),
    ],
)
def test_unparseable_json_raises_a_malformed_file_error(
    tmp_path: Path, data: bytes, spec: JsonFormat | NdjsonFormat, reason: str
) -> None:
    with pytest.raises(MalformedFileError) as raised:
        read(write(tmp_path / "bad.json", data), spec)
    assert str(raised.value).startswith(f"file 'bad.json': {reason}")


def test_ndjson_is_read_by_pyarrow_with_exact_types(tmp_path: Path) -> None:
    path = write(tmp_path / "orders.ndjson.gz", gzip.compress(b"\n".join(JSON_RECORDS) + b"\n"))
    table, _ = read(path, NdjsonFormat(), JSON_SCHEMA)
    _check_json_orders(table)
    assert table.column("tags").to_pylist() == ['["a"]', None, None]


def test_ndjson_blocks_keep_the_first_blocks_columns_and_rescue_later_misfits(
    tmp_path: Path,
) -> None:
    lines = [
        f'{{"id": {index}, "name": "n{index}", "at": "2024-03-0{1 + index % 9}"}}'
        for index in range(40)
    ]
    lines[25] = '{"id": "x25", "name": 25, "at": "2024-03-01", "late": {"k": 1}}'
    path = write(tmp_path / "events.ndjson", ("\n".join(lines) + "\n").encode())
    table, report = read(path, NdjsonFormat(), chunk_bytes=200, batch_rows=7)
    assert table.schema.names == ["id", "name", "at", "_rescued_data"]
    assert table.schema.field("id").type == pa.int64()
    assert table.schema.field("at").type == pa.string()
    ids = table.column("id").to_pylist()
    assert ids == [*range(25), None, *range(26, 40)]
    assert table.column("name").to_pylist()[25] == "25"
    assert table.column("at").to_pylist()[:2] == ["2024-03-01", "2024-03-02"]
    assert json.loads(table.column("_rescued_data").to_pylist()[25]) == {
        "id": "x25",
        "late": '{"k":1}',
    }
    assert report.rescued_rows == 1


# --- Parquet, ORC, Avro ------------------------------------------------------------------------


def _typed_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int32()),
            "amount": pa.array(
                [Decimal("12.3456"), Decimal("-0.0001"), None], pa.decimal128(19, 4)
            ),
            "total": pa.array(
                [Decimal("12345678901234567890123456789012.123456"), Decimal("0"), Decimal("1.5")],
                pa.decimal128(38, 6),
            ),
            "placed_at": pa.array(
                [utc(2024, 3, 1, 9), utc(2024, 3, 1, 10, 0, 0, 123456), None],
                pa.timestamp("us", tz="UTC"),
            ),
            "day": pa.array([datetime.date(2024, 3, 1), None, datetime.date(2024, 12, 31)]),
            "name": ["Łódź", "Müller", "日本"],
        }
    )


def test_parquet_keeps_its_types_and_declared_columns_are_cast(tmp_path: Path) -> None:
    path = tmp_path / "orders.parquet"
    pq.write_table(_typed_table(), path, row_group_size=2)
    table, _ = read(path, ParquetFormat(), batch_rows=2)
    assert table.drop_columns(["_rescued_data"]) == _typed_table()
    schema = pa.schema([("id", pa.int64()), ("note", pa.string()), ("name", pa.string())])
    batches = list(read_batches(path, "orders.parquet", ParquetFormat(), schema, batch_rows=2))
    assert [batch.num_rows for batch in batches] == [2, 1]
    table = pa.Table.from_batches(batches)
    assert table.column_names[:3] == ["id", "note", "name"]
    assert table.schema.field("id").type == pa.int64()
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("note").to_pylist() == [None, None, None]
    assert table.column("total").to_pylist()[0] == Decimal(
        "12345678901234567890123456789012.123456"
    )


def test_a_parquet_value_out_of_the_declared_range_is_rescued(tmp_path: Path) -> None:
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"n": pa.array([1, 2**40, 3], pa.int64())}), path)
    table, _ = read(path, ParquetFormat(), pa.schema([("n", pa.int32())]))
    assert table.column("n").to_pylist() == [1, None, 3]
    assert table.column("_rescued_data").to_pylist() == [None, '{"n":"1099511627776"}', None]


def test_orc_is_read_stripe_by_stripe(tmp_path: Path) -> None:
    path = tmp_path / "orders.orc"
    source = _typed_table().drop_columns(["placed_at"])
    orc.write_table(source, str(path))
    table, _ = read(path, OrcFormat(), pa.schema([("id", pa.int64())]))
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("amount").to_pylist() == [Decimal("12.3456"), Decimal("-0.0001"), None]
    assert table.column("total").to_pylist()[0] == Decimal(
        "12345678901234567890123456789012.123456"
    )
    assert table.column("name").to_pylist() == ["Łódź", "Müller", "日本"]


AVRO_SCHEMA = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {
            "name": "amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 19, "scale": 4},
        },
        {
            "name": "total",
            "type": {
                "type": "fixed",
                "name": "Total",
                "size": 16,
                "logicalType": "decimal",
                "precision": 38,
                "scale": 6,
            },
        },
        {"name": "placed_at", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "sent_at", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "key", "type": {"type": "string", "logicalType": "uuid"}},
        {
            "name": "status",
            "type": {"type": "enum", "name": "Status", "symbols": ["open", "shipped"]},
        },
        {"name": "tags", "type": {"type": "array", "items": "string"}},
        {
            "name": "address",
            "type": {
                "type": "record",
                "name": "Address",
                "fields": [{"name": "city", "type": "string"}],
            },
        },
        {"name": "billing", "type": ["null", "Address"]},
        {"name": "either", "type": ["null", "long", "string"]},
    ],
}
KEY = uuid.UUID("12345678-1234-5678-1234-567812345678")


def _avro_records() -> list[dict[str, Any]]:
    return [
        {
            "id": 1,
            "amount": Decimal("12.3456"),
            "total": Decimal("12345678901234567890123456789012.123456"),
            "placed_at": utc(2024, 3, 1, 9, 0, 0, 123456),
            "sent_at": utc(2024, 3, 1, 9, 0, 1, 500000),
            "local": datetime.datetime(2024, 3, 1, 10, 0),
            "day": datetime.date(2024, 3, 1),
            "key": str(KEY),
            "status": "open",
            "tags": ["a", "b"],
            "address": {"city": "Łódź"},
            "billing": None,
            "either": 5,
        },
        {
            "id": 2,
            "amount": Decimal("-0.0001"),
            "total": Decimal("0.000001"),
            "placed_at": utc(2024, 3, 1, 10),
            "sent_at": None,
            "local": datetime.datetime(2024, 3, 1, 11, 30),
            "day": datetime.date(2024, 2, 29),
            "key": str(KEY),
            "status": "shipped",
            "tags": [],
            "address": {"city": "日本"},
            "billing": {"city": "Bonn"},
            "either": "five",
        },
    ]


def test_avro_logical_types_come_back_exact(tmp_path: Path) -> None:
    path = tmp_path / "orders.avro"
    with path.open("wb") as file:
        fastavro.writer(
            file, fastavro.parse_schema(AVRO_SCHEMA), _avro_records(), sync_interval=100
        )
    table, _ = read(path, AvroFormat(), batch_rows=1)
    assert table.schema.field("amount").type == pa.decimal128(19, 4)
    assert table.schema.field("total").type == pa.decimal128(38, 6)
    assert table.schema.field("placed_at").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("sent_at").type == pa.timestamp("ms", tz="UTC")
    assert table.schema.field("local").type == pa.timestamp("us")
    assert table.to_pylist() == [
        {
            "id": 1,
            "amount": Decimal("12.3456"),
            "total": Decimal("12345678901234567890123456789012.123456"),
            "placed_at": utc(2024, 3, 1, 9, 0, 0, 123456),
            "sent_at": utc(2024, 3, 1, 9, 0, 1, 500000),
            "local": datetime.datetime(2024, 3, 1, 10, 0),
            "day": datetime.date(2024, 3, 1),
            "key": str(KEY),
            "status": "open",
            "tags": ["a", "b"],
            "address": {"city": "Łódź"},
            "billing": None,
            "either": "5",
            "_rescued_data": None,
        },
        {
            "id": 2,
            "amount": Decimal("-0.0001"),
            "total": Decimal("0.000001"),
            "placed_at": utc(2024, 3, 1, 10),
            "sent_at": None,
            "local": datetime.datetime(2024, 3, 1, 11, 30),
            "day": datetime.date(2024, 2, 29),
            "key": str(KEY),
            "status": "shipped",
            "tags": [],
            "address": {"city": "日本"},
            "billing": {"city": "Bonn"},
            "either": "five",
            "_rescued_data": None,
        },
    ]


@pytest.mark.parametrize(
    ("name", "spec", "reason"),
    [
        ("orders.parquet", ParquetFormat(), "not a readable Parquet file"),
        ("orders.orc", OrcFormat(), "not a readable ORC file"),
        ("orders.avro", AvroFormat(), "not a readable Avro file"),
    ],
)
def test_a_truncated_columnar_file_raises_a_malformed_file_error(
    tmp_path: Path, name: str, spec: Any, reason: str
) -> None:
    whole = tmp_path / f"whole-{name}"
    if name.endswith(".parquet"):
        pq.write_table(_typed_table(), whole)
    elif name.endswith(".orc"):
        orc.write_table(_typed_table().drop_columns(["placed_at"]), str(whole))
    else:
        with whole.open("wb") as file:
            fastavro.writer(file, fastavro.parse_schema(AVRO_SCHEMA), _avro_records())
    data = whole.read_bytes()
    path = write(tmp_path / name, data[: len(data) - 40])
    with pytest.raises(MalformedFileError) as raised:
        read(path, spec)
    assert str(raised.value).startswith(f"file '{name}': {reason}")


# --- Excel ---------------------------------------------------------------------------------------

SPREADSHEET = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
RELATIONSHIPS = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
PACKAGE = "http://schemas.openxmlformats.org/package/2006/relationships"


class ExcelDate:
    """A cell holding an Excel date serial, styled as a date."""

    def __init__(self, serial: int) -> None:
        self.serial = serial


def _cell(reference: str, value: object) -> str:
    if isinstance(value, bool):
        return f'<c r="{reference}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, int | float):
        return f'<c r="{reference}"><v>{value}</v></c>'
    if isinstance(value, ExcelDate):
        return f'<c r="{reference}" s="1"><v>{value.serial}</v></c>'
    return f'<c r="{reference}" t="inlineStr"><is><t>{escape(str(value))}</t></is></c>'


def write_xlsx(path: Path, sheets: dict[str, list[list[object]]]) -> Path:
    """A minimal SpreadsheetML workbook, one inline-string sheet per entry."""
    count = len(sheets)
    with zipfile.ZipFile(path, "w") as archive:
        overrides = "".join(
            f'<Override PartName="/xl/worksheets/sheet{i}.xml" ContentType="application/'
            'vnd.openxmlformats-officedocument.spreadsheetml.worksheet+xml"/>'
            for i in range(1, count + 1)
        )
        archive.writestr(
            "[Content_Types].xml",
            '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
            '<Default Extension="rels" ContentType="application/vnd.openxmlformats-package.'
            'relationships+xml"/><Default Extension="xml" ContentType="application/xml"/>'
            '<Override PartName="/xl/workbook.xml" ContentType="application/vnd.openxmlformats-'
            'officedocument.spreadsheetml.sheet.main+xml"/>' + overrides + "</Types>",
        )
        archive.writestr(
            "_rels/.rels",
            f'<Relationships xmlns="{PACKAGE}"><Relationship Id="rId1" '
            f'Type="{RELATIONSHIPS}/officeDocument" Target="xl/workbook.xml"/></Relationships>',
        )
        names = "".join(
            f'<sheet name="{name}" sheetId="{i}" r:id="rId{i}"/>'
            for i, name in enumerate(sheets, 1)
        )
        archive.writestr(
            "xl/workbook.xml",
            f'<workbook xmlns="{SPREADSHEET}" xmlns:r="{RELATIONSHIPS}"><sheets>{names}</sheets>'
            "</workbook>",
        )
        links = "".join(
            f'<Relationship Id="rId{i}" Type="{RELATIONSHIPS}/worksheet" '
            f'Target="worksheets/sheet{i}.xml"/>'
            for i in range(1, count + 1)
        )
        archive.writestr(
            "xl/_rels/workbook.xml.rels",
            f'<Relationships xmlns="{PACKAGE}">{links}<Relationship Id="rIdStyles" '
            f'Type="{RELATIONSHIPS}/styles" Target="styles.xml"/></Relationships>',
        )
        archive.writestr(
            "xl/styles.xml",
            f'<styleSheet xmlns="{SPREADSHEET}"><cellXfs count="2"><xf numFmtId="0"/>'
            '<xf numFmtId="14" applyNumberFormat="1"/></cellXfs></styleSheet>',
        )
        for i, rows in enumerate(sheets.values(), 1):
            body = "".join(
                f'<row r="{r}">'
                + "".join(
                    _cell(f"{chr(65 + c)}{r}", value)
                    for c, value in enumerate(row)
                    if value is not None
                )
                + "</row>"
                for r, row in enumerate(rows, 1)
            )
            archive.writestr(
                f"xl/worksheets/sheet{i}.xml",
                f'<worksheet xmlns="{SPREADSHEET}"><sheetData>{body}</sheetData></worksheet>',
            )
    return path


def _workbook(tmp_path: Path) -> Path:
    return write_xlsx(
        tmp_path / "orders.xlsx",
        {
            "notes": [["made by hand"]],
            "data": [
                ["Orders export"],
                ["id", "name", "amount", "day", "paid"],
                [1, "Łódź", 12.5, ExcelDate(45352), True],
                [2, "日本", 0.1, None, False],
                [3, "Müller", 7, ExcelDate(45657), True],
            ],
        },
    )


def test_an_excel_sheet_by_name_or_index_with_its_header(tmp_path: Path) -> None:
    path = _workbook(tmp_path)
    table, _ = read(path, ExcelFormat(sheet="data", skip_rows=1), batch_rows=2)
    assert table.schema == pa.schema(
        [
            ("id", pa.int64()),
            ("name", pa.string()),
            ("amount", pa.float64()),
            ("day", pa.date32()),
            ("paid", pa.bool_()),
            ("_rescued_data", pa.string()),
        ]
    )
    assert table.column("id").to_pylist() == [1, 2, 3]
    assert table.column("name").to_pylist() == ["Łódź", "日本", "Müller"]
    assert table.column("amount").to_pylist() == [12.5, 0.1, 7.0]
    assert table.column("day").to_pylist() == [
        datetime.date(2024, 3, 1),
        None,
        datetime.date(2024, 12, 31),
    ]
    assert table.column("paid").to_pylist() == [True, False, True]
    same, _ = read(path, ExcelFormat(sheet=1, skip_rows=1))
    assert same == table
    schema = pa.schema([("amount", pa.decimal128(19, 4))])
    with path.open("rb") as file:
        declared, _ = read(file, ExcelFormat(sheet="data", skip_rows=1), schema, name="orders.xlsx")
    assert declared.column("amount").to_pylist() == [
        Decimal("12.5000"),
        Decimal("0.1000"),
        Decimal("7.0000"),
    ]


@pytest.mark.parametrize(
    ("sheet", "reason"),
    [
        ("orders", "the workbook has no sheet 'orders' (sheets: ['notes', 'data'])"),
        (2, "the workbook has no sheet 2 (sheets, from 0: ['notes', 'data'])"),
    ],
)
def test_a_missing_sheet_raises_with_the_sheet_names(
    tmp_path: Path, sheet: str | int, reason: str
) -> None:
    with pytest.raises(MalformedFileError) as raised:
        read(_workbook(tmp_path), ExcelFormat(sheet=sheet))
    assert str(raised.value).startswith(f"file 'orders.xlsx': {reason}. Fix: set sheet to")


def test_a_file_that_is_not_a_workbook_raises(tmp_path: Path) -> None:
    with pytest.raises(MalformedFileError, match="not a readable workbook"):
        read(write(tmp_path / "orders.xlsx", b"id,name\n1,a\n"), ExcelFormat())


# --- XML -----------------------------------------------------------------------------------------

ORDERS_XML = """<?xml version="1.0" encoding="UTF-8"?>
<export xmlns="urn:shop">
  <meta><created>2024-03-01</created></meta>
  <orders>
    <order id="1" status="open">
      <amount>12.3456</amount>
      <placed_at>2024-03-01T10:00:00+01:00</placed_at>
      <city> Łódź </city>
      <tag>a</tag><tag>b</tag>
      <address kind="home"><street>Main 1</street></address>
    </order>
    <order id="2"><amount>bad</amount><city/></order>
    <order id="3">note text</order>
  </orders>
</export>
"""


def test_xml_rows_take_attributes_and_children_as_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "orders.xml", ORDERS_XML.encode())
    schema = pa.schema(
        [("amount", pa.decimal128(19, 4)), ("placed_at", pa.timestamp("us", tz="UTC"))]
    )
    table, report = read(path, XmlFormat(row_element="orders/order"), schema, chunk_bytes=16)
    assert table.column_names == [
        "amount",
        "placed_at",
        "_id",
        "_status",
        "city",
        "tag",
        "address",
        "_VALUE",
        "_rescued_data",
    ]
    assert table.column("amount").to_pylist() == [Decimal("12.3456"), None, None]
    assert table.column("placed_at").to_pylist() == [utc(2024, 3, 1, 9), None, None]
    assert table.column("_id").to_pylist() == [1, 2, 3]
    assert table.column("_status").to_pylist() == ["open", None, None]
    assert table.column("city").to_pylist() == ["Łódź", None, None]
    assert table.column("tag").to_pylist() == ['["a","b"]', None, None]
    assert table.column("address").to_pylist() == [
        '<ns0:address xmlns:ns0="urn:shop" kind="home"><ns0:street>Main 1</ns0:street></ns0:address>',
        None,
        None,
    ]
    assert table.column("_VALUE").to_pylist() == [None, None, "note text"]
    assert table.column("_rescued_data").to_pylist() == [None, '{"amount":"bad"}', None]
    assert report.rescued_rows == 1


def test_many_xml_rows_stream_in_batches(tmp_path: Path) -> None:
    rows = "".join(f'<row n="{index}"><v>{index * 2}</v></row>' for index in range(5000))
    path = write(tmp_path / "rows.xml.gz", gzip.compress(f"<rows>{rows}</rows>".encode()))
    batches = list(read_batches(path, "rows.xml.gz", XmlFormat(row_element="row"), batch_rows=700))
    assert [batch.num_rows for batch in batches] == [700] * 7 + [100]
    table = pa.Table.from_batches(batches)
    assert table.column("_n").to_pylist() == list(range(5000))
    assert table.column("v").to_pylist() == [index * 2 for index in range(5000)]


def test_malformed_xml_raises_with_its_position(tmp_path: Path) -> None:
    path = write(tmp_path / "cut.xml", b"<rows>\n<row><v>1</v></row>\n<row><v>2</v>")
    with pytest.raises(MalformedFileError) as raised:
        read(path, XmlFormat(row_element="row"))
    assert str(raised.value) == (
        "file 'cut.xml': not well-formed XML at line 3, column 14 (no element found). Fix: send "
        "well-formed XML (a complete file: a cut-off upload ends inside an element)"
    )
