"""A minimal Singer target, built with the Meltano Singer SDK, that writes each stream to Parquet.

The benchmark's stand-in for a Parquet target: the PyPI package `target-parquet` (0.0.1) pins
pandas 0.24.2, which does not install on Python 3.11. Records go through the SDK's usual path
(JSON parsing, schema validation, timestamp parsing) and each batch becomes one Parquet row group,
typed from the stream's JSON schema. Config: `{"destination_path": "/some/dir"}`.
"""

from __future__ import annotations

import decimal
import pathlib
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from singer_sdk import Target
from singer_sdk import typing as th
from singer_sdk.sinks import BatchSink


def _arrow_type(schema: dict[str, Any]) -> pa.DataType:
    """The Arrow type for one JSON-schema property (Singer's conventions)."""
    kinds = schema.get("type", "string")
    kinds = [kinds] if isinstance(kinds, str) else [kind for kind in kinds if kind != "null"]
    if not kinds and "anyOf" in schema:
        for option in schema["anyOf"]:
            if option.get("type") not in ("null", ["null"]):
                return _arrow_type(option)
    kind = kinds[0] if kinds else "string"
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "boolean":
        return pa.bool_()
    if kind == "string" and schema.get("format") == "date-time":
        return pa.timestamp("us")
    if kind == "string" and schema.get("format") == "date":
        return pa.date32()
    return pa.string()


def _plain(value: Any) -> Any:
    """Values Arrow cannot take as they come (decimals for a float column, nested data)."""
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dict | list):
        return str(value)
    return value


class ParquetSink(BatchSink):
    """Writes a stream's batches as row groups of one Parquet file."""

    max_size = 10_000

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        properties = self.schema.get("properties", {})
        self.arrow_schema = pa.schema(
            [pa.field(name, _arrow_type(spec)) for name, spec in properties.items()]
        )
        directory = pathlib.Path(self.config["destination_path"])
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.stream_name}.parquet"
        self.writer = pq.ParquetWriter(path, self.arrow_schema)

    def process_batch(self, context: dict[str, Any]) -> None:
        """Append the batch's records as one row group."""
        records = context.get("records", [])
        names = self.arrow_schema.names
        columns = {name: [_plain(record.get(name)) for record in records] for name in names}
        table = pa.Table.from_pydict(columns, schema=self.arrow_schema)
        self.writer.write_table(table)

    def clean_up(self) -> None:
        """Close the Parquet file."""
        self.writer.close()
        super().clean_up()


class TargetBenchParquet(Target):
    """Singer target writing one Parquet file per stream."""

    name = "target-bench-parquet"
    config_jsonschema = th.PropertiesList(
        th.Property("destination_path", th.StringType, required=True),
    ).to_dict()
    default_sink_class = ParquetSink


if __name__ == "__main__":
    TargetBenchParquet.cli()
