"""IngestionComponent and `dg`: the project file as a Dagster Component, this repository as a dg
project, plain `dagster dev` over the demo (it starts the demo API itself), and load errors that
lead with the project's message, in `dg` and in the webserver's GraphQL."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pathlib
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
import yaml
from dagster.components.testing import create_defs_folder_sandbox
from deltalake import DeltaTable

import ingestion_assets
from ingestion_assets.component import IngestionComponent
from ingestion_assets.definitions import ProjectFileError
from ingestion_assets.demo.autostart import ensure_demo_api
from ingestion_assets.demo.generate import DemoScale, create_demo_sqlite
from ingestion_assets.errors import ConfigError
from ingestion_assets.project import DEMO_PROJECT_FILE

REPOSITORY = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent
DEMO_TABLES = ("customer", "product", "vendor")
DEMO_ORDERS = ("sales_order_header", "sales_order_detail", "purchase_order_header")
DEMO_ORDERS += ("purchase_order_detail",)
DEMO_ASSETS = {f"adventureworks/{name}" for name in DEMO_TABLES + DEMO_ORDERS} | {
    f"adventureworks_api/{name}" for name in DEMO_ORDERS
}
DEMO_ASSETS |= {
    "landing/currency_rate",
    "landing/product_parquet",
    "landing/product_ndjson",
    "silver/sales_orders",
    "gold/daily_revenue_by_territory",
    "gold/daily_sales_by_product",
}
# a small project file of its own: one SQLite table, nothing read while definitions load
SMALL_PROJECT = """\
lake:
  root: .data/lake
sources:
  shop:
    type: sql
    connection: {url: "sqlite:///shop.db"}
    start_date: 2024-03-01
    tables:
      - name: Orders
        partition_column: ModifiedDate
        primary_key: [OrderID]
      - name: Stores
        primary_key: [StoreID]
"""
BAD_PROJECT = SMALL_PROJECT.replace("partition_column:", "partition:")
BAD_KEY_PATH = "sources.shop.tables[0] (Orders).partition: unknown key 'partition'"
STARTUP_SECONDS = 240
RUN_SECONDS = 240


def _environment(home: pathlib.Path, **variables: str) -> dict[str, str]:
    """The test's environment for a Dagster or dg subprocess: its own DAGSTER_HOME, the project's
    venv active, no project file or demo API named unless given."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("INGEST_PROJECT_FILE", "DEMO_API_URL", "DEMO_API_PASSWORD")
    }
    environment.update(DAGSTER_HOME=str(home), VIRTUAL_ENV=str(BIN.parent), **variables)
    environment["PATH"] = f"{BIN}{os.pathsep}{environment.get('PATH', '')}"
    return environment


def _dg(arguments: list[str], cwd: pathlib.Path, environment: dict[str, str]) -> str:
    """Run `dg` and return its output; a failure fails the test with that output."""
    result = subprocess.run(
        [str(BIN / "dg"), *arguments],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _listed_assets(output: str) -> set[str]:
    return {asset["asset_key"] for asset in json.loads(output)["assets"]}


# --- the package face and the component, in process -------------------------------------------


def test_the_package_names_the_component_but_imports_dagster_only_when_it_is_used() -> None:
    script = (
        "import sys\n"
        "import ingestion_assets, ingestion_assets.sources\n"
        "assert 'IngestionComponent' in dir(ingestion_assets), dir(ingestion_assets)\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'dagster']\n"
        "component = ingestion_assets.IngestionComponent\n"
        "assert 'dagster' in sys.modules\n"
        "print(component.__module__ + '.' + component.__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=REPOSITORY
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ingestion_assets.component.IngestionComponent"
    with pytest.raises(AttributeError, match="has no attribute 'Ingestion'"):
        ingestion_assets.Ingestion  # noqa: B018 - the module's __getattr__ is what is tested


def test_the_entry_point_registers_the_package_for_dg() -> None:
    from importlib.metadata import entry_points

    [entry] = [
        point
        for point in entry_points(group="dagster_dg_cli.registry_modules")
        if point.value == "ingestion_assets"
    ]
    assert entry.load() is ingestion_assets


def test_a_scaffolded_component_writes_defs_yaml_and_a_starter_project_file_that_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.scaffold_component(component_cls=IngestionComponent, defs_path="erp")
        declared = yaml.safe_load((folder / "defs.yaml").read_text())
        # the type as the scaffold was asked for it (`dg` passes ingestion_assets.IngestionComponent)
        assert declared["type"].endswith(".IngestionComponent"), declared
        assert declared["attributes"] == {"project": "ingestion.yaml"}
        starter = (folder / "ingestion.yaml").read_text()
        # the source's URL is a secret from the environment, and the file says so
        assert "url: ${ERP_DATABASE_URL}" in starter
        with (
            pytest.raises(ProjectFileError, match="ERP_DATABASE_URL is not set"),
            sandbox.load_component_and_build_defs(defs_path=folder),
        ):
            pass
        monkeypatch.setenv("ERP_DATABASE_URL", "postgresql+psycopg2://reader@db.internal/erp")
        with sandbox.load_component_and_build_defs(defs_path=folder) as (component, defs):
            assert isinstance(component, IngestionComponent)
            assert [key.to_user_string() for key in defs.resolve_all_asset_keys()] == ["erp/orders"]
        # a second scaffold into the same folder keeps the project file a user edited
        (folder / "ingestion.yaml").write_text(SMALL_PROJECT)
        sandbox.scaffold_component(component_cls=IngestionComponent, defs_path="erp")
        assert (folder / "ingestion.yaml").read_text() == SMALL_PROJECT


@pytest.mark.parametrize("where", ["relative", "absolute"])
def test_the_project_path_is_relative_to_the_defs_yaml_folder_or_absolute(
    where: str, tmp_path: pathlib.Path
) -> None:
    elsewhere = tmp_path / "projects" / "shop.yaml"
    elsewhere.parent.mkdir()
    elsewhere.write_text(SMALL_PROJECT.replace("shop:", "outlet:"))
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "shop"
        folder.mkdir()
        (folder / "shop.yaml").write_text(SMALL_PROJECT)
        project = "shop.yaml" if where == "relative" else str(elsewhere)
        (folder / "defs.yaml").write_text(
            f"type: ingestion_assets.IngestionComponent\nattributes: {{project: {project}}}\n"
        )
        with sandbox.build_all_defs() as defs:
            keys = sorted(key.to_user_string() for key in defs.resolve_all_asset_keys())
    source = "shop" if where == "relative" else "outlet"
    assert keys == [f"{source}/orders", f"{source}/stores"]


def test_a_bad_project_file_fails_the_component_with_the_project_s_own_message() -> None:
    with create_defs_folder_sandbox() as sandbox:
        folder = sandbox.defs_folder_path / "shop"
        folder.mkdir()
        (folder / "ingestion.yaml").write_text(BAD_PROJECT)
        (folder / "defs.yaml").write_text(
            "type: ingestion_assets.IngestionComponent\nattributes: {project: ingestion.yaml}\n"
        )
        with pytest.raises(ConfigError) as raised, sandbox.build_all_defs():
            pass
    # not Dagster's tree of defs folders first: the file, the key path and the fix
    message = str(raised.value)
    assert message.startswith(f"{folder / 'ingestion.yaml'}: invalid project file:"), message
    assert BAD_KEY_PATH in message
    assert "did you mean 'partition_column'?" in message


def test_the_demo_api_starts_once_with_a_fresh_password_and_names_itself_in_the_environment(
    tmp_path: pathlib.Path, capfd: pytest.CaptureFixture[str]
) -> None:
    create_demo_sqlite(tmp_path / "demo", DemoScale(days=3))
    environment: dict[str, str] = {}
    url = ensure_demo_api(DEMO_PROJECT_FILE, environment, tmp_path / "demo")
    assert url is not None
    assert environment["DEMO_API_URL"] == url
    password = environment["DEMO_API_PASSWORD"]
    assert len(password) >= 20
    credentials = base64.b64encode(f"demo:{password}".encode()).decode()
    response = requests.get(
        f"{url}/api/SalesOrderHeader",
        params={"limit": 1},
        headers={"Authorization": f"Basic {credentials}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert int(response.headers["X-Total-Count"]) > 0
    # named already: nothing more is started
    assert ensure_demo_api(DEMO_PROJECT_FILE, environment, tmp_path / "demo") is None
    assert environment["DEMO_API_URL"] == url
    output = capfd.readouterr()
    assert f"started the demo API at {url}" in output.err
    assert password not in output.out + output.err


def test_without_the_demo_database_the_demo_project_says_to_run_make_demo(
    tmp_path: pathlib.Path,
) -> None:
    environment: dict[str, str] = {}
    with pytest.raises(ConfigError, match=r"the demo database is missing .*run `make demo`"):
        ensure_demo_api(DEMO_PROJECT_FILE, environment, tmp_path / "nothing")
    assert environment == {}


# --- dg ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_dg_checks_and_lists_the_demo_definitions_of_this_repository(
    tmp_path: pathlib.Path,
) -> None:
    # the demo API's variables set: this is about the dg configuration, not the demo's data
    environment = _environment(
        tmp_path / "dagster", DEMO_API_URL="http://127.0.0.1:9", DEMO_API_PASSWORD="not-used"
    )
    _dg(["check", "defs"], REPOSITORY, environment)
    listed = _listed_assets(_dg(["list", "defs", "--json"], REPOSITORY, environment))
    assert listed == DEMO_ASSETS


@pytest.mark.slow
def test_a_dg_project_scaffolds_and_loads_the_component_and_reports_a_bad_file_first(
    tmp_path: pathlib.Path,
) -> None:
    project = tmp_path / "shop_project"
    (project / "shop_project" / "defs").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        textwrap.dedent("""\
            [project]
            name = "shop_project"
            version = "0.1.0"

            [tool.dg]
            directory_type = "project"

            [tool.dg.project]
            root_module = "shop_project"
            """)
    )
    (project / "shop_project" / "__init__.py").write_text("")
    (project / "shop_project" / "defs" / "__init__.py").write_text("")
    (project / "shop_project" / "definitions.py").write_text(
        textwrap.dedent("""\
            from pathlib import Path

            import dagster as dg


            @dg.definitions
            def defs() -> dg.Definitions:
                return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
            """)
    )
    environment = _environment(tmp_path / "dagster", PYTHONPATH=str(project))
    _dg(
        ["scaffold", "defs", "ingestion_assets.IngestionComponent", "ingestion"],
        project,
        environment,
    )
    folder = project / "shop_project" / "defs" / "ingestion"
    assert "type: ingestion_assets.IngestionComponent" in (folder / "defs.yaml").read_text()
    assert (folder / "ingestion.yaml").exists()
    (folder / "ingestion.yaml").write_text(SMALL_PROJECT)
    listed = _listed_assets(_dg(["list", "defs", "--json"], project, environment))
    assert listed == {"shop/orders", "shop/stores"}

    (folder / "ingestion.yaml").write_text(BAD_PROJECT)
    result = subprocess.run(
        [str(BIN / "dg"), "check", "defs"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # the first error line is the project's message: the file, then the key path
    first = next(line for line in output.splitlines() if "Error" in line)
    assert first.endswith(f"{folder / 'ingestion.yaml'}: invalid project file:"), output
    assert BAD_KEY_PATH in output


# --- plain `dagster dev` ----------------------------------------------------------------------


def _wait_until(condition: Callable[[], Any], seconds: float, describe: Callable[[], str]) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {seconds:.0f} s: {describe()}")
        time.sleep(0.5)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class DagsterDev:
    """`dagster dev` in its own session, its output in a file, and GraphQL against it."""

    def __init__(self, workdir: pathlib.Path, environment: dict[str, str]) -> None:
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.log = workdir / "dagster-dev.log"
        command = [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
        command += ["-p", self.url.rsplit(":", 1)[1]]
        previous = signal.getsignal(signal.SIGINT)
        # a child of a shell's background job starts with SIGINT ignored, which dagster dev
        # needs to stop its webserver and daemon
        signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            with self.log.open("wb") as output:
                self.process = subprocess.Popen(
                    command,
                    cwd=workdir,
                    env=environment,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        finally:
            signal.signal(signal.SIGINT, previous)

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-60:])

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        assert not body.get("errors"), body
        data: dict[str, Any] = body["data"]
        return data

    def locations(self) -> dict[str, dict[str, Any]] | None:
        """Each code location's entry once all have loaded (or failed to), else None."""
        if self.process.poll() is not None:
            pytest.fail(f"dagster dev exited with {self.process.returncode}\n{self.log_tail()}")
        try:
            entries = self.graphql(
                """
                {
                  workspaceOrError {
                    ... on Workspace {
                      locationEntries {
                        name loadStatus
                        locationOrLoadError { __typename ... on PythonError { message } }
                      }
                    }
                  }
                }
                """
            )["workspaceOrError"]["locationEntries"]
        except requests.ConnectionError:
            return None
        if not entries or any(
            entry["loadStatus"] != "LOADED" or not entry["locationOrLoadError"] for entry in entries
        ):
            return None
        return {entry["name"]: entry["locationOrLoadError"] for entry in entries}

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


@contextlib.contextmanager
def dagster_dev(workdir: pathlib.Path, environment: dict[str, str]) -> Iterator[DagsterDev]:
    server = DagsterDev(workdir, environment)
    try:
        yield server
    finally:
        server.stop()


def _environment_of_processes(session: int) -> list[dict[str, str]]:
    """The environments of the processes of a session (the code servers among them)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != session:
                continue
            raw = (entry / "environ").read_bytes()
        except (OSError, ProcessLookupError):
            continue
        found.append(
            dict(
                item.split("=", 1)
                for item in raw.decode(errors="replace").split("\0")
                if "=" in item
            )
        )
    return found


@pytest.mark.e2e
def test_plain_dagster_dev_starts_the_demo_api_and_shows_a_bad_project_file_s_message(
    tmp_path: pathlib.Path,
) -> None:
    create_demo_sqlite(tmp_path / ".data" / "demo", DemoScale(days=10))
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_PROJECT)
    # a second location loads the same module with INGEST_PROJECT_FILE naming the bad file
    (tmp_path / "bad_location.py").write_text(
        "import os\n\n"
        f"os.environ['INGEST_PROJECT_FILE'] = {str(bad)!r}\n\n"
        "from ingestion_assets.definitions import defs  # noqa: E402\n"
    )
    (tmp_path / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_module:\n"
        "      module_name: ingestion_assets.definitions\n"
        f"      working_directory: {tmp_path}\n"
        "  - python_file:\n"
        "      relative_path: bad_location.py\n"
        "      location_name: bad_project\n"
        f"      working_directory: {tmp_path}\n"
    )
    environment = _environment(tmp_path / "dagster")
    with dagster_dev(tmp_path, environment) as server:
        locations = _wait_until(
            server.locations, STARTUP_SECONDS, lambda: f"not loaded\n{server.log_tail()}"
        )
        demo = locations["ingestion_assets.definitions"]
        assert demo["__typename"] == "RepositoryLocation", (demo, server.log_tail())
        # the load error leads with the project's message, not Dagster's DagsterUserCodeLoadError
        error = locations["bad_project"]
        assert error["__typename"] == "PythonError"
        assert error["message"].startswith(
            f"ingestion_assets.definitions.ProjectFileError: {bad}: invalid project file:"
        ), error["message"]
        assert BAD_KEY_PATH in error["message"]

        day = "2024-01-03"
        launched = server.graphql(
            """
            mutation Backfill($params: LaunchBackfillParams!) {
              launchPartitionBackfill(backfillParams: $params) {
                __typename
                ... on LaunchBackfillSuccess { backfillId }
                ... on PythonError { message }
              }
            }
            """,
            {
                "params": {
                    "assetSelection": [{"path": ["adventureworks_api", "sales_order_header"]}],
                    "partitionNames": [day],
                }
            },
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched

        def run_status() -> str | None:
            runs = server.graphql(
                """
                query Runs($filter: RunsFilter) {
                  runsOrError(filter: $filter) { ... on Runs { results { runId status } } }
                }
                """,
                {
                    "filter": {
                        "tags": [{"key": "dagster/backfill", "value": launched["backfillId"]}]
                    }
                },
            )["runsOrError"]["results"]
            status = runs[0]["status"] if runs else None
            if status in ("FAILURE", "CANCELED"):
                pytest.fail(f"the run ended {status}\n{server.log_tail()}")
            return status if status == "SUCCESS" else None

        _wait_until(run_status, RUN_SECONDS, lambda: f"no successful run\n{server.log_tail()}")
        passwords = {
            environ["DEMO_API_PASSWORD"]
            for environ in _environment_of_processes(server.process.pid)
            if "DEMO_API_PASSWORD" in environ
        }
        log = server.log.read_text(errors="replace")
    assert log.count("started the demo API at http://127.0.0.1:") >= 1, log[-3000:]
    # the password the code server made up reached its runs, and never its output
    assert passwords, "no process of dagster dev had DEMO_API_PASSWORD"
    assert not any(password in log for password in passwords)
    table = tmp_path / ".data" / "lake" / "adventureworks_api" / "sales_order_header"
    landed = DeltaTable(str(table)).to_pyarrow_table(columns=["_partition_date"]).num_rows
    connection = sqlite3.connect(tmp_path / ".data" / "demo" / "Sales.db")
    try:
        [(expected,)] = connection.execute(
            "SELECT count(*) FROM SalesOrderHeader WHERE substr(ModifiedDate, 1, 10) = ?", (day,)
        ).fetchall()
    finally:
        connection.close()
    assert expected > 0
    assert landed == expected
