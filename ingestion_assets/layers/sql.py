"""A layer's SELECT, understood without running it (sqlglot): the inputs it reads, whether the
columns it names exist, the columns it produces and where each comes from, and the same query
in Databricks' dialect.

Names are DuckDB's: unquoted identifiers match whatever their case (sqlglot normalizes them to
lower case), and each name is given back in the spelling of the input's schema, or of the SQL
where no schema is known. Nothing here touches data or opens a connection.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError, ParseError, SqlglotError
from sqlglot.lineage import lineage
from sqlglot.optimizer.annotate_types import annotate_types
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, traverse_scope

from ingestion_assets.errors import ConfigError

DIALECT = "duckdb"
# {input name: {column: SQL type, "" when unknown}}; an input without an entry has unknown columns
Schemas = Mapping[str, Mapping[str, str]]


class LayerSqlError(ConfigError):
    """A layer's SQL does not parse, reads what is not an input, or names a missing column."""


@dataclass(frozen=True)
class ColumnSource:
    """One input column an output column is computed from."""

    input_name: str
    column: str


def parse_select(sql: str, where: str) -> exp.Query:
    """The one SELECT of a layer, parsed; a clear error for anything else."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=DIALECT) if s is not None]
    except ParseError as error:
        detail = error.errors[0] if error.errors else {}
        position = (
            f" at line {detail.get('line')}, column {detail.get('col')}"
            if detail.get("line")
            else ""
        )
        raise LayerSqlError(
            f"{where}: the SQL does not parse{position}: {detail.get('description', error)}. "
            "Write one SELECT in DuckDB's dialect."
        ) from None
    if len(statements) != 1 or not isinstance(statements[0], exp.Query):
        kinds = ", ".join(type(s).__name__.upper() for s in statements) or "nothing"
        raise LayerSqlError(
            f"{where}: the SQL must be exactly one SELECT (found {kinds}); a layer's table is "
            "written by the project, not by the statement."
        )
    return statements[0]


def check_expectation(name: str, sql: str, output: list[str] | None, where: str) -> None:
    """An expectation is one boolean expression that parses, over the layer's output columns
    (checked when they are known)."""
    try:
        expression = sqlglot.parse_one(sql, read=DIALECT)
    except ParseError as error:
        detail = error.errors[0] if error.errors else {}
        raise LayerSqlError(
            f"{where}: expectation {name}: `{sql}` does not parse: "
            f"{detail.get('description', error)}. Write one boolean SQL expression over the "
            "layer's output columns."
        ) from None
    if isinstance(expression, exp.Query) or expression.find(exp.Subquery) is not None:
        raise LayerSqlError(
            f"{where}: expectation {name}: `{sql}` holds a query; an expectation judges one row "
            "by its own columns (join what it needs in the layer's SQL)."
        )
    if output is None:
        return
    known = {column.lower() for column in output}
    for column in expression.find_all(exp.Column):
        if column.name.lower() not in known:
            raise LayerSqlError(
                f"{where}: expectation {name}: column {column.name} is not an output column of "
                f"the layer; its columns: {', '.join(output)}"
            )


def referenced_tables(query: exp.Query) -> set[str]:
    """The names the query reads as tables (its own CTEs left out), as written."""
    ctes = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
    return {
        table.name
        for table in query.find_all(exp.Table)
        if table.name and table.name.lower() not in ctes and not table.args.get("db")
    } | {
        ".".join(part for part in (table.db, table.name) if part)
        for table in query.find_all(exp.Table)
        if table.args.get("db")
    }


def check_inputs(query: exp.Query, inputs: Mapping[str, str], where: str) -> None:
    """Every table the query reads is one of the layer's inputs, by name."""
    known = {name.lower() for name in inputs}
    unknown = sorted(name for name in referenced_tables(query) if name.lower() not in known)
    if unknown:
        raise LayerSqlError(
            f"{where}: the SQL reads {', '.join(unknown)}, which "
            f"{'is not an input' if len(unknown) == 1 else 'are not inputs'}; the inputs are "
            f"{', '.join(f'{name} ({key})' for name, key in inputs.items())}. Add it under "
            "`inputs` or fix the name."
        )


def _lower_schemas(schemas: Schemas) -> dict[str, object]:
    return {
        name.lower(): {column.lower(): kind or "UNKNOWN" for column, kind in columns.items()}
        for name, columns in schemas.items()
    }


def _input_of(scope: Scope, qualifier: str) -> str | None:
    """The input table a column qualifier (an alias or a table name) stands for in a scope."""
    source = scope.sources.get(qualifier) or scope.sources.get(qualifier.lower())
    if isinstance(source, exp.Table) and not source.args.get("db"):
        return source.name
    return None


def check_columns(
    query: exp.Query, schemas: Schemas, inputs: Mapping[str, str], where: str
) -> None:
    """Every column the query names exists in the input it reads it from: a qualified column
    (`h.ShipDate`) against its input's schema when known; when every input's schema is known,
    unqualified ones too. A missing column names the input and its columns."""
    by_name = {name.lower(): (name, columns) for name, columns in schemas.items()}
    for scope in traverse_scope(query.copy()):
        for column in scope.columns:
            if not column.table or isinstance(column.this, exp.Star):
                continue
            table = _input_of(scope, column.table)
            if table is None or table.lower() not in by_name:
                continue
            name, columns = by_name[table.lower()]
            if column.name.lower() not in {known.lower() for known in columns}:
                raise _missing_column(where, column.name, name, inputs, columns)
    read = {name.lower() for name in referenced_tables(query)}
    if not read <= set(by_name):
        return
    try:
        qualify(
            query.copy(),
            schema=_lower_schemas({name: schemas[name] for name in schemas}),
            dialect=DIALECT,
            validate_qualify_columns=True,
        )
    except OptimizeError as error:
        match = re.search(r"Unknown column: (\S+)|Column '?\"?([^'\"]+)", str(error))
        missing = next((group for group in (match.groups() if match else ()) if group), None)
        known = ", ".join(f"{name} ({key})" for name, key in inputs.items())
        raise LayerSqlError(
            f"{where}: "
            + (
                f"column {missing} is in none of the inputs it may come from"
                if missing
                else str(error)
            )
            + f" (inputs: {known}). Fix the name, or qualify it with its input."
        ) from None


def _missing_column(
    where: str, column: str, input_name: str, inputs: Mapping[str, str], columns: Mapping[str, str]
) -> LayerSqlError:
    key = next((key for name, key in inputs.items() if name.lower() == input_name.lower()), "")
    return LayerSqlError(
        f"{where}: column {column} is not a column of input {input_name} ({key}); its columns: "
        f"{', '.join(columns)}. Fix the name in the SQL, or add the column to the input."
    )


def _spellings(query: exp.Query, schemas: Schemas) -> dict[str, str]:
    """lower-case name -> its spelling: the inputs' schemas first, then the SQL's own."""
    spelled: dict[str, str] = {}
    for identifier in query.find_all(exp.Identifier):
        spelled.setdefault(identifier.name.lower(), identifier.name)
    for columns in schemas.values():
        for column in columns:
            spelled[column.lower()] = column
    return spelled


def output_columns(query: exp.Query, schemas: Schemas) -> list[tuple[str, str]] | None:
    """The query's output columns and their SQL types ("" when unknown), in order; None when a
    `*` reads an input whose columns are not known."""
    spelled = _spellings(query, schemas)
    read = {name.lower() for name in referenced_tables(query)}
    known = {name.lower() for name in schemas}
    has_star = any(
        isinstance(column.this, exp.Star) for column in query.find_all(exp.Column)
    ) or any(isinstance(select, exp.Star) for select in query.selects)
    if has_star and not read <= known:
        return None
    try:
        qualified = qualify(
            query.copy(),
            schema=_lower_schemas(schemas),
            dialect=DIALECT,
            validate_qualify_columns=False,
        )
        typed = annotate_types(qualified, schema=_lower_schemas(schemas), dialect=DIALECT)
    except SqlglotError:
        return None
    columns: list[tuple[str, str]] = []
    for select, original in zip(typed.selects, _original_names(query, typed), strict=True):
        kind = select.type.sql(DIALECT).upper() if select.type is not None else ""
        name = original or spelled.get(select.alias_or_name.lower(), select.alias_or_name)
        columns.append((name, "" if kind in ("UNKNOWN", "NULL") else kind))
    return columns


def _original_names(query: exp.Query, typed: exp.Query) -> list[str | None]:
    """The output names as DuckDB spells them (the alias or column as written) when the
    query's own select list has them one for one; None where a `*` was expanded."""
    selects = query.selects
    if len(selects) != len(typed.selects) or any(
        isinstance(select, exp.Star) or isinstance(select.this, exp.Star) for select in selects
    ):
        return [None] * len(typed.selects)
    return [select.alias_or_name or None for select in selects]


def column_lineage(
    query: exp.Query, schemas: Schemas, output_names: list[str]
) -> dict[str, list[ColumnSource]]:
    """For each output column, the input columns it is computed from (through CTEs, joins and
    aggregates); a column computed from none (`count(*)`, a literal) has no entry."""
    spelled = _spellings(query, schemas)
    lowered = _lower_schemas(schemas)
    inputs = {name.lower(): name for name in referenced_tables(query)}
    sql = query.sql(DIALECT)
    found: dict[str, list[ColumnSource]] = {}
    for name in output_names:
        try:
            node = lineage(name, sql, schema=lowered, dialect=DIALECT)
        except SqlglotError:
            continue
        sources: list[ColumnSource] = []
        for step in node.walk():
            if step.downstream or not isinstance(step.source, exp.Table):
                continue
            table = inputs.get(step.source.name.lower())
            column = step.name.rsplit(".", 1)[-1]
            if table is None or column == "*":
                continue
            source = ColumnSource(table, spelled.get(column.lower(), column))
            if source not in sources:
                sources.append(source)
        if sources:
            found[name] = sorted(sources, key=lambda s: (s.input_name, s.column))
    return found


def to_dialect(sql: str, dialect: str) -> str:
    """The SELECT in another engine's dialect (`databricks`), identifiers quoted."""
    return sqlglot.transpile(sql, read=DIALECT, write=dialect, identify=True)[0]


def with_table_names(query: exp.Query, names: Mapping[str, exp.Table]) -> exp.Query:
    """The query reading `names[input]` wherever it reads an input (its CTEs left alone)."""
    ctes = {cte.alias_or_name.lower() for cte in query.find_all(exp.CTE)}
    lowered = {name.lower(): table for name, table in names.items()}

    def swap(node: exp.Expression) -> exp.Expression:
        if (
            isinstance(node, exp.Table)
            and not node.args.get("db")
            and node.name.lower() not in ctes
            and node.name.lower() in lowered
        ):
            replacement = lowered[node.name.lower()].copy()
            replacement.set(
                "alias", node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
            )
            return replacement
        return node

    swapped = query.copy().transform(swap)
    assert isinstance(swapped, exp.Query)
    return swapped


# Arrow types -> the SQL types sqlglot reasons with (DuckDB's names)
_ARROW_SQL = {
    "bool": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INT",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "halffloat": "FLOAT",
    "float": "FLOAT",
    "double": "DOUBLE",
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "string_view": "VARCHAR",
    "binary": "BLOB",
    "large_binary": "BLOB",
    "binary_view": "BLOB",
    "date32[day]": "DATE",
    "date64[ms]": "DATE",
}


def sql_type(arrow: pa.DataType | str) -> str:
    """An Arrow type (or its text) as a SQL type; "" when it has no plain SQL equivalent."""
    text = str(arrow)
    if text in _ARROW_SQL:
        return _ARROW_SQL[text]
    decimal = re.match(r"decimal(?:128|256)?\((\d+), ?(\d+)\)", text)
    if decimal:
        return f"DECIMAL({decimal.group(1)},{decimal.group(2)})"
    if text.startswith("timestamp["):
        return "TIMESTAMPTZ" if "tz=" in text else "TIMESTAMP"
    if text.startswith("time"):
        return "TIME"
    return ""
