"""Benchmark cases of Dagster's bookkeeping: the instance a run records its events in, the CLI a
user backfills with, and a one-day run launched as the UI launches it.

Each function takes the harness's `CaseSettings` and returns a `CaseResult`, like the cases of
`project_cases.py`, which registers them. Every database and folder a case makes is its own and
is removed at its end (a PostgreSQL database `bench_dagster_<random>` for the dagster-postgres
instance).
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import yaml
from peers.landed import delta_landed

BIN = pathlib.Path(sys.executable).parent
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
BATCH_VARIABLE = "DAGSTER_EVENT_BATCH_SIZE"
TABLES = {
    "SalesOrderDetail": ["SalesOrderID", "SalesOrderDetailID"],
    "SalesOrderHeader": ["SalesOrderID"],
    "PurchaseOrderHeader": ["PurchaseOrderID"],
    "PurchaseOrderDetail": ["PurchaseOrderID", "PurchaseOrderDetailID"],
}
# a launched run is polled this often, for at most this long
POLL_SECONDS = 0.1
LAUNCH_DEADLINE_SECONDS = 300.0
LAUNCHES = 3


def project_text(settings: Any, lake: pathlib.Path, tables: list[str]) -> str:
    """The project file of the bench source with `tables`, partitioned on ModifiedDate."""
    end = _day_after(settings.last_day)
    source = {
        "type": "sql",
        "connection": {"url": settings.postgres_url},
        "start_date": settings.first_day,
        "end_date": end,
        "timezone": "UTC",
        "tables": [
            {
                "schema": settings.schema,
                "name": name,
                "partition_column": "ModifiedDate",
                "primary_key": TABLES[name],
            }
            for name in tables
        ],
    }
    return yaml.safe_dump({"lake": {"root": str(lake)}, "sources": {"bench": source}})


def _day_after(day: str) -> str:
    import datetime

    return (datetime.date.fromisoformat(day) + datetime.timedelta(days=1)).isoformat()


@contextlib.contextmanager
def _batch_size(value: str | None) -> Iterator[None]:
    """DAGSTER_EVENT_BATCH_SIZE set to `value` (or unset) for the block."""
    previous = os.environ.pop(BATCH_VARIABLE, None)
    if value is not None:
        os.environ[BATCH_VARIABLE] = value
    try:
        yield
    finally:
        os.environ.pop(BATCH_VARIABLE, None)
        if previous is not None:
            os.environ[BATCH_VARIABLE] = previous


@contextlib.contextmanager
def _dagster_home(home: pathlib.Path) -> Iterator[None]:
    """DAGSTER_HOME set to `home` for the block, as `dagster` commands have it."""
    previous = os.environ.get("DAGSTER_HOME")
    os.environ["DAGSTER_HOME"] = str(home)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("DAGSTER_HOME", None)
        else:
            os.environ["DAGSTER_HOME"] = previous


@contextlib.contextmanager
def postgres_instance_home(
    work_dir: pathlib.Path, project_storage: bool = False
) -> Iterator[pathlib.Path]:
    """A DAGSTER_HOME whose dagster.yaml keeps runs and events in a new local PostgreSQL
    database, dropped at the end: through dagster-postgres alone, or with the event log through
    the project's class (as deploy/dagster.yaml does)."""
    import psycopg2

    database = f"bench_dagster_{uuid.uuid4().hex[:10]}"
    admin = psycopg2.connect(POSTGRES_ADMIN_DSN)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{database}"')
    home = work_dir / "dagster-postgres"
    home.mkdir(parents=True, exist_ok=True)
    storage = {
        "postgres": {
            "postgres_db": {
                "hostname": "127.0.0.1",
                "port": 5432,
                "username": "postgres",
                "password": "",
                "db_name": database,
                "scheme": "postgresql+psycopg2",
            }
        }
    }
    settings: dict[str, Any] = {"storage": storage, "telemetry": {"enabled": False}}
    if project_storage:
        config = storage["postgres"]
        settings = {
            "run_storage": _storage_class(
                "dagster_postgres.run_storage", "PostgresRunStorage", config
            ),
            "event_log_storage": _storage_class(
                "ingestion_assets.event_storage.postgres", "PostgresEventLogStorage", config
            ),
            "schedule_storage": _storage_class(
                "dagster_postgres.schedule_storage", "PostgresScheduleStorage", config
            ),
            "telemetry": {"enabled": False},
        }
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings), encoding="utf-8")
    try:
        yield home
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


def _storage_class(module: str, name: str, config: dict[str, Any]) -> dict[str, Any]:
    return {"module": module, "class": name, "config": config}


def project_instance_home(work_dir: pathlib.Path, name: str) -> pathlib.Path:
    """A DAGSTER_HOME with the project's shipped instance file (the demo's dagster.yaml)."""
    home = work_dir / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    from ingestion_assets.demo.__main__ import instance_file_text

    (home / "dagster.yaml").write_text(instance_file_text(home), encoding="utf-8")
    return home


def default_instance_home(work_dir: pathlib.Path, name: str) -> pathlib.Path:
    """A DAGSTER_HOME with no settings but telemetry off: Dagster's default SQLite storage."""
    home = work_dir / name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    return home


def backfill_on_home(
    settings: Any, home: pathlib.Path, batch_size: str | None, tables: list[str] | None = None
) -> tuple[int, float, int, str]:
    """The whole range of the bench source's job, one run in this process, on the instance of
    `home`; (rows landed, seconds, Parquet bytes, note)."""
    import warnings

    from dagster import BetaWarning, DagsterInstance, PreviewWarning

    from ingestion_assets.definitions import build_definitions, ingest_job_name
    from ingestion_assets.project import parse_project

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    lake = pathlib.Path(settings.work_dir) / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    text = project_text(settings, lake, tables or [settings.table])
    tags = {
        "dagster/asset_partition_range_start": settings.first_day,
        "dagster/asset_partition_range_end": settings.last_day,
    }
    with _batch_size(batch_size), _dagster_home(home):
        instance = DagsterInstance.from_config(str(home))
        try:
            started = time.perf_counter()
            defs = build_definitions(parse_project(text, "bench-project.yaml"))
            result = defs.resolve_job_def(ingest_job_name("bench")).execute_in_process(
                instance=instance, tags=tags
            )
            seconds = time.perf_counter() - started
        finally:
            instance.dispose()
    if not result.success:
        raise RuntimeError(f"the Dagster run {result.run_id} failed")
    rows = written = 0
    for event in result.get_asset_materialization_events():
        uri = event.materialization.metadata.get("dagster/uri")
        if uri is not None and event.materialization.partition == settings.last_day:
            landed, size = delta_landed(pathlib.Path(str(uri.value)))
            rows, written = rows + landed, written + size
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed]
    note = "; ".join(sorted({f"check {e.check_name} failed" for e in failed}))
    return rows, seconds, written, note


def cli_backfill(
    settings: Any, home: pathlib.Path, tables: list[str], in_process: bool = False
) -> tuple[int, float, str]:
    """`dagster asset materialize --select group:bench --partition-range first...last` as a
    user runs it, on the instance of `home`; (rows landed, process seconds, note)."""
    workdir = pathlib.Path(settings.work_dir)
    lake = workdir / "lake"
    shutil.rmtree(lake, ignore_errors=True)
    project = workdir / "bench-project.yaml"
    project.write_text(project_text(settings, lake, tables), encoding="utf-8")
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "INGEST_PROJECT_FILE": str(project),
        "PYTHONWARNINGS": "ignore",
    }
    environment.pop(BATCH_VARIABLE, None)
    command = [
        str(BIN / "dagster"),
        "asset",
        "materialize",
        "-m",
        "ingestion_assets.definitions",
        "--select",
        "group:bench",
        "--partition-range",
        f"{settings.first_day}...{settings.last_day}",
    ]
    if in_process:
        command += ["--config-json", json.dumps({"execution": {"config": {"in_process": {}}}})]
    started = time.perf_counter()
    finished = subprocess.run(
        command, cwd=workdir, env=environment, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - started
    (workdir / "cli-output.log").write_text(finished.stdout + finished.stderr, encoding="utf-8")
    if finished.returncode != 0:
        tail = (finished.stdout + finished.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"dagster asset materialize exited {finished.returncode}: {tail}")
    rows = sum(delta_landed(path)[0] for path in sorted(lake.glob("bench/*")) if path.is_dir())
    return rows, seconds, f"{len(tables)} table(s)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _DagsterDev:
    """`dagster dev` over a workspace of the bench project, in its own process group."""

    def __init__(self, workdir: pathlib.Path, environment: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = workdir / "dagster-dev.log"
        command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
        command += ["-p", self.url.rsplit(":", 1)[1]]
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                command,
                cwd=workdir,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        import requests

        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL error: {body['errors']}")
        data: dict[str, Any] = body["data"]
        return data

    def wait_loaded(self, deadline_seconds: float) -> None:
        import requests

        deadline = time.monotonic() + deadline_seconds
        query = (
            "{ workspaceOrError { ... on Workspace { locationEntries { loadStatus "
            "locationOrLoadError { __typename } } } } }"
        )
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dagster dev exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(requests.ConnectionError):
                entries = self.graphql(query)["workspaceOrError"]["locationEntries"]
                if entries and all(
                    e["loadStatus"] == "LOADED"
                    and (e["locationOrLoadError"] or {}).get("__typename") == "RepositoryLocation"
                    for e in entries
                ):
                    return
            time.sleep(0.5)
        raise RuntimeError(f"the code location did not load in {deadline_seconds:.0f} s")

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


LAUNCH_RUN = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
RUN_STATUS = "query Status($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }"


def ui_launch_days(
    settings: Any, home: pathlib.Path, days: list[str], run_ids: list[str] | None = None
) -> list[float]:
    """Seconds from the UI's launch request to the run's success, for one-day runs of the bench
    table's asset (with its checks) launched through `dagster dev`'s GraphQL API, one at a time.
    The runs' ids are appended to `run_ids` when it is given."""
    workdir = pathlib.Path(settings.work_dir) / "ui-launch"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    lake = workdir / "lake"
    project = workdir / "bench-project.yaml"
    project.write_text(project_text(settings, lake, [settings.table]), encoding="utf-8")
    (workdir / "workspace.yaml").write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "ingestion_assets.definitions",
                            "location_name": "bench",
                        }
                    }
                ]
            }
        ),
        encoding="utf-8",
    )
    environment = {key: value for key, value in os.environ.items() if key != BATCH_VARIABLE} | {
        "DAGSTER_HOME": str(home),
        "INGEST_PROJECT_FILE": str(project),
        "PYTHONWARNINGS": "ignore",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    server = _DagsterDev(workdir, environment)
    seconds: list[float] = []
    try:
        server.wait_loaded(600)
        server.graphql("mutation { setNuxSeen }")
        asset_key = {"path": ["bench", _snake(settings.table)]}
        # the asset's checks, selected with it as the UI does; looked up once, before the clock
        check_keys = _check_keys(server, asset_key)
        for day in days:
            params = {
                "selector": {
                    "repositoryLocationName": "bench",
                    "repositoryName": "__repository__",
                    "jobName": "__ASSET_JOB",
                    "assetSelection": [asset_key],
                    "assetCheckSelection": check_keys,
                },
                "executionMetadata": {"tags": [{"key": "dagster/partition", "value": day}]},
                "mode": "default",
            }
            started = time.perf_counter()
            launched = server.graphql(LAUNCH_RUN, {"params": params})["launchRun"]
            if launched["__typename"] != "LaunchRunSuccess":
                raise RuntimeError(f"the launch failed: {json.dumps(launched)[:500]}")
            run_id = launched["run"]["runId"]
            if run_ids is not None:
                run_ids.append(run_id)
            deadline = time.monotonic() + LAUNCH_DEADLINE_SECONDS
            status = "QUEUED"
            while time.monotonic() < deadline:
                status = server.graphql(RUN_STATUS, {"id": run_id})["runOrError"]["status"]
                if status in {"SUCCESS", "FAILURE", "CANCELED"}:
                    break
                time.sleep(POLL_SECONDS)
            elapsed = time.perf_counter() - started
            if status != "SUCCESS":
                raise RuntimeError(f"run {run_id} for {day} ended {status}")
            seconds.append(elapsed)
    finally:
        server.stop()
    return seconds


# the moments of a launched run, in its order: (label, event type, engine message prefix)
LAUNCH_MOMENTS = (
    ("dequeued", "RUN_STARTING", None),
    ("worker", "ENGINE_EVENT", "Started process for run"),
    ("run", "RUN_START", None),
    ("step", "STEP_START", None),
    ("done", "RUN_SUCCESS", None),
)


def launch_phases(home: pathlib.Path, run_id: str) -> str:
    """Where one launched run spent its time, from its events: seconds from the run's creation
    (the launch request) to its dequeue, from there to the worker's first event, to RUN_START, to
    the first step and to the run's success."""
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(home)) as instance:
        run_record = instance.get_run_record_by_id(run_id)
        if run_record is None:
            return f"{run_id}: no record"
        moments = {"created": run_record.create_timestamp.timestamp()}
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            for label, event_type, prefix in LAUNCH_MOMENTS:
                if label in moments or event is None or event.event_type.name != event_type:
                    continue
                if prefix is None or (entry.message or "").startswith(prefix):
                    moments[label] = entry.timestamp
    parts, previous = [], "created"
    for label, _, _ in LAUNCH_MOMENTS:
        if label in moments:
            parts.append(f"{label} +{moments[label] - moments[previous]:.2f}")
            previous = label
    return " ".join(parts)


def _check_keys(server: _DagsterDev, asset_key: dict[str, Any]) -> list[dict[str, Any]]:
    """The asset's checks, as the UI selects them with the asset."""
    query = """
    query Checks($key: AssetKeyInput!) {
      assetNodeOrError(assetKey: $key) { ... on AssetNode { assetChecksOrError {
        ... on AssetChecks { checks { name } } } } }
    }
    """
    node = server.graphql(query, {"key": asset_key})["assetNodeOrError"]
    checks = node["assetChecksOrError"]["checks"]
    return [{"assetKey": asset_key, "name": check["name"]} for check in checks]


def _snake(name: str) -> str:
    from ingestion_assets.specs import snake_case

    return snake_case(name)


def _backfill_case(home_of: str, batch_size: str | None) -> Any:
    def case(settings: Any) -> dict[str, Any]:
        work = pathlib.Path(settings.work_dir)
        if home_of.startswith("postgres"):
            with postgres_instance_home(work, home_of == "postgres-project") as home:
                rows, seconds, written, note = backfill_on_home(settings, home, batch_size)
        else:
            make_home = project_instance_home if home_of == "project" else default_instance_home
            home = make_home(work, f"dagster-{home_of}")
            rows, seconds, written, note = backfill_on_home(settings, home, batch_size)
        return {"rows": rows, "seconds": seconds, "bytes_written": written, "note": note}

    return case


def _cli_case(home_of: str, tables: list[str] | None, in_process: bool = False) -> Any:
    def case(settings: Any) -> dict[str, Any]:
        work = pathlib.Path(settings.work_dir)
        make_home = project_instance_home if home_of == "project" else default_instance_home
        home = make_home(work, f"dagster-cli-{home_of}")
        rows, seconds, note = cli_backfill(settings, home, tables or [settings.table], in_process)
        return {"rows": rows, "seconds": seconds, "note": note}

    return case


def ui_launch_day(settings: Any) -> dict[str, Any]:
    """The median of three launches of the middle day's run, as the UI launches them (each a
    re-run of the day: the table ends with that day's rows once)."""
    import statistics

    work = pathlib.Path(settings.work_dir)
    home = project_instance_home(work, "dagster-ui")
    run_ids: list[str] = []
    seconds = ui_launch_days(settings, home, [settings.one_day] * LAUNCHES, run_ids)
    lake = work / "ui-launch" / "lake"
    rows = sum(delta_landed(path)[0] for path in sorted(lake.glob("bench/*")) if path.is_dir())
    note = "launch to success: " + ", ".join(f"{s:.1f} s" for s in seconds)
    note += "; " + "; ".join(launch_phases(home, run_id) for run_id in run_ids)
    return {"rows": rows, "seconds": statistics.median(seconds), "note": note}


INSTANCE_CASES = {
    "project-backfill-sqlite-batched": _backfill_case("default", "1000"),
    "project-backfill-project-storage": _backfill_case("project", None),
    "project-backfill-postgres-storage": _backfill_case("postgres", None),
    "project-backfill-postgres-batched": _backfill_case("postgres", "1000"),
    "project-backfill-postgres-project-storage": _backfill_case("postgres-project", None),
    "project-cli-backfill": _cli_case("project", None),
    "project-cli-backfill-four": _cli_case("project", list(TABLES)),
    "project-cli-backfill-four-in-process": _cli_case("project", list(TABLES), in_process=True),
    "project-cli-backfill-default-instance": _cli_case("default", None),
    "project-cli-backfill-four-default-instance": _cli_case("default", list(TABLES)),
    "project-ui-launch-day": ui_launch_day,
}
