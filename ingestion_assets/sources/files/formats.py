"""File formats of a landing zone: one frozen spec per format, the report of a read, its error.

`FileFormat` is the choice a project file makes (`format: {type: csv, delimiter: ";"}`); the readers
that turn one file's bytes into Arrow record batches live beside this module (`csv.py`, `json.py`,
`columnar.py`, `excel.py`, `xml.py`) behind one entry point, `read.read_batches`. Nothing here does
I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ingestion_assets.errors import SourceError
from ingestion_assets.specs import Spec

Encoding = Literal[
    "utf-8", "utf-8-sig", "utf-16", "utf-16le", "utf-16be", "windows-1252", "latin-1"
]
Compression = Literal["auto", "none", "gzip", "zstd", "zip"]

# The translation of multi-character terminators (files/text.py) uses these two control characters
# as its own delimiter and quote; a terminator made of them could not be told apart.
RESERVED_CHARACTERS = "\x1e\x1f"


class MalformedFileError(SourceError):
    """A file cannot be read as its declared format; the message names the file, the fault, the fix."""

    def __init__(self, file_name: str, reason: str, fix: str) -> None:
        super().__init__(f"file '{file_name}': {reason}. Fix: {fix}")
        self.file_name = file_name
        self.reason = reason


@dataclass(frozen=True)
class RaggedRow:
    """A row with the wrong number of fields, skipped within `max_ragged_rows`; `line` is 1-based."""

    line: int | None
    expected_fields: int
    actual_fields: int
    text: str


@dataclass
class ReadReport:
    """What a read found besides its batches; complete once the batch iterator is exhausted."""

    rows: int = 0
    rescued_rows: int = 0
    ragged_rows: list[RaggedRow] = field(default_factory=list)


class _Compressed(Spec):
    """Options of the formats whose bytes may arrive compressed."""

    compression: Compression = Field(
        "auto",
        description="`auto`: from the file name (`.gz`, `.zst`/`.zstd`, `.zip`, else none); or "
        "`gzip`, `zstd`, `zip`, `none`.",
    )
    zip_member: str | None = Field(
        None, description="The member of a `.zip` to read; needed when it holds several files."
    )

    @model_validator(mode="after")
    def _member_only_for_zip(self) -> _Compressed:
        if self.zip_member is not None and self.compression not in ("auto", "zip"):
            raise ValueError(
                f"zip_member is set but compression is '{self.compression}': "
                "set compression to zip (or auto), or remove zip_member"
            )
        return self


class _Delimited(_Compressed):
    """Options shared by CSV and TSV."""

    delimiter: str = Field(
        ",", min_length=1, description="Field terminator; may be several characters (`+|`)."
    )
    row_terminator: str | None = Field(
        None,
        min_length=1,
        description="None: `\\n` or `\\r\\n`. Several characters (`&|`) are translated while "
        "streaming; quoting is then off.",
    )
    header: bool = Field(True, description="The first row (after `skip_rows`) names the columns.")
    column_names: list[str] | None = Field(
        None, description="Column names: for a file without header, or to rename the header's."
    )
    quote_char: str | None = Field(
        '"', min_length=1, max_length=1, description="None disables quoting."
    )
    escape_char: str | None = Field(
        None, min_length=1, max_length=1, description="Escapes the next character, e.g. `\\`."
    )
    double_quote: bool = Field(True, description='`""` inside a quoted value is one `"`.')
    null_values: list[str] = Field(
        default_factory=lambda: [""],
        description="Values read as null, e.g. `NULL`, `\\N`; the empty string by default.",
    )
    encoding: Encoding = Field(
        "utf-8", description="Text encoding; a leading byte order mark is dropped in every one."
    )
    skip_rows: int = Field(0, ge=0, description="Rows to skip before the header (or first row).")
    max_ragged_rows: int = Field(
        0,
        ge=0,
        description="Rows with the wrong field count tolerated (skipped, reported); one more "
        "makes the file malformed.",
    )

    @property
    def translates_terminators(self) -> bool:
        """Whether the terminators are beyond pyarrow's parser: more than one byte, or custom rows."""
        return len(self.delimiter.encode()) > 1 or self.row_terminator not in (None, "\n", "\r\n")

    @model_validator(mode="after")
    def _terminators_are_readable(self) -> _Delimited:
        tokens = [self.delimiter] + ([self.row_terminator] if self.row_terminator else [])
        for token in tokens:
            if any(char in RESERVED_CHARACTERS for char in token):
                raise ValueError("a terminator may not contain the control characters \\x1e, \\x1f")
            if _overlap(token, token):
                raise ValueError(
                    f"terminator {token!r} overlaps itself (its end is its start): "
                    "a split would be ambiguous"
                )
        if any(char in "\r\n" for char in self.delimiter):
            raise ValueError("the delimiter may not contain \\r or \\n")
        if self.row_terminator is not None and _overlap(self.delimiter, self.row_terminator):
            raise ValueError(
                f"delimiter {self.delimiter!r} and row_terminator {self.row_terminator!r} "
                "overlap (one's end is the other's start): a split would be ambiguous"
            )
        if self.row_terminator == self.delimiter:
            raise ValueError("delimiter and row_terminator must differ")
        if self.translates_terminators and (self.quote_char or self.escape_char):
            raise ValueError(
                "with a multi-character delimiter or a custom row_terminator values are taken "
                "literally: set quote_char: null and escape_char: null"
            )
        if self.column_names is not None and len(set(self.column_names)) != len(self.column_names):
            raise ValueError("column_names has duplicates")
        return self


def _overlap(first: str, second: str) -> bool:
    """Whether a proper suffix of one token is a proper prefix of the other."""
    for a, b in ((first, second), (second, first)):
        for size in range(1, min(len(a), len(b))):
            if a[-size:] == b[:size]:
                return True
    return False


class CsvFormat(_Delimited):
    """Comma (or any) separated values, read by pyarrow's streaming CSV reader."""

    type: Literal["csv"] = "csv"


class TsvFormat(_Delimited):
    """Tab separated values: CSV with a tab delimiter."""

    type: Literal["tsv"] = "tsv"
    delimiter: str = Field("\t", min_length=1, description="Field terminator, a tab by default.")


class JsonFormat(_Compressed):
    """A top-level JSON array of objects, or an object holding the array at `records_path`."""

    type: Literal["json"] = "json"
    records_path: str | None = Field(
        None,
        description="Dotted path to the records array inside a top-level object (`data.items`).",
    )
    encoding: Encoding = "utf-8"


class NdjsonFormat(_Compressed):
    """Newline-delimited JSON: one object per line."""

    type: Literal["ndjson"] = "ndjson"
    encoding: Encoding = "utf-8"


class ParquetFormat(Spec):
    """Apache Parquet, read row group by row group."""

    type: Literal["parquet"] = "parquet"


class OrcFormat(Spec):
    """Apache ORC, read stripe by stripe."""

    type: Literal["orc"] = "orc"


class AvroFormat(Spec):
    """Avro object container files, decoded block by block by their writer schema."""

    type: Literal["avro"] = "avro"


class ExcelFormat(Spec):
    """One sheet of an `.xlsx` (or `.xlsm`, `.xlsb`, `.ods`) workbook."""

    type: Literal["excel"] = "excel"
    sheet: str | int = Field(0, description="Sheet name, or its 0-based index.")
    header: bool = Field(True, description="The first row (after `skip_rows`) names the columns.")
    column_names: list[str] | None = None
    skip_rows: int = Field(0, ge=0, description="Rows above the header (titles, notes).")


class XmlFormat(_Compressed):
    """XML whose `row_element`s are the rows; their attributes and child elements the columns."""

    type: Literal["xml"] = "xml"
    row_element: str = Field(
        ...,
        min_length=1,
        description="Tag of a row (`order`), or a path ending in it (`orders/order`).",
    )
    attribute_prefix: str = Field("_", description="Prefix of columns made from attributes.")
    value_column: str = Field("_VALUE", description="Column of a row element's own text.")
    strip_whitespace: bool = Field(True, description="Strip spaces around element text.")

    @model_validator(mode="after")
    def _row_element_is_a_path(self) -> XmlFormat:
        if any(not part for part in self.row_element.split("/")):
            raise ValueError(f"row_element {self.row_element!r} has an empty step")
        return self


FileFormat = Annotated[
    CsvFormat
    | TsvFormat
    | JsonFormat
    | NdjsonFormat
    | ParquetFormat
    | OrcFormat
    | AvroFormat
    | ExcelFormat
    | XmlFormat,
    Field(discriminator="type"),
]
