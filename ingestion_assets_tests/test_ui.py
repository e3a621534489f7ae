"""The demo end to end through the Dagster UI: `dg dev`, a GraphQL backfill, headless Chromium.

Everything is real: the demo SQLite database, the demo REST API, a dg project whose definitions
are the IngestionComponent over the demo project file, `dg dev` (webserver and daemon) in its
own process group, and Debian's Chromium driven by Playwright. The screenshots the
README shows are saved into `docs/`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from deltalake import DeltaTable
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright

from ingestion_assets.demo.__main__ import DEMO_INSTANCE_FILE
from ingestion_assets.demo.api import DemoApi
from ingestion_assets.demo.generate import create_demo_sqlite
from ingestion_assets.demo.landing import write_landing_files
from ingestion_assets.project import DEMO_PROJECT_FILE

pytestmark = pytest.mark.e2e

CHROMIUM = pathlib.Path("/usr/bin/chromium")
# ../shared/SERVICES.md; Playwright gives every launch a new empty --user-data-dir itself
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT: ViewportSize = {"width": 1440, "height": 900}
UI_TIMEOUT_MS = 30_000
DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"

STARTUP_SECONDS = 180
BACKFILL_SECONDS = 300
RUN_SECONDS = 180

ASSET_GROUPS = {
    "adventureworks": [
        "customer",
        "product",
        "vendor",
        "sales_order_header",
        "sales_order_detail",
        "purchase_order_header",
        "purchase_order_detail",
    ],
    "adventureworks_api": [
        "sales_order_header",
        "sales_order_detail",
        "purchase_order_header",
        "purchase_order_detail",
    ],
    "landing": ["currency_rate", "product_parquet", "product_ndjson"],
    "silver": ["sales_orders"],
    "gold": ["daily_revenue_by_territory", "daily_sales_by_product"],
}
SILVER_PATH = ["silver", "sales_orders"]
GOLD_PATH = ["gold", "daily_revenue_by_territory"]
LAYER_SECONDS = 300
ASSET_PATH = ["adventureworks", "sales_order_header"]
UI_LOCATION = "ingestion_demo"
BACKFILL_DAYS = [
    (datetime.date(2024, 1, 1) + datetime.timedelta(days=offset)).isoformat()
    for offset in range(30)
]
UI_PARTITION = "2024-02-15"
CHECK_NAMES = {
    # each check with a metadata entry only its own result carries
    "schema_contract": "expected_columns",
    "row_count": "source_rows",
    "primary_key": "duplicate_keys",
}
BACKFILL_DONE = {"COMPLETED", "COMPLETED_SUCCESS"}
BACKFILL_BROKEN = {"FAILED", "COMPLETED_FAILED", "CANCELED", "CANCELING", "FAILING"}
RUN_BROKEN = {"FAILURE", "CANCELED", "CANCELING"}


def wait_until(
    condition: Callable[[], Any], timeout_seconds: float, describe: Callable[[], str]
) -> Any:
    """Poll `condition` until it returns something truthy; fail with `describe()` at the deadline."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up after {timeout_seconds:.0f} s: {describe()}")
        time.sleep(0.5)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class DagsterUi:
    """A running `dg dev` over the demo project, and where its data lands."""

    url: str
    workdir: pathlib.Path
    log: pathlib.Path
    process: subprocess.Popen[bytes]

    @property
    def demo_dir(self) -> pathlib.Path:
        """The demo SQLite database the SQL source reads."""
        return self.workdir / ".data" / "demo"

    @property
    def lake_table(self) -> pathlib.Path:
        """The Delta table of `adventureworks/sales_order_header`."""
        return self.workdir / ".data" / "lake" / pathlib.Path(*ASSET_PATH)

    def log_tail(self, lines: int = 60) -> str:
        """The end of the `dg dev` output, for failure messages."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST a query to the webserver; GraphQL errors fail the test."""
        response = requests.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, timeout=60
        )
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            pytest.fail(f"GraphQL errors: {body['errors']}\n{self.log_tail()}")
        data: dict[str, Any] = body["data"]
        return data

    def runs(self, run_filter: dict[str, Any]) -> list[dict[str, Any]]:
        """Runs matching a `RunsFilter` (`{"tags": [...]}`, `{"runIds": [...]}`)."""
        data = self.graphql(
            """
            query Runs($filter: RunsFilter) {
              runsOrError(filter: $filter) {
                __typename
                ... on Runs { results { runId status tags { key value } } }
                ... on PythonError { message }
              }
            }
            """,
            {"filter": run_filter},
        )["runsOrError"]
        assert data["__typename"] == "Runs", data
        runs: list[dict[str, Any]] = data["results"]
        return runs

    def runs_tagged(self, tags: dict[str, str]) -> list[dict[str, Any]]:
        """Runs carrying all of `tags`."""
        return self.runs({"tags": [{"key": key, "value": value} for key, value in tags.items()]})

    def partition_stats(self, path: list[str] = ASSET_PATH) -> dict[str, int]:
        """How many partitions of an asset (`adventureworks/sales_order_header`) are
        materialized, failed."""
        node: dict[str, Any] = self.graphql(
            """
            query Asset($key: AssetKeyInput!) {
              assetNodeOrError(assetKey: $key) {
                ... on AssetNode { partitionStats { numMaterialized numPartitions numFailed } }
              }
            }
            """,
            {"key": {"path": path}},
        )["assetNodeOrError"]
        stats: dict[str, int] = node["partitionStats"]
        return stats

    def latest_check_statuses(self) -> dict[str, str | None]:
        """Each check's status on the asset's latest materialization (what the graph shows)."""
        node: dict[str, Any] = self.graphql(
            """
            query Checks($key: AssetKeyInput!) {
              assetNodeOrError(assetKey: $key) {
                ... on AssetNode {
                  assetChecksOrError {
                    ... on AssetChecks {
                      checks { name executionForLatestMaterialization { status } }
                    }
                  }
                }
              }
            }
            """,
            {"key": {"path": ASSET_PATH}},
        )["assetNodeOrError"]
        return {
            check["name"]: (check["executionForLatestMaterialization"] or {}).get("status")
            for check in node["assetChecksOrError"]["checks"]
        }

    def check_executions(
        self, check_name: str, path: list[str] = ASSET_PATH
    ) -> list[dict[str, Any]]:
        """The latest executions of a check of an asset (`adventureworks/sales_order_header`)."""
        executions: list[dict[str, Any]] = self.graphql(
            """
            query Check($key: AssetKeyInput!, $name: String!) {
              assetCheckExecutions(assetKey: $key, checkName: $name, limit: 200) {
                runId status partition evaluation { success }
              }
            }
            """,
            {"key": {"path": path}, "name": check_name},
        )["assetCheckExecutions"]
        return executions

    def wait_for_run(self, run_id: str) -> None:
        """Wait until the run succeeds; fail at once if it fails."""

        def succeeded() -> bool:
            [run] = self.runs({"runIds": [run_id]})
            if run["status"] in RUN_BROKEN:
                pytest.fail(f"run {run_id} ended {run['status']}\n{self.log_tail()}")
            return bool(run["status"] == "SUCCESS")

        wait_until(succeeded, RUN_SECONDS, lambda: f"run {run_id} not done\n{self.log_tail()}")


def _server_answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/server_info", timeout=5).ok
    except requests.ConnectionError:
        return False


def _location_loaded(ui: DagsterUi) -> bool:
    entries = ui.graphql(
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
    for entry in entries:
        error = entry["locationOrLoadError"]
        if error and error["__typename"] == "PythonError":
            pytest.fail(f"code location {entry['name']} failed to load: {error['message']}")
    return bool(entries) and all(
        entry["loadStatus"] == "LOADED" and entry["locationOrLoadError"] for entry in entries
    )


@contextlib.contextmanager
def _sigint_inheritable() -> Iterator[None]:
    """Let a child start with SIGINT at its default even when pytest was started with it ignored.

    A shell starts background jobs with SIGINT ignored, and children inherit that; `dagster dev`
    stops its webserver and daemon with SIGINT, so they would then hang on SIGTERM.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    # dg dev runs in its own session: the group holds the webserver, daemon and code server
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


UI_PROJECT_MODULE = "ui_demo"


def write_dg_project(workdir: pathlib.Path) -> None:
    """A dg project in `workdir` whose only definitions are an IngestionComponent over the
    bundled demo project file: the UI below is the Component as `dg dev` loads it."""
    package = workdir / UI_PROJECT_MODULE
    (package / "defs" / "ingestion").mkdir(parents=True)
    (workdir / "pyproject.toml").write_text(
        f'[project]\nname = "{UI_PROJECT_MODULE}"\nversion = "0.1.0"\n\n'
        '[tool.dg]\ndirectory_type = "project"\n\n'
        f'[tool.dg.project]\nroot_module = "{UI_PROJECT_MODULE}"\n'
        f'code_location_name = "{UI_LOCATION}"\n'
    )
    (package / "__init__.py").write_text("")
    (package / "defs" / "__init__.py").write_text("")
    (package / "definitions.py").write_text(
        "from pathlib import Path\n\nimport dagster as dg\n\n\n@dg.definitions\n"
        "def defs() -> dg.Definitions:\n"
        "    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)\n"
    )
    (package / "defs" / "ingestion" / "defs.yaml").write_text(
        f"type: ingestion_assets.IngestionComponent\nattributes:\n  project: {DEMO_PROJECT_FILE}\n"
    )


@pytest.fixture(scope="module")
def dagster_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterUi]:
    """The demo database and API, and `dg dev` over a dg project holding the demo project file
    as an IngestionComponent, in a temporary folder."""
    dg = pathlib.Path(sys.executable).parent / "dg"
    if not dg.exists():
        pytest.fail(f"{dg} is missing: install the dev tools (`make setup-python`) in this venv")
    workdir = tmp_path_factory.mktemp("ui")
    create_demo_sqlite(workdir / ".data" / "demo")
    write_landing_files(workdir / ".data" / "landing", workdir / ".data" / "demo")
    dagster_home = workdir / "dagster"
    dagster_home.mkdir()
    # the demo's instance, as `make ui` installs it (telemetry off, the sources' pool limit)
    shutil.copyfile(DEMO_INSTANCE_FILE, dagster_home / "dagster.yaml")
    write_dg_project(workdir)
    password = secrets.token_urlsafe(16)
    port = free_port()
    log = workdir / "dagster-dev.log"
    with DemoApi(workdir / ".data" / "demo", "demo", password) as api:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(dagster_home),
            "DEMO_API_URL": api.url,
            "DEMO_API_PASSWORD": password,
            # the dg project's package, importable by its code server
            "PYTHONPATH": str(workdir),
        }
        env.pop("INGEST_PROJECT_FILE", None)
        with log.open("wb") as output, _sigint_inheritable():
            process = subprocess.Popen(
                [str(dg), "dev", "--host", "127.0.0.1", "--port", str(port)],
                cwd=workdir,
                env=env,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        ui = DagsterUi(f"http://127.0.0.1:{port}", workdir, log, process)
        try:

            def up() -> bool:
                if process.poll() is not None:
                    pytest.fail(f"dg dev exited with {process.returncode}\n{ui.log_tail()}")
                return _server_answers(ui.url)

            wait_until(up, STARTUP_SECONDS, lambda: f"no webserver at {ui.url}\n{ui.log_tail()}")
            wait_until(
                lambda: _location_loaded(ui),
                STARTUP_SECONDS,
                lambda: f"code location not loaded\n{ui.log_tail()}",
            )
            ui.graphql("mutation { setNuxSeen }")  # no community pop-up over the pages
            yield ui
        finally:
            _stop(process)


@dataclass
class Backfill:
    """The finished 30-day backfill and its runs."""

    backfill_id: str
    runs: list[dict[str, Any]]


@pytest.fixture(scope="module")
def backfill(dagster_ui: DagsterUi) -> Backfill:
    """Backfill 2024-01-01..2024-01-30 of `adventureworks/sales_order_header` through GraphQL."""
    return run_backfill(dagster_ui, ASSET_PATH, BACKFILL_DAYS)


def run_backfill(dagster_ui: DagsterUi, path: list[str], days: list[str]) -> Backfill:
    """Backfill `days` of an asset through GraphQL, as the UI's launch dialog does; wait for it."""
    launched = dagster_ui.graphql(
        """
        mutation Backfill($params: LaunchBackfillParams!) {
          launchPartitionBackfill(backfillParams: $params) {
            __typename
            ... on LaunchBackfillSuccess { backfillId }
            ... on PythonError { message }
            ... on PartitionKeysNotFoundError { message }
            ... on InvalidSubsetError { message }
          }
        }
        """,
        {"params": {"assetSelection": [{"path": path}], "partitionNames": days}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id: str = launched["backfillId"]
    last: dict[str, Any] = {}

    def finished() -> bool:
        nonlocal last
        last = dagster_ui.graphql(
            """
            query Backfill($id: String!) {
              partitionBackfillOrError(backfillId: $id) {
                ... on PartitionBackfill { status numPartitions error { message } }
                ... on PythonError { message }
              }
            }
            """,
            {"id": backfill_id},
        )["partitionBackfillOrError"]
        if last.get("status") in BACKFILL_BROKEN:
            pytest.fail(f"backfill {backfill_id} ended {last}\n{dagster_ui.log_tail()}")
        return last.get("status") in BACKFILL_DONE

    wait_until(
        finished,
        BACKFILL_SECONDS,
        lambda: f"backfill {backfill_id} is {last}\n{dagster_ui.log_tail()}",
    )
    return Backfill(backfill_id, dagster_ui.runs_tagged({"dagster/backfill": backfill_id}))


def source_rows_per_day(demo_dir: pathlib.Path) -> dict[str, int]:
    """Rows of Sales.SalesOrderHeader per ModifiedDate day, read from the demo SQLite file."""
    connection = sqlite3.connect(demo_dir / "Sales.db")
    try:
        rows = connection.execute(
            "SELECT substr(ModifiedDate, 1, 10), count(*) FROM SalesOrderHeader GROUP BY 1"
        ).fetchall()
    finally:
        connection.close()
    return {day: count for day, count in rows}


def lake_rows_per_day(table: pathlib.Path) -> dict[str, int]:
    """Rows of the Delta table per `_partition_date`."""
    days = DeltaTable(str(table)).to_pyarrow_table(columns=["_partition_date"])
    return {
        day.isoformat(): count
        for day, count in Counter(days["_partition_date"].to_pylist()).items()
    }


def test_backfill_of_30_days_is_one_run_that_lands_every_day(
    dagster_ui: DagsterUi, backfill: Backfill
) -> None:
    """The single-run backfill policy turns 30 days into one run; the lake matches the source."""
    assert len(backfill.runs) == 1, backfill.runs
    [run] = backfill.runs
    assert run["status"] == "SUCCESS"
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert tags["dagster/asset_partition_range_start"] == BACKFILL_DAYS[0]
    assert tags["dagster/asset_partition_range_end"] == BACKFILL_DAYS[-1]

    source = source_rows_per_day(dagster_ui.demo_dir)
    expected = {day: source[day] for day in BACKFILL_DAYS if day in source}
    # the generated data has a day without orders, so a day may have no rows at all
    assert len(expected) >= 25
    landed = lake_rows_per_day(dagster_ui.lake_table)
    landed.pop(UI_PARTITION, None)  # the UI test's day, should it have run first
    assert landed == expected

    stats = dagster_ui.partition_stats()
    assert stats["numPartitions"] == 120
    assert stats["numMaterialized"] >= len(BACKFILL_DAYS)
    assert stats["numFailed"] == 0
    # the backfill's run selects the asset's checks too, and they pass
    for name in CHECK_NAMES:
        in_run = [
            execution
            for execution in dagster_ui.check_executions(name)
            if execution["runId"] == run["runId"]
        ]
        evaluated = [execution for execution in in_run if execution["evaluation"]]
        # one evaluation per day of the backfill, judged before its commit
        assert sorted(execution["partition"] for execution in evaluated) == BACKFILL_DAYS, name
        for execution in evaluated:
            assert execution["status"] == "SUCCEEDED", (name, execution)
            assert execution["evaluation"]["success"], (name, execution)
    # the graph's node shows every check passed on the latest materialization (it said
    # "0 / 3 Passed" when range runs recorded one unpartitioned evaluation per check)
    statuses = dagster_ui.latest_check_statuses()
    assert statuses == {name: "SUCCEEDED" for name in [*CHECK_NAMES, "unpartitioned_rows"]}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's headless Chromium, driven by Playwright (never `playwright install`)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"Chromium is not installed at {CHROMIUM}: run `apt-get install -y chromium` "
            "(see ../shared/SERVICES.md)"
        )
    expect.set_options(timeout=UI_TIMEOUT_MS)  # assertions wait as long as actions (default 5 s)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, timeout=60_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh browser context (no stored UI settings) with one 1440x900 page."""
    context = browser.new_context(viewport=VIEWPORT)
    context.set_default_timeout(UI_TIMEOUT_MS)
    context.set_default_navigation_timeout(60_000)
    try:
        yield context.new_page()
    finally:
        context.close()


def screenshot(page: Page, name: str) -> None:
    """Save the viewport into docs/ for the README."""
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=DOCS / name)


def label_shows(label: str, name: str) -> bool:
    """Whether a graph node label shows `name`, whole or middle-truncated (`purchase_o…_header`)."""
    if "…" not in label:
        return label == name
    head, _, tail = label.partition("…")
    return len(name) > len(label) - 1 and name.startswith(head) and name.endswith(tail)


def test_asset_graph_shows_every_demo_asset(dagster_ui: DagsterUi, page: Page) -> None:
    """The global lineage, groups expanded, shows all 17 assets in the graph and the sidebar."""
    page.goto(f"{dagster_ui.url}/asset-groups")
    expect(page.get_by_text("adventureworks_api", exact=True).last).to_be_visible()
    # the graph's own settings menu (its gear is the only button named just "settings" while the
    # navigation is shown)
    page.get_by_role("button", name="settings", exact=True).click()
    page.get_by_role("menuitem", name="Expand all groups").click()
    # vertical: assets without edges between them sit side by side, so all 17 fit the width
    page.get_by_role("menuitem", name="Change graph to vertical orientation").click()
    # the menu stays open and its items now offer the opposite
    expect(page.get_by_role("menuitem", name="Collapse all groups")).to_be_visible()
    expect(
        page.get_by_role("menuitem", name="Change graph to horizontal orientation")
    ).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.get_by_role("menu")).to_have_count(0)
    page.get_by_role("button", name="Hide navigation").click()
    for group in ASSET_GROUPS:
        page.get_by_role("button", name=re.compile(rf"^asset_group {group}( {group})?$")).click()
        page.keyboard.press("ArrowRight")  # opens the group in the sidebar tree
    # the layout, direction and open groups are kept; a reload zooms the whole graph to fit
    page.reload()

    graph = page.get_by_role("img").filter(has_text="adventureworks_api")
    expected = [name for names in ASSET_GROUPS.values() for name in names]

    def node_labels() -> list[str]:
        labels = graph.locator("foreignObject").all_text_contents()
        return [label for label in labels if label and label not in ASSET_GROUPS]

    def all_nodes_shown() -> bool:
        unmatched = list(expected)
        for label in node_labels():
            match = next((name for name in unmatched if label_shows(label, name)), None)
            if match is None:
                return False
            unmatched.remove(match)
        return not unmatched

    wait_until(all_nodes_shown, 30, lambda: f"graph nodes: {node_labels()}, want {expected}")
    for group, names in ASSET_GROUPS.items():
        expect(graph.get_by_text(group, exact=True)).to_be_visible()
        for name in names:
            rows = page.get_by_role("button", name=re.compile(rf"(^|\s){name}(\s|$)"))
            in_groups = sum(name in members for members in ASSET_GROUPS.values())
            expect(rows).to_have_count(in_groups)
            for index in range(in_groups):
                expect(rows.nth(index)).to_be_visible()
    # let the asset statuses load (live data is polled every 2 s) and keep the pointer off the graph
    page.wait_for_load_state("networkidle")
    page.mouse.move(VIEWPORT["width"] / 2, 10)
    screenshot(page, "asset-graph.png")


def test_asset_page_shows_partitions_and_checks(
    dagster_ui: DagsterUi, backfill: Backfill, page: Page
) -> None:
    """The asset page: materialized partitions with their metadata, and the checks' results."""
    materialized = dagster_ui.partition_stats()["numMaterialized"]
    asset_url = f"{dagster_ui.url}/assets/{'/'.join(ASSET_PATH)}"
    page.goto(f"{asset_url}?view=partitions")
    expect(page.get_by_role("tab", name="Partitions")).to_have_attribute("aria-selected", "true")
    expect(page.get_by_text(f"Materialized ({materialized})", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Missing ({120 - materialized})", exact=True)).to_be_visible()
    page.get_by_role("textbox", name="Filter by name…").fill("2024-01")
    day = "2024-01-15"
    page.get_by_text(day, exact=True).first.click()
    rows = source_rows_per_day(dagster_ui.demo_dir)[day]
    expect(
        page.get_by_role("row", name=f"dagster/partition_row_count {rows}", exact=True)
    ).to_be_visible()
    expect(
        page.get_by_role("row", name=f"partitions {BACKFILL_DAYS[0]}..{BACKFILL_DAYS[-1]}")
    ).to_be_visible()
    screenshot(page, "asset-partitions.png")

    page.goto(f"{asset_url}?view=checks")
    # and the table-wide count of rows no partition reaches
    expect(page.get_by_text(f"Checks ({len(CHECK_NAMES) + 1})", exact=True)).to_be_visible()
    # row_count last: its result (lake rows = source rows) makes the screenshot
    for name in ["schema_contract", "primary_key", "row_count"]:
        page.get_by_text(name, exact=True).first.click()
        expect(page).to_have_url(re.compile(rf"checkDetail={name}\b"))
        metadata = page.get_by_role("row", name=re.compile(rf"^{CHECK_NAMES[name]}\b"))
        expect(metadata).to_be_visible()
        expect(page.get_by_text("Passed", exact=True).first).to_be_visible()
    screenshot(page, "asset-checks.png")

    # a range run's check results, one per day: the check's Partitions tab counts them as Passed
    passed_days = {
        execution["partition"]
        for execution in dagster_ui.check_executions("row_count")
        if execution["evaluation"] and execution["evaluation"]["success"]
    }
    assert set(BACKFILL_DAYS) <= passed_days
    page.get_by_role("tab", name="Partitions").last.click()
    expect(page.get_by_text(f"Passed ({len(passed_days)})", exact=True)).to_be_visible()
    expect(page.get_by_text("Failed (0)", exact=True)).to_be_visible()
    expect(page.get_by_text(f"Missing ({120 - len(passed_days)})", exact=True)).to_be_visible()
    screenshot(page, "check-partitions.png")


def test_materialize_one_partition_from_the_ui(
    dagster_ui: DagsterUi, backfill: Backfill, page: Page
) -> None:
    """The launch dialog with one partition launches one run that lands exactly that day."""
    before = lake_rows_per_day(dagster_ui.lake_table)
    assert UI_PARTITION not in before
    page.goto(f"{dagster_ui.url}/assets/{'/'.join(ASSET_PATH)}")
    page.get_by_role("button", name="Materialize…").click()
    dialog = page.get_by_role("dialog")
    partitions = dialog.get_by_role("textbox", name="ex: 2024-01-01")
    partitions.fill(UI_PARTITION)
    partitions.press("Enter")
    expect(dialog.get_by_text("1 partition", exact=True)).to_be_visible()
    launch = dialog.get_by_role("button", name="Launch 1 run")
    expect(launch).to_be_enabled()
    screenshot(page, "materialize-partition.png")
    launch.click()

    toast = page.get_by_text(re.compile(r"^Launched run [0-9a-f]{8}$"))
    expect(toast).to_be_visible()
    short_id = toast.inner_text().split()[-1]
    ui_runs = dagster_ui.runs_tagged({"dagster/partition": UI_PARTITION, "dagster/from_ui": "true"})
    assert [run["runId"][:8] for run in ui_runs] == [short_id], ui_runs
    dagster_ui.wait_for_run(ui_runs[0]["runId"])

    after = lake_rows_per_day(dagster_ui.lake_table)
    source = source_rows_per_day(dagster_ui.demo_dir)
    assert after == {**before, UI_PARTITION: source[UI_PARTITION]}

    # the overview's row count is the whole table's (dagster/row_count), not the one day's
    page.goto(f"{dagster_ui.url}/assets/{'/'.join(ASSET_PATH)}")
    total = sum(after.values())
    assert total > source[UI_PARTITION]
    row_count = page.get_by_text("Row count", exact=True)
    expect(row_count).to_be_visible()
    expect(row_count.locator("xpath=..")).to_contain_text(f"{total:,}")


def launch_asset_run(dagster_ui: DagsterUi, path: list[str]) -> str:
    """Launch a run of one unpartitioned asset through GraphQL, as the UI's button does."""
    location = dagster_ui.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    )["workspaceOrError"]["locationEntries"][0]["name"]
    launched = dagster_ui.graphql(
        """
        mutation Launch($params: ExecutionParams!) {
          launchRun(executionParams: $params) {
            __typename
            ... on LaunchRunSuccess { run { runId } }
            ... on PythonError { message }
            ... on InvalidSubsetError { message }
          }
        }
        """,
        {
            "params": {
                "selector": {
                    "repositoryLocationName": location,
                    "repositoryName": "__repository__",
                    "jobName": "__ASSET_JOB",
                    "assetSelection": [{"path": path}],
                },
                "mode": "default",
            }
        },
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id: str = launched["run"]["runId"]
    return run_id


def test_a_failed_run_leads_with_the_projects_message(dagster_ui: DagsterUi, page: Page) -> None:
    """A source table that went away fails the run; its page opens with what, where and the fix."""
    vendors = dagster_ui.demo_dir / "Purchasing.db"
    connection = sqlite3.connect(vendors)
    connection.execute('ALTER TABLE "Vendor" RENAME TO "VendorArchive"')
    connection.commit()
    try:
        run_id = launch_asset_run(dagster_ui, ["adventureworks", "vendor"])

        def failed() -> bool:
            [run] = dagster_ui.runs({"runIds": [run_id]})
            if run["status"] == "SUCCESS":
                pytest.fail(f"run {run_id} succeeded without its source table")
            return bool(run["status"] == "FAILURE")

        wait_until(failed, RUN_SECONDS, lambda: f"run {run_id} not failed\n{dagster_ui.log_tail()}")
    finally:
        connection.execute('ALTER TABLE "VendorArchive" RENAME TO "Vendor"')
        connection.commit()
        connection.close()
    page.goto(f"{dagster_ui.url}/runs/{run_id}")
    failure = page.get_by_text("STEP_FAILURE", exact=True).first
    expect(failure).to_be_visible()
    # the step's error: its first line is the project's message, not a Dagster wrapper
    first_line = page.get_by_text(
        re.compile(
            r"^[\w.]+: source 'adventureworks', table 'Purchasing\.Vendor', the whole table: "
            r"the table does not exist at the source\. did you mean VendorArchive\?"
        )
    ).first
    expect(first_line).to_be_visible()
    expect(page.get_by_text("DagsterExecutionStepExecutionError")).to_have_count(0)
    expect(page.get_by_text("Error occurred while")).to_have_count(0)
    first_line.scroll_into_view_if_needed()
    screenshot(page, "failed-run.png")


def freshness_status(dagster_ui: DagsterUi) -> str | None:
    """The freshness daemon's verdict on `adventureworks/sales_order_header`, as the UI reads it."""
    nodes = dagster_ui.graphql(
        """
        query Freshness($path: [String!]!) {
          assetNodes(assetKeys: [{path: $path}]) { freshnessStatusInfo { freshnessStatus } }
        }
        """,
        {"path": ASSET_PATH},
    )["assetNodes"]
    status: str | None = (nodes[0]["freshnessStatusInfo"] or {}).get("freshnessStatus")
    return status


def test_the_component_loaded_by_dg_shows_its_freshness_policy_and_code_references(
    dagster_ui: DagsterUi, backfill: Backfill, page: Page
) -> None:
    """`dg dev` loaded the IngestionComponent (its location, its defs.yaml among the code
    references), and the demo's freshness policy is on the asset, judged healthy after the
    backfill by the daemon `dg dev` runs."""
    locations = dagster_ui.graphql(
        "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"
    )["workspaceOrError"]["locationEntries"]
    assert [entry["name"] for entry in locations] == [UI_LOCATION]
    wait_until(
        lambda: freshness_status(dagster_ui) == "HEALTHY",
        RUN_SECONDS,
        lambda: f"freshness is {freshness_status(dagster_ui)}\n{dagster_ui.log_tail()}",
    )
    page.goto(f"{dagster_ui.url}/assets/{'/'.join(ASSET_PATH)}")
    expect(page.get_by_text(UI_LOCATION, exact=True).first).to_be_visible()
    # the code references: the project file's entry (with its line) and the component's defs.yaml
    entry = page.get_by_role("link", name=re.compile(r"^Open ingestion\.yaml"))
    expect(entry).to_have_attribute("href", re.compile(r"/demo/ingestion\.yaml:\d+$"))
    defs_yaml = page.get_by_role("link", name=re.compile(r"^Open defs\.yaml"))
    expect(defs_yaml).to_have_attribute(
        "href", re.compile(rf"/{UI_PROJECT_MODULE}/defs/ingestion/defs\.yaml:1$")
    )
    # the demo's policy (WARN past 24 h, FAIL past 25 h), and the daemon's verdict on it
    expect(
        page.get_by_text("Fails if more than 25 hours since last materialization", exact=True)
    ).to_be_visible()
    expect(
        page.get_by_text("Warns if more than 24 hours since last materialization", exact=True)
    ).to_be_visible()
    expect(page.get_by_text("Passing", exact=True).first).to_be_visible()
    page.mouse.move(VIEWPORT["width"] / 2, 10)
    screenshot(page, "asset-overview.png")


def _early_shipment_days(demo_dir: pathlib.Path, days: list[str]) -> set[str]:
    """The days among `days` with an order line whose order shipped before it was ordered (the
    demo's mistyped ship dates), as silver joins them: header and line of the same day."""
    connection = sqlite3.connect(demo_dir / "Sales.db")
    try:
        rows = connection.execute(
            'SELECT DISTINCT substr(h."ModifiedDate", 1, 10) FROM "SalesOrderDetail" AS d '
            'JOIN "SalesOrderHeader" AS h ON h."SalesOrderID" = d."SalesOrderID" '
            'WHERE h."ShipDate" < h."OrderDate" '
            'AND substr(d."ModifiedDate", 1, 10) = substr(h."ModifiedDate", 1, 10)'
        ).fetchall()
    finally:
        connection.close()
    return {day for (day,) in rows} & set(days)


def test_the_layers_follow_their_inputs_and_show_lineage_and_expectations_per_day(
    dagster_ui: DagsterUi, backfill: Backfill, page: Page
) -> None:
    """Once an order day's header, lines and the customers landed, the automation sensor builds
    its silver and gold days; the lineage shows bronze -> silver -> gold, and an expectation's
    results are shown per day."""
    dagster_ui.wait_for_run(launch_asset_run(dagster_ui, ["adventureworks", "customer"]))
    run_backfill(dagster_ui, ["adventureworks", "sales_order_detail"], BACKFILL_DAYS)

    def layers_built() -> bool:
        return all(
            dagster_ui.partition_stats(path)["numMaterialized"] >= len(BACKFILL_DAYS)
            for path in (SILVER_PATH, GOLD_PATH)
        )

    wait_until(
        layers_built,
        LAYER_SECONDS,
        lambda: (
            f"layers: {dagster_ui.partition_stats(SILVER_PATH)}, "
            f"{dagster_ui.partition_stats(GOLD_PATH)}\n{dagster_ui.log_tail()}"
        ),
    )
    automated = dagster_ui.runs_tagged(
        {"dagster/sensor_name": "default_automation_condition_sensor"}
    )
    assert automated, "the layers were built by the automation sensor"

    # the warn expectation: failed on exactly the days with an early shipment, passed on the rest
    early = _early_shipment_days(dagster_ui.demo_dir, BACKFILL_DAYS)
    assert early
    executions = {
        execution["partition"]: execution["evaluation"]["success"]
        for execution in dagster_ui.check_executions("ordered_before_shipped", SILVER_PATH)
        if execution["evaluation"] and execution["partition"] in BACKFILL_DAYS
    }
    assert {day for day, passed in executions.items() if not passed} == early
    assert len(executions) == len(BACKFILL_DAYS)
    page.goto(f"{dagster_ui.url}/assets/{'/'.join(SILVER_PATH)}?view=checks")
    page.get_by_text("ordered_before_shipped", exact=True).first.click()
    expect(page).to_have_url(re.compile(r"checkDetail=ordered_before_shipped\b"))
    page.get_by_role("tab", name="Partitions").last.click()
    expect(page.get_by_text(f"Failed ({len(early)})", exact=True)).to_be_visible()
    expect(
        page.get_by_text(f"Passed ({len(BACKFILL_DAYS) - len(early)})", exact=True)
    ).to_be_visible()
    screenshot(page, "expectation-partitions.png")

    # the lineage of a gold table: silver, then the three ingested tables it reads
    page.goto(
        f"{dagster_ui.url}/assets/{'/'.join(GOLD_PATH)}?view=lineage&lineageScope=upstream"
        "&lineageDepth=2"
    )
    graph = page.get_by_role("img").filter(has_text="sales_orders")
    expected = ["daily_revenue_by_territory", "sales_orders", "sales_order_header"]
    expected += ["sales_order_detail", "customer"]

    def lineage_shown() -> bool:
        # an asset node's text: its name, then its status, checks and kinds
        labels = graph.locator("foreignObject").all_text_contents()
        return all(
            any(label.startswith(name) or label_shows(label, name) for label in labels)
            for name in expected
        )

    wait_until(
        lineage_shown,
        30,
        lambda: f"lineage nodes: {graph.locator('foreignObject').all_text_contents()}",
    )
    page.wait_for_load_state("networkidle")
    page.mouse.move(VIEWPORT["width"] / 2, 10)
    screenshot(page, "layers-lineage.png")
