"""The warm run launcher (ingestion_assets/run_launcher.py), on a real instance: runs forked from
one warm process, the code loaded as it is at launch, a changed library restarting the warm
process, termination from another launcher, a run that cannot start, and the project's own
assets (a backfill range of the demo's SQLite source into Delta) run that way."""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.origin import RepositoryPythonOrigin
from dagster._core.test_utils import instance_for_test
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import serialize_value

from ingestion_assets.run_launcher import (
    DEFAULT_PRELOAD,
    FORK_SAFE,
    WORKER_TAG,
    RunStartError,
    WarmProcess,
    is_same_process,
    local_executable,
    worker_identity,
)

RUN_SECONDS = 120.0
LAUNCHER = {"module": "ingestion_assets.run_launcher", "class": "WarmRunLauncher"}

PROBE_DEFS = """
import os
import pathlib
import time

import warm_probe_lib
from dagster import Definitions, asset, define_asset_job, in_process_executor

VALUE = {value!r}
OUT = pathlib.Path(os.environ["WARM_PROBE_OUT"])


@asset
def marker() -> None:
    facts = {{"value": VALUE, "lib": warm_probe_lib.VALUE, "pid": os.getpid(), "ppid": os.getppid()}}
    (OUT / "marker.json").write_text(__import__("json").dumps(facts))


@asset
def waits() -> None:
    (OUT / "waiting").write_text(str(os.getpid()))
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if (OUT / "release").exists():
            return
        time.sleep(0.05)
    raise RuntimeError("never released")


defs = Definitions(
    assets=[marker, waits],
    jobs=[define_asset_job("marker_job", [marker]), define_asset_job("waits_job", [waits])],
    executor=in_process_executor,  # the assets run in the run's process
)
"""


def write_probe(directory: pathlib.Path, value: str, lib_value: int) -> None:
    """The probe's code location and its library, each with a modification time of its own."""
    for path, text in (
        (directory / "probe_defs.py", PROBE_DEFS.format(value=value)),
        (directory / "warm_probe_lib" / "__init__.py", f"VALUE = {lib_value}\n"),
    ):
        path.parent.mkdir(exist_ok=True)
        changed = path.exists() and path.read_text() != text
        path.write_text(text)
        if changed:  # a new mtime even within the file system's time resolution
            stat = path.stat()
            os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))


@pytest.fixture
def probe(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> pathlib.Path:
    """A code location on disk with its library on PYTHONPATH, and where its assets write."""
    code = tmp_path / "code"
    out = tmp_path / "out"
    code.mkdir()
    out.mkdir()
    write_probe(code, "first", 1)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("WARM_PROBE_OUT", str(out))
    monkeypatch.syspath_prepend(str(code))
    return code


@pytest.fixture
def instance(probe: pathlib.Path) -> Iterator[DagsterInstance]:
    """A SQLite instance whose launcher is the warm one, preloading the probe's library too."""
    config = {**LAUNCHER, "config": {"preload_modules": ["dagster", "warm_probe_lib"]}}
    with instance_for_test(overrides={"run_launcher": config}) as instance:
        yield instance


def launch(instance: DagsterInstance, code: pathlib.Path, job: str) -> str:
    """Create the job's run with its code's origin and launch it; the run id."""
    recon_job = ReconstructableRepository.for_file(
        str(code / "probe_defs.py"), "defs", working_directory=str(code)
    ).get_reconstructable_job(job)
    run = instance.create_run_for_job(
        job_def=recon_job.get_definition(), job_code_origin=recon_job.get_python_origin()
    )
    instance.launch_run(run.run_id, workspace=None)  # type: ignore[arg-type]
    return run.run_id


def wait_for(instance: DagsterInstance, run_id: str, statuses: set[DagsterRunStatus]) -> str:
    """Wait (bounded) until the run reaches one of `statuses`; its status."""
    deadline = time.monotonic() + RUN_SECONDS
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run is not None and run.status in statuses:
            return run.status.value
        time.sleep(0.1)
    logs = "\n".join(str(entry.message) for entry in instance.all_logs(run_id))
    raise AssertionError(f"run {run_id} did not reach {statuses} in {RUN_SECONDS} s:\n{logs}")


def finished(instance: DagsterInstance, run_id: str) -> str:
    done = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
    return wait_for(instance, run_id, done)


def run_marker(instance: DagsterInstance, code: pathlib.Path) -> tuple[str, dict[str, object]]:
    """Launch the marker job, wait for its success; its run id and what its asset wrote."""
    run_id = launch(instance, code, "marker_job")
    assert finished(instance, run_id) == "SUCCESS"
    facts: dict[str, object] = json.loads(
        (pathlib.Path(os.environ["WARM_PROBE_OUT"]) / "marker.json").read_text()
    )
    return run_id, facts


def warm_pid(instance: DagsterInstance) -> int:
    [warm] = instance.run_launcher._warm.values()  # type: ignore[attr-defined]
    pid: int = warm.process.pid
    return pid


def test_runs_are_forked_from_one_warm_process_and_load_the_code_as_it_is(
    instance: DagsterInstance, probe: pathlib.Path
) -> None:
    first, facts = run_marker(instance, probe)
    assert facts["value"] == "first"
    assert facts["lib"] == 1
    # the run's process is a child of the warm process, not of this one
    assert facts["ppid"] == warm_pid(instance) != os.getpid()
    run = instance.get_run_by_id(first)
    assert run is not None
    assert json.loads(run.tags[WORKER_TAG])["pid"] == facts["pid"]
    messages = [str(entry.message) for entry in instance.all_logs(first)]
    assert any("Forked the run's process (pid " in m for m in messages), messages

    # the code location's file changes: the next run, from the same warm process, runs the new code
    write_probe(probe, "second", 1)
    _, facts = run_marker(instance, probe)
    assert facts["value"] == "second"
    assert facts["lib"] == 1
    assert facts["ppid"] == warm_pid(instance)


def test_a_changed_library_restarts_the_warm_process(
    instance: DagsterInstance, probe: pathlib.Path
) -> None:
    _, before = run_marker(instance, probe)
    assert before["lib"] == 1
    # a preloaded library upgraded while the daemon runs: a stale warm process would keep 1
    write_probe(probe, "first", 2)
    _, after = run_marker(instance, probe)
    assert after["lib"] == 2
    assert after["ppid"] == warm_pid(instance) != before["ppid"]


def test_terminate_from_another_launcher_cancels_the_run(
    instance: DagsterInstance, probe: pathlib.Path
) -> None:
    run_id = launch(instance, probe, "waits_job")
    waiting = pathlib.Path(os.environ["WARM_PROBE_OUT"]) / "waiting"
    deadline = time.monotonic() + RUN_SECONDS
    while not waiting.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert waiting.exists(), "the run's step never started"
    run = instance.get_run_by_id(run_id)
    assert run is not None
    identity = json.loads(run.tags[WORKER_TAG])
    assert is_same_process(identity)
    # the UI's Terminate runs in the webserver: another instance, another launcher object
    with DagsterInstance.from_ref(instance.get_ref()) as webserver:
        health = webserver.run_launcher.check_run_worker_health(run)
        assert health.status.value == "RUNNING", health
        assert webserver.run_launcher.terminate(run_id) is True
    assert finished(instance, run_id) == "CANCELED"
    deadline = time.monotonic() + 30
    while is_same_process(identity) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not is_same_process(identity)
    run = instance.get_run_by_id(run_id)
    assert run is not None
    assert instance.run_launcher.check_run_worker_health(run).status.value == "NOT_FOUND"
    assert instance.run_launcher.terminate(run_id) is False  # finished: nothing to terminate


def test_a_pid_taken_by_another_process_is_never_signalled() -> None:
    mine = worker_identity(os.getpid())
    assert is_same_process(mine)
    assert not is_same_process({**mine, "start": "1"})  # same pid, another start time
    assert not is_same_process({**mine, "host": "elsewhere"})


def test_a_run_that_cannot_start_fails_its_launch_and_the_warm_process_goes_on(
    instance: DagsterInstance, probe: pathlib.Path
) -> None:
    recon_job = ReconstructableRepository.for_file(
        str(probe / "probe_defs.py"), "defs", working_directory=str(probe)
    ).get_reconstructable_job("marker_job")
    args = ExecuteRunArgs(
        job_origin=recon_job.get_python_origin(),
        run_id="not-a-run",
        instance_ref=instance.get_ref(),
    )
    warm = instance.run_launcher._warm_process(sys.executable)  # type: ignore[attr-defined]
    with pytest.raises(RunStartError, match="run not-a-run is not in the instance's run storage"):
        warm.start_run("not-a-run", serialize_value(args), 60)
    # the same warm process launches the next run
    _, facts = run_marker(instance, probe)
    assert facts["ppid"] == warm.process.pid


def test_a_run_whose_code_is_not_here_goes_to_the_default_launcher(probe: pathlib.Path) -> None:
    origin = (
        ReconstructableRepository.for_file(
            str(probe / "probe_defs.py"), "defs", working_directory=str(probe)
        )
        .get_reconstructable_job("marker_job")
        .get_python_origin()
    )
    assert local_executable(origin) == sys.executable
    repository = origin.repository_origin
    in_image = origin._replace(
        repository_origin=RepositoryPythonOrigin(
            executable_path=repository.executable_path,
            code_pointer=repository.code_pointer,
            container_image="ingestion-assets:latest",
        )
    )
    assert local_executable(in_image) is None
    elsewhere = origin._replace(
        repository_origin=RepositoryPythonOrigin(
            executable_path="/nonexistent/bin/python", code_pointer=repository.code_pointer
        )
    )
    assert local_executable(elsewhere) is None


def test_the_default_preload_imports_and_leaves_only_fork_safe_threads() -> None:
    """Every library of the default list imports in the warm process, and none of them leaves a
    thread that a fork would lose while it holds a lock (jemalloc's purging threads handle it)."""
    warm = WarmProcess(sys.executable, DEFAULT_PRELOAD)
    try:
        ready = warm.wait_ready()
    finally:
        warm.close()
    assert ready["failed"] == []
    assert set(ready["threads"]) <= FORK_SAFE, ready["threads"]
    # the project's own modules are not among the files it watches: runs import them afresh
    assert ready["files"]
    assert not [path for path in ready["files"] if "/ingestion_assets/" in path]
