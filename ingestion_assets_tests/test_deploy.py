"""Deployment files: the compose file's services, the files it and the Dockerfile name, and
deploy/dagster.yaml storing runs and events in PostgreSQL (the local server stands in for the
compose file's)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import yaml
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus

from ingestion_assets.event_storage.postgres import (
    PostgresEventLogStorage as ProjectPostgresEventLogStorage,
)
from ingestion_assets_tests.conftest import (
    POSTGRES_URL,
    SourceDatabase,
    build_project,
    require_service,
    table_entry,
)

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
DEPLOY = REPOSITORY / "deploy"
DAGSTER_SERVICES = ("user-code", "webserver", "daemon")


def _compose() -> dict[str, object]:
    loaded = yaml.safe_load((REPOSITORY / "docker-compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def test_the_compose_file_names_its_services_and_takes_secrets_from_the_env_file() -> None:
    services = _compose()["services"]
    assert isinstance(services, dict)
    assert set(services) == {"dagster-postgres", *DAGSTER_SERVICES}
    for name in DAGSTER_SERVICES:
        service = services[name]
        assert service["env_file"] == ".env", name
        assert "./deploy/dagster.yaml:/opt/dagster/home/dagster.yaml:ro" in service["volumes"], name
        assert service["depends_on"]["dagster-postgres"]["condition"] == "service_healthy", name
        # no secret value in the file itself: only the variables' names
        assert "DAGSTER_PG_PASSWORD" not in service["environment"], name
    assert services["user-code"]["command"][:3] == ["dagster", "code-server", "start"]
    assert services["webserver"]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    postgres = services["dagster-postgres"]
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${DAGSTER_PG_PASSWORD")
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["grpc_server"]["host"] == "user-code"
    example = (REPOSITORY / ".env.example").read_text()
    assert "DAGSTER_PG_PASSWORD=" in example


def _dockerfile_sources() -> list[str]:
    """The repository paths the Dockerfile's COPY instructions read."""
    sources = []
    for line in (REPOSITORY / "Dockerfile").read_text().splitlines():
        words = line.split()
        if words[:1] == ["COPY"] and not any(word.startswith("--from") for word in words):
            sources += [word for word in words[1:-1] if not word.startswith("--")]
    return sources


def test_every_file_the_dockerfile_and_the_compose_file_name_exists() -> None:
    # a deployment file moved without its references would fail only at `docker compose up`
    sources = _dockerfile_sources()
    assert "deploy/dagster.yaml" in sources
    services = _compose()["services"]
    assert isinstance(services, dict)
    mounted = {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if volume.startswith("./")
    }
    assert "./deploy/workspace.yaml" in mounted
    missing = [path for path in [*sources, *mounted] if not (REPOSITORY / path).exists()]
    assert not missing, f"named by the Dockerfile or docker-compose.yml but missing: {missing}"
    # the deployment's instance is not at the root, where `dagster dev` warns that it is unused
    assert not (REPOSITORY / "dagster.yaml").exists()


@pytest.mark.slow
def test_docker_compose_config_accepts_the_file(tmp_path: pathlib.Path) -> None:
    # Docker Compose's own validation (Debian's docker-compose; no Docker daemon needed)
    for name in ("docker-compose.yml", "deploy/dagster.yaml", "deploy/workspace.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        shutil.copy(REPOSITORY / name, tmp_path / name)
    shutil.copy(REPOSITORY / ".env.example", tmp_path / ".env")
    command = shutil.which("docker-compose")
    assert command, "docker-compose is missing: `make test` installs it (Debian package)"
    result = subprocess.run(
        [command, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == {"dagster-postgres", *DAGSTER_SERVICES}
    assert resolved["services"]["webserver"]["ports"] == ["127.0.0.1:3000:3000/tcp"]
    # a broken file is refused: the check is real
    (tmp_path / "docker-compose.yml").write_text("services:\n  web:\n    image: [unclosed\n")
    broken = subprocess.run(
        [command, "config"], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False
    )
    assert broken.returncode != 0


@pytest.fixture
def dagster_home(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[pathlib.Path]:
    """A DAGSTER_HOME with deploy/dagster.yaml over a new local PostgreSQL database."""
    admin = require_service(POSTGRES_URL, "PostgreSQL")
    name = f"ia_dagster_{uuid.uuid4().hex[:10]}"
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(POSTGRES_URL)
    monkeypatch.setenv("DAGSTER_PG_HOST", url.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(url.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", name)
    monkeypatch.setenv("DAGSTER_PG_USER", url.username or "postgres")
    # trust authentication here: the value is only carried, as a real password would be
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "local-trust")
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    try:
        yield home
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_dagster_yaml_keeps_runs_events_and_asset_records_in_postgres(
    dagster_home: pathlib.Path, sqlite_database: SourceDatabase, tmp_path: pathlib.Path
) -> None:
    sqlite_database.load_demo()
    project = build_project(
        sqlite_database, tmp_path / "lake", [table_entry(sqlite_database, "Sales.SalesOrderHeader")]
    )
    day = "2024-01-04"
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage) is ProjectPostgresEventLogStorage
        result = project.materialize(["sales_order_header"], instance, partition=day)
        assert result.success
        run_id = result.run_id

    # a new instance (as the webserver would open) reads it all back from PostgreSQL
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        assert run.status == DagsterRunStatus.SUCCESS
        assert run.tags["dagster/partition"] == day
        kinds = {event.dagster_event_type for event in instance.all_logs(run_id)}
        assert DagsterEventType.ASSET_MATERIALIZATION in kinds
        assert DagsterEventType.RUN_SUCCESS in kinds
        key = AssetKey(["src", "sales_order_header"])
        latest = instance.get_latest_materialization_event(key)
        assert latest is not None
        assert latest.run_id == run_id
        assert latest.asset_materialization is not None
        assert latest.asset_materialization.partition == day
        assert instance.get_materialized_partitions(key) == {day}

    # and the rows are in that database's tables
    engine = sa.create_engine(sa.make_url(POSTGRES_URL).set(database=os.environ["DAGSTER_PG_DB"]))
    try:
        with engine.connect() as connection:
            runs = connection.execute(sa.text("SELECT run_id FROM runs")).scalars().all()
            events = connection.execute(
                sa.text("SELECT count(*) FROM event_logs WHERE run_id = :run"), {"run": run_id}
            ).scalar_one()
    finally:
        engine.dispose()
    assert runs == [run_id]
    assert events > 10
