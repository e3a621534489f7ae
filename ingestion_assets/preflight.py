"""`ingest check`: every source's tables, columns, streams and credentials checked at the source,
before any run.

A misspelt table or column, or a refused password, otherwise shows only when a run fails. The
check opens each source as a run would (its resource, secrets read from the environment) and asks
it to `verify` each table or stream: SQL reflects the table and runs the read's query with
`LIMIT 1`, REST asks for the first page of a sample day, one record long. It prints one line per
table or stream and one per problem, with the fix, the project-file key it changes and the
environment variables that key reads (never their values). The `check_sources` job runs the same
check from Dagster, one op per source. Nothing is read in bulk and nothing is written.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast
from zoneinfo import ZoneInfo

from dagster import (
    Failure,
    Field,
    GraphDefinition,
    JobDefinition,
    MetadataValue,
    Noneable,
    Nothing,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    op,
)
from dotenv import dotenv_values

from ingestion_assets.errors import ConfigError, IngestionError
from ingestion_assets.factory import source_resource, source_resource_key
from ingestion_assets.project import load_project, project_file_path
from ingestion_assets.resources import SourceResource
from ingestion_assets.sources.base import Finding, did_you_mean
from ingestion_assets.sources.window import PartitionWindow
from ingestion_assets.specs import DatasetSpec, ProjectSpec, SourceSpecBase, env_reference

CHECK_JOB = "check_sources"
# the Dagster log level of a line of each status
STATUS_LEVELS = {
    "ok": "info",
    "note": "info",
    "warning": "warning",
    "problem": "error",
    "skipped": "error",
}


@dataclass
class DatasetCheck:
    """One table's or stream's findings; `checked` False: its source failed before it."""

    dataset: DatasetSpec
    # its place in the source's list, and its entry: `sources.erp.tables[0] (Sales.Orders)`
    index: int
    entry: str
    findings: list[Finding] = field(default_factory=list)
    checked: bool = True

    @property
    def status(self) -> str:
        """ok, warning, problem, or skipped."""
        severities = {finding.severity for finding in self.findings}
        if "error" in severities:
            return "problem"
        if not self.checked:
            return "skipped"
        return "warning" if "warning" in severities else "ok"


@dataclass
class SourceCheck:
    """A source's own findings (secrets, connection, credentials) and its datasets' checks."""

    name: str
    spec: SourceSpecBase
    findings: list[Finding] = field(default_factory=list)
    datasets: list[DatasetCheck] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        """Whether anything is wrong: an error, or a dataset left unchecked because of one."""
        return any(f.severity == "error" for f in self.findings) or any(
            item.status in ("problem", "skipped") for item in self.datasets
        )

    def counts(self) -> dict[str, int]:
        """Datasets by status."""
        counts = dict.fromkeys(("ok", "warning", "problem", "skipped"), 0)
        for item in self.datasets:
            counts[item.status] += 1
        return counts

    def lines(self) -> list[tuple[str, str]]:
        """(status, line) for the source's problems, then one or more per table or stream."""
        lines = [(_status(f), self._line(f, None)) for f in self.findings]
        for item in self.datasets:
            label = f"{self.name}/{item.dataset.qualified_name}"
            problems = [f for f in item.findings if f.severity != "note"]
            if not item.checked and not problems:
                lines.append(("skipped", f"{label}: not checked, the source failed first (above)"))
            elif not problems:
                notes = "; ".join(f.problem for f in item.findings if f.severity == "note")
                lines.append(("ok", label + (f": {notes}" if notes else "")))
            lines += [(_status(f), self._line(f, item)) for f in problems]
        return lines

    def _line(self, finding: Finding, item: DatasetCheck | None) -> str:
        label = self.name if item is None else f"{self.name}/{item.dataset.qualified_name}"
        if finding.key is not None and item is not None:
            where = f"{item.entry}.{finding.key}"
            dumped = _dumped(self.spec)[_collection(self.spec)][item.index]
            variables = _variables_at(dumped, finding.key)
        elif finding.source_key is not None:
            where = f"sources.{self.name}.{finding.source_key}"
            variables = _variables_at(_dumped(self.spec), finding.source_key)
        else:
            where, variables = "", []
        # a variable the problem names already (the one not set) is not named again
        variables = [name for name in variables if name not in finding.problem]
        reads = f", which reads {', '.join(variables)}" if variables else ""
        at = f" ({where}{reads})" if where else ""
        fix = f". Fix: {finding.fix}{at}" if finding.fix else at
        return f"{label}: {finding.problem}{fix}"

    def metadata(self) -> dict[str, Any]:
        """What the check found, as Dagster metadata of its op."""
        counts = self.counts()
        lines = self.lines()
        return {
            "tables_checked": sum(1 for item in self.datasets if item.checked),
            "problems": sum(1 for status, _ in lines if status == "problem"),
            "warnings": sum(1 for status, _ in lines if status == "warning"),
            "not_checked": counts["skipped"],
            "report": MetadataValue.md("\n".join(f"- **{s}** {text}" for s, text in lines)),
        }


def _status(finding: Finding) -> str:
    return {"error": "problem", "warning": "warning"}.get(finding.severity, "note")


def _collection(spec: SourceSpecBase) -> str:
    """The key of the source's list of datasets (`tables`, `streams`)."""
    fields = type(spec).model_fields
    return next((name for name in ("tables", "streams") if name in fields), "tables")


def _dumped(spec: SourceSpecBase) -> dict[str, Any]:
    return spec.model_dump(by_alias=True, mode="json")


def _references(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(key path, variable) of every `${VAR}` under a dumped spec."""
    if isinstance(value, str):
        name = env_reference(value)
        if name:
            yield path, name
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _references(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _references(item, f"{path}[{index}]")


def _variables_at(dumped: Mapping[str, Any], key: str) -> list[str]:
    """The environment variables the value at a dot `key` reads."""
    value: Any = dumped
    for part in key.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return sorted({name for _, name in _references(value)})


def missing_secrets(source_name: str, spec: SourceSpecBase) -> list[Finding]:
    """A finding per `${VAR}` of the source that the environment does not set."""
    return [
        Finding(
            source_name,
            None,
            f"environment variable {name} is not set",
            f"export {name}=... where the check and Dagster run",
            source_key=path,
        )
        for path, name in _references(_dumped(spec))
        if name not in os.environ
    ]


def sample_window(
    spec: SourceSpecBase,
    dataset: DatasetSpec,
    day: datetime.date | None = None,
    today: datetime.date | None = None,
) -> PartitionWindow | None:
    """The day a check asks a source for: `day`, else the last complete day of the dataset's
    partitions (the daily schedule's); None for a snapshot."""
    if dataset.partition_column is None:
        return None
    if day is None:
        today = today or datetime.datetime.now(ZoneInfo(spec.timezone)).date()
        end = min(spec.end_date, today) if spec.end_date else today
        day = max(spec.start_date_of(dataset), end - datetime.timedelta(days=1))
    return PartitionWindow.of_days(day, day, spec.timezone)


def _unchecked(source_name: str, spec: SourceSpecBase, findings: list[Finding]) -> SourceCheck:
    entries = _entries(source_name, spec)
    datasets = [
        DatasetCheck(dataset, index, entries[index], checked=False)
        for index, dataset in enumerate(spec.datasets)
    ]
    return SourceCheck(source_name, spec, findings, datasets)


def _entries(source_name: str, spec: SourceSpecBase) -> list[str]:
    collection = _collection(spec)
    return [
        f"sources.{source_name}.{collection}[{index}] ({dataset.qualified_name})"
        for index, dataset in enumerate(spec.datasets)
    ]


def check_source(
    source_name: str,
    spec: SourceSpecBase,
    resource: SourceResource,
    day: datetime.date | None = None,
) -> SourceCheck:
    """Every table or stream of a source verified through its (initialized) resource; after a
    problem of the whole source (no connection, credentials refused) the rest are skipped."""
    report = SourceCheck(source_name, spec)
    entries = _entries(source_name, spec)
    for index, dataset in enumerate(spec.datasets):
        item = DatasetCheck(dataset, index, entries[index])
        report.datasets.append(item)
        if any(f.severity == "error" for f in report.findings):
            item.checked = False
            continue
        try:
            found = resource.verify(dataset, sample_window(spec, dataset, day))
        except IngestionError as error:
            # a source that cannot be opened at all (a URL that is no URL): its own message
            found = [Finding(source_name, None, str(error), source_key="connection")]
        for finding in found:
            (item.findings if finding.dataset is not None else report.findings).append(finding)
        if any(f.dataset is None and f.severity == "error" for f in found):
            item.checked = False
    return report


def check_project(
    project: ProjectSpec, source_names: Sequence[str], day: datetime.date | None = None
) -> Iterator[SourceCheck]:
    """Each named source checked in turn, opened as a run opens it (secrets from the
    environment); a source with a secret that is not set is not opened."""
    for name in source_names:
        spec = project.sources[name]
        missing = missing_secrets(name, spec)
        if missing:
            yield _unchecked(name, spec, missing)
            continue
        try:
            with source_resource(name, spec).process_config_and_initialize_cm() as resource:
                yield check_source(name, spec, cast(SourceResource, resource), day)
        except IngestionError as error:
            # raised as the resource starts (a connection URL that is no URL)
            finding = Finding(name, None, str(error), source_key="connection")
            yield _unchecked(name, spec, [finding])


def summary(reports: Sequence[SourceCheck], seconds: float) -> str:
    """`2 source(s), 11 tables and streams in 1.4 s: 10 ok, ...`."""
    totals = dict.fromkeys(("ok", "warning", "problem", "skipped"), 0)
    for report in reports:
        for status, count in report.counts().items():
            totals[status] += count
    source_problems = sum(1 for report in reports for f in report.findings if f.severity == "error")
    datasets = sum(totals.values())
    text = (
        f"{len(reports)} source(s), {datasets} tables and streams in {seconds:.1f} s: "
        f"{totals['ok']} ok, {totals['warning']} with warnings, {totals['problem']} with "
        f"problems, {totals['skipped']} not checked"
    )
    if source_problems:
        text += f"; {source_problems} problem(s) of a whole source"
    return text


def load_environment_file(path: pathlib.Path) -> list[str]:
    """The variables of a `.env` file set in the environment, as every `dagster` command sets
    them (over the environment's own), so the check sees the secrets a run will; their names."""
    if not path.is_file():
        return []
    values = {name: value for name, value in dotenv_values(path).items() if value is not None}
    os.environ.update(values)
    return sorted(values)


def main(argv: Sequence[str] | None = None) -> int:
    """`ingest check`: 0 when every source checks out (warnings allowed), 1 when anything is
    wrong, 2 when the project file or the arguments are."""
    parser = argparse.ArgumentParser(prog="ingest", description="The ingestion project's tools.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser(
        "check",
        help="connect to every source and check each table, column, stream and credential",
        description="Connect to every source of the project file and check each declared "
        "table, column, stream and credential, without ingesting anything.",
    )
    check.add_argument(
        "--project",
        type=pathlib.Path,
        help="the project file (default: $INGEST_PROJECT_FILE, else the bundled demo's)",
    )
    check.add_argument(
        "--source", action="append", help="check only this source (may be given again)"
    )
    check.add_argument(
        "--day",
        type=datetime.date.fromisoformat,
        help="the day (YYYY-MM-DD) REST streams are asked for (default: the last complete day)",
    )
    arguments = parser.parse_args(argv)
    loaded = load_environment_file(pathlib.Path(".env"))
    if loaded:
        print(f"environment variables from .env: {', '.join(loaded)}")
    path = arguments.project or project_file_path()
    try:
        project = load_project(path, require_secrets=False)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    names: list[str] = arguments.source or list(project.sources)
    for name in names:
        if name not in project.sources:
            known = list(project.sources)
            print(f"{path}: no source '{name}'; {did_you_mean('--source', name, known, 'sources')}")
            return 2
    print(f"checking {len(names)} source(s) of {path}", flush=True)
    started = time.monotonic()
    reports = []
    for report in check_project(project, names, arguments.day):
        reports.append(report)
        for status, line in report.lines():
            print(f"{status:<8} {line}", flush=True)
    print(summary(reports, time.monotonic() - started))
    if any(report.failed for report in reports):
        print("fix the problems above, then check again: ingest check")
        return 1
    return 0


def _check_op(source_name: str, spec: SourceSpecBase) -> OpDefinition:
    resource_key = source_resource_key(source_name)

    @op(
        name=f"check__{source_name}",
        required_resource_keys={resource_key},
        out=Out(Nothing),
        config_schema={
            "day": Field(
                Noneable(str),
                default_value=None,
                is_required=False,
                description="The day (YYYY-MM-DD) REST streams are asked for; default: the "
                "last complete day of their partitions.",
            )
        },
        description=f"Check every table or stream of source '{source_name}' at the source "
        "(names, columns, credentials); nothing is ingested.",
        tags={"ingestion/source": source_name},
    )
    def _check(context) -> Iterator[Output[None]]:  # type: ignore[no-untyped-def]
        # Dagster reads the annotation at run time: `context` stays bare
        context = cast(OpExecutionContext, context)
        day_text = context.op_config["day"]
        try:
            day = datetime.date.fromisoformat(day_text) if day_text else None
        except ValueError:
            raise Failure(f"config day '{day_text}' is no date: write it as YYYY-MM-DD") from None
        resource = cast(SourceResource, getattr(context.resources, resource_key))
        report = check_source(source_name, spec, resource, day)
        lines = report.lines()
        for status, line in lines:
            getattr(context.log, STATUS_LEVELS[status])(f"{status}: {line}")
        metadata = report.metadata()
        if report.failed:
            wrong = [f"{status}: {line}" for status, line in lines if status != "ok"]
            raise Failure(
                description=f"source '{source_name}': {metadata['problems']} problem(s) "
                f"found, {metadata['not_checked']} table(s) or stream(s) not checked:\n"
                + "\n".join(wrong),
                metadata=metadata,
            )
        yield Output(None, metadata=metadata)

    return _check


def check_sources_job(project: ProjectSpec) -> JobDefinition:
    """`check_sources`: one op per source, each verifying its tables or streams at the source."""
    graph = GraphDefinition(
        name=CHECK_JOB,
        node_defs=[_check_op(name, spec) for name, spec in project.sources.items()],
        description="Connect to every source and check each declared table, column, stream "
        "and credential without ingesting (what `ingest check` prints).",
    )
    return graph.to_job()
