"""XML files: each `row_element` is a row, its attributes and child elements the columns.

Parsed by the standard library's `xml.etree.ElementTree.iterparse` (expat, C): a row is built when
its end tag arrives, then cleared and detached from its parent, so memory holds one row whatever
the file's size. lxml would parse perhaps twice as fast but is one more native dependency; for
landing-zone XML the Arrow conversion, not the parse, dominates. expat never fetches external
entities and, since 2.4, refuses entity expansion bombs (billion laughs).

Columns: an attribute `id` becomes `_id` (`attribute_prefix`, as Databricks' XML reader names it);
a leaf child `<name>Ann</name>` becomes `name`; a child with children or attributes keeps its XML
text; a child that repeats keeps its values as a JSON array text; the row's own text is `_VALUE`.
Namespaces are dropped from names (`{urn:x}order` is `order`). Every value is text, typed later.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator

import orjson
import pyarrow as pa

from ingestion_assets.sources.files.conform import rows_without_columns
from ingestion_assets.sources.files.formats import MalformedFileError, XmlFormat
from ingestion_assets.sources.files.text import ChunkStream, Source, decompressed_chunks


def read_xml(
    source: Source, file_name: str, spec: XmlFormat, *, batch_rows: int, chunk_bytes: int
) -> Iterator[pa.Table]:
    """The file's rows, `batch_rows` at a time, as text columns."""
    stream = ChunkStream(
        decompressed_chunks(source, file_name, spec.compression, spec.zip_member, chunk_bytes)
    )
    path = spec.row_element.split("/")
    stack: list[ElementTree.Element] = []
    names: list[str] = []
    row_depth: int | None = None
    records: list[dict[str, str | None]] = []
    try:
        # expat fetches no external entity and refuses entity expansion bombs (module docstring)
        for event, element in ElementTree.iterparse(stream, events=("start", "end")):  # noqa: S314
            if event == "start":
                stack.append(element)
                names.append(_local(element.tag))
                if row_depth is None and names[-len(path) :] == path:
                    row_depth = len(stack)
                continue
            depth = len(stack)
            stack.pop()
            names.pop()
            if row_depth is not None and depth > row_depth:
                continue
            if depth == row_depth:
                records.append(_record(element, spec))
                row_depth = None
            element.clear()
            if stack:
                stack[-1].remove(element)
            if len(records) == batch_rows:
                yield _table(records)
                records = []
    except ElementTree.ParseError as error:
        line, column = error.position
        problem = str(error).split(": line ")[0]
        raise MalformedFileError(
            file_name,
            f"not well-formed XML at line {line}, column {column + 1} ({problem})",
            "send well-formed XML (a complete file: a cut-off upload ends inside an element)",
        ) from error
    if records:
        yield _table(records)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _record(element: ElementTree.Element, spec: XmlFormat) -> dict[str, str | None]:
    record: dict[str, str | None] = {
        spec.attribute_prefix + _local(name): value for name, value in element.attrib.items()
    }
    children: dict[str, list[str | None]] = {}
    for child in element:
        if len(child) or child.attrib:
            child.tail = None
            value: str | None = ElementTree.tostring(child, encoding="unicode")
        else:
            value = _text(child.text, spec)
        children.setdefault(_local(child.tag), []).append(value)
    for name, values in children.items():
        record[name] = values[0] if len(values) == 1 else orjson.dumps(values).decode()
    own_text = _text(element.text, spec)
    if own_text is not None:
        record[spec.value_column] = own_text
    return record


def _text(text: str | None, spec: XmlFormat) -> str | None:
    if text is None:
        return None
    if spec.strip_whitespace:
        text = text.strip()
    return text or None


def _table(records: list[dict[str, str | None]]) -> pa.Table:
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    if not names:
        return rows_without_columns(len(records))
    return pa.table(
        {name: pa.array([record.get(name) for record in records], pa.string()) for name in names}
    )
