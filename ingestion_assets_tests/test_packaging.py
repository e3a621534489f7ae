"""The repository ships what it promises: a lint-clean Dockerfile, loadable workspace, pinned deps."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

REPOSITORY = pathlib.Path(__file__).resolve().parent.parent
BIN = pathlib.Path(sys.executable).parent


def _hadolint(dockerfile: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hadolint"), "--config", str(REPOSITORY / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_the_dockerfile_passes_hadolint_and_a_root_image_would_not(
    tmp_path: pathlib.Path,
) -> None:
    dockerfile = REPOSITORY / "Dockerfile"
    result = _hadolint(dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr
    text = dockerfile.read_text()
    assert "msodbcsql18" in text
    assert "unixodbc" in text
    # the linter really runs: the same file ending as root is refused
    as_root = tmp_path / "Dockerfile"
    as_root.write_text(re.sub(r"(?m)^USER .*$", "USER root", text))
    refused = _hadolint(as_root)
    assert refused.returncode != 0
    assert "DL3002" in refused.stdout


def test_every_dependency_has_a_lower_bound() -> None:
    project = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements.extend(extra)
    for requirement in requirements:
        assert ">=" in requirement, f"{requirement} has no lower bound"
    names = {re.split(r"[<>=\[]", item)[0] for item in project["dependencies"]}
    assert {
        "dagster",
        "dagster-webserver",
        "sqlalchemy",
        "pyodbc",
        "requests",
        "deltalake",
    } <= names


@pytest.mark.slow
def test_the_workspace_loads_through_the_dagster_cli(tmp_path: pathlib.Path) -> None:
    environment = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "DEMO_API_URL": "http://127.0.0.1:9",
        "DEMO_API_PASSWORD": "not-used",
    }
    environment.pop("INGEST_PROJECT_FILE", None)
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Validation successful" in result.stdout + result.stderr


def test_the_dagster_free_packages_import_without_dagster() -> None:
    # sources/ and lake/ are plain Python: extraction and the table layout are usable (and
    # importable, cheaply) without Dagster; a Dagster import below them would pull in all of it
    script = (
        "import importlib, pkgutil, sys\n"
        "import ingestion_assets.sources, ingestion_assets.lake\n"
        "for package in (ingestion_assets.sources, ingestion_assets.lake):\n"
        "    for module in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "loaded = sorted(name for name in sys.modules if name.split('.')[0] == 'dagster')\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, cwd=REPOSITORY
    )
    assert result.returncode == 0, result.stderr[-2000:]
