"""The peers' virtualenvs: one per peer under `bench/.venv-<name>`, never a project dependency.

Each is created on first use with `python3 -m uv venv` and filled from a lock file of pinned
versions (`bench/peers/requirements-<name>.txt`); a stamp in the venv records which lock file it
was built from, so a changed lock file rebuilds it. `python bench/run.py --lock-peers`
re-resolves the lock files from the requirements below."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
from dataclasses import dataclass

BENCH_DIR = pathlib.Path(__file__).resolve().parent
PEERS_DIR = BENCH_DIR / "peers"
INSTALL_TIMEOUT_SECONDS = 1200
STAMP = "bench-lock.sha256"


@dataclass(frozen=True)
class PeerEnvironment:
    """A peer's virtualenv and the top-level requirements its lock file is resolved from."""

    name: str
    requirements: tuple[str, ...]
    why: str = ""

    @property
    def directory(self) -> pathlib.Path:
        """`bench/.venv-<name>`."""
        return BENCH_DIR / f".venv-{self.name}"

    @property
    def python(self) -> pathlib.Path:
        """The venv's interpreter."""
        return self.directory / "bin" / "python"

    @property
    def lock_file(self) -> pathlib.Path:
        """The pinned versions the venv is installed from."""
        return PEERS_DIR / f"requirements-{self.name}.txt"

    def executable(self, name: str) -> pathlib.Path:
        """A console script installed in the venv."""
        return self.directory / "bin" / name


ENVIRONMENTS: dict[str, PeerEnvironment] = {
    environment.name: environment
    for environment in (
        PeerEnvironment(
            "dlt",
            ("dlt[deltalake,filesystem,postgres,sql_database]", "pyarrow"),
        ),
        PeerEnvironment(
            "tap-postgres",
            ("meltanolabs-tap-postgres",),
        ),
        PeerEnvironment(
            "tap-rest-api-msdk",
            # singer-sdk 0.40 imports `fs`, which needs pkg_resources (gone from setuptools 81)
            ("tap-rest-api-msdk", "setuptools<81"),
            why="setuptools<81 keeps pkg_resources, which its singer-sdk still imports",
        ),
        PeerEnvironment(
            "singer-parquet",
            ("singer-sdk", "pyarrow"),
        ),
        PeerEnvironment(
            "dagster-deltalake",
            ("dagster-deltalake", "pandas", "psycopg2-binary", "sqlalchemy"),
        ),
        PeerEnvironment(
            "drivers",
            (
                "adbc-driver-postgresql",
                "adbc-driver-manager",
                "connectorx",
                "arrow-odbc",
                "pyarrow",
            ),
        ),
        # the layout benchmark's queries (bench/layout.py): the delta extension as a package,
        # loaded by path (DuckDB would otherwise download it)
        PeerEnvironment("duckdb", ("duckdb", "duckdb-extension-delta")),
    )
}


class PeerSetupError(RuntimeError):
    """A peer's virtualenv could not be created or filled; the message says why, in one line."""


def _uv() -> list[str]:
    """`python3 -m uv` (the Makefile installs uv for the system python3 when it is missing)."""
    return [os.environ.get("BENCH_UV_PYTHON", "python3"), "-m", "uv"]


def _run(command: list[str], what: str) -> None:
    try:
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT_SECONDS,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise PeerSetupError(f"{what}: no answer within {INSTALL_TIMEOUT_SECONDS} s") from None
    except OSError as error:
        raise PeerSetupError(f"{what}: {error}") from None
    if completed.returncode != 0:
        lines = [line.strip() for line in completed.stderr.splitlines() if line.strip()]
        first = next((i for i, line in enumerate(lines) if "error" in line.lower()), 0)
        # uv's error line is often followed by the cause
        reason = " ".join(lines[first : first + 2]) or f"exit status {completed.returncode}"
        raise PeerSetupError(f"{what}: {reason[:300]}")


def _lock_digest(environment: PeerEnvironment) -> str:
    return hashlib.sha256(environment.lock_file.read_bytes()).hexdigest()


def ensure(environment: PeerEnvironment, log: bool = True) -> PeerEnvironment:
    """Create and fill the peer's venv from its lock file unless it already matches it."""
    if not environment.lock_file.is_file():
        raise PeerSetupError(
            f"{environment.name}: no lock file {environment.lock_file}; run "
            "`python bench/run.py --lock-peers`"
        )
    stamp = environment.directory / STAMP
    digest = _lock_digest(environment)
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return environment
    if log:
        print(f"setting up {environment.directory.name} (first use) ...", flush=True)
    if environment.directory.exists():
        shutil.rmtree(environment.directory)
    _run(
        [*_uv(), "venv", "--quiet", "--python", sys.executable, str(environment.directory)],
        f"{environment.name}: creating the virtualenv",
    )
    _run(
        [
            *_uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(environment.python),
            "-r",
            str(environment.lock_file),
        ],
        f"{environment.name}: installing {environment.lock_file.name}",
    )
    stamp.write_text(digest + "\n", encoding="utf-8")
    return environment


def lock(environment: PeerEnvironment) -> None:
    """Resolve the peer's requirements into its lock file (pinned versions for this Python)."""
    requirements = PEERS_DIR / f".{environment.name}.in"
    requirements.write_text("\n".join(environment.requirements) + "\n", encoding="utf-8")
    try:
        _run(
            [
                *_uv(),
                "pip",
                "compile",
                "--quiet",
                "--python-version",
                f"{sys.version_info.major}.{sys.version_info.minor}",
                "--no-header",
                "--no-annotate",
                str(requirements),
                "-o",
                str(environment.lock_file),
            ],
            f"{environment.name}: resolving {', '.join(environment.requirements)}",
        )
    finally:
        requirements.unlink()
    header = (
        f"# {environment.name}: pinned by `python bench/run.py --lock-peers` from\n"
        + "".join(f"#   {requirement}\n" for requirement in environment.requirements)
        + (f"# ({environment.why})\n" if environment.why else "")
    )
    environment.lock_file.write_text(
        header + environment.lock_file.read_text(encoding="utf-8"), encoding="utf-8"
    )
