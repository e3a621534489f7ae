"""A run launcher that starts each run's process from a warm one, for instances whose daemon runs
beside the code (`dagster dev`, `make ui`, one machine).

Dagster's `DefaultRunLauncher` asks the code location's server to start the run, and the server
starts a new Python (multiprocessing `spawn`) that imports Dagster, the libraries and the project
before the run's first event: 2 s of a one-day run whose step works 0.3 s (6 s where the
libraries' bytecode is not compiled). `WarmRunLauncher`
keeps, per Python executable, one process that has imported Dagster and the heavy libraries
(`preload_modules`) and nothing of the project, and forks each run's process from it. The forked
process does what `dagster api execute_run` does: it loads the run's code from the run's origin
(the files as they are now, as a new process would), executes the run and exits. The warm process
is started on the first launch (that launch waits for it) and ends with the process that started
it; the runs it forked keep running.

A run whose code is not in this machine's Python (a container image, an executable that is not
here) is launched by `DefaultRunLauncher`. Deployments whose daemon and code run in separate
containers (docker-compose.yml, deploy/dagster.yaml) keep `DefaultRunLauncher`.

Terminating a run (the UI's "Terminate") sends SIGTERM to its process, which Dagster turns into
an interrupt: the run ends CANCELED and writes nothing it had not committed. The process is found
by the pid and start time recorded in the run's `ingestion_assets/run_worker` tag, so a reused pid
is never signalled. Run monitoring, where the instance enables it, asks the same tag whether the
process still lives.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import suppress
from typing import Any

from dagster import Array, Field, Float, Noneable
from dagster._core.errors import DagsterLaunchFailedError
from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext, RunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

# what the warm process imports, unless the instance's `preload_modules` says otherwise: Dagster's
# run path and the libraries the project's runs use. Only libraries: the project's own modules are
# imported by each run from the files as they are then.
DEFAULT_PRELOAD = (
    "dagster",
    "dagster._cli.api",
    "dagster._core.execution.api",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "pyarrow",
    "pyarrow.compute",
    "pyarrow.dataset",
    "pyarrow.parquet",
    "deltalake",
    "sqlalchemy",
    "yaml",
)
# the package whose modules a forked run imports afresh (the warm process runs this module as
# `__main__`, hence __package__)
PROJECT_PACKAGE = (__package__ or __name__).split(".", 1)[0]
WORKER_TAG = f"{PROJECT_PACKAGE}/run_worker"
LOGGER = logging.getLogger("dagster")
# threads a preloaded library starts that a fork handles: jemalloc's background purging threads
# (pyarrow's and deltalake's allocators), which its own fork handlers stop and restart
FORK_SAFE = frozenset({"jemalloc_bg_thd"})
READY_TIMEOUT_SECONDS = 180.0


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Forks each run's process from a warm process that has imported Dagster and the libraries
    (see the module's docstring); runs whose code is not here go to `DefaultRunLauncher`."""

    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        preload_modules: Sequence[str] | None = None,
        start_timeout_seconds: float = 120.0,
    ) -> None:
        self._inst_data = inst_data
        self._preload = tuple(preload_modules) if preload_modules else DEFAULT_PRELOAD
        self._start_timeout = float(start_timeout_seconds)
        self._warm: dict[str, WarmProcess] = {}
        self._warm_lock = threading.Lock()
        self._default = DefaultRunLauncher()
        self._run_ids: set[str] = set()
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {
            "preload_modules": Field(
                Noneable(Array(str)),
                is_required=False,
                description="modules the warm process imports (default: Dagster's run "
                "path, pyarrow, deltalake, SQLAlchemy, PyYAML)",
            ),
            "start_timeout_seconds": Field(
                Float,
                default_value=120.0,
                description="how long a launch waits for the run's process to start",
            ),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]
    ) -> WarmRunLauncher:
        return cls(inst_data=inst_data, **config_value)

    def register_instance(self, instance: Any) -> None:
        super().register_instance(instance)
        self._default.register_instance(instance)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        executable = local_executable(run.job_code_origin)
        if executable is None or run.job_code_origin is None:
            self._default.launch_run(context)
            return
        args = ExecuteRunArgs(
            job_origin=run.job_code_origin,
            run_id=run.run_id,
            instance_ref=self._instance.get_ref(),
        )

        def forked(pid: int) -> None:
            self._instance.add_run_tags(run.run_id, {WORKER_TAG: json.dumps(worker_identity(pid))})
            self._instance.report_engine_event(
                f"Forked the run's process (pid {pid}) from the warm process of {executable}.",
                run,
                cls=self.__class__,
            )

        try:
            self._warm_process(executable).start_run(
                run.run_id, serialize_value(args), self._start_timeout, on_forked=forked
            )
        except RunStartError as error:
            raise DagsterLaunchFailedError(str(error)) from error  # type: ignore[no-untyped-call]
        self._run_ids.add(run.run_id)

    def _warm_process(self, executable: str) -> WarmProcess:
        """The executable's warm process: a new one when there is none, when it has exited, or
        when a library it imported has changed on disk since (an upgrade while the daemon runs)."""
        with self._warm_lock:
            warm = self._warm.get(executable)
            if warm is not None and not warm.current():
                LOGGER.info("restarting the warm run process of %s: %s", executable, warm.stale)
                warm.close()
                warm = None
            if warm is None:
                warm = WarmProcess(executable, self._preload)
                self._warm[executable] = warm
            return warm

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        if WORKER_TAG not in run.tags:
            return bool(self._default.terminate(run_id))  # type: ignore[no-untyped-call]
        self._instance.report_run_canceling(run)
        identity = json.loads(run.tags[WORKER_TAG])
        if not is_same_process(identity):
            self._instance.report_engine_event(
                f"The run's process {identity.get('pid')} on {identity.get('host')} is not "
                "running here; nothing to terminate.",
                run,
                cls=self.__class__,
            )
            return False
        os.kill(int(identity["pid"]), signal.SIGTERM)
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: Any) -> CheckRunHealthResult:
        if WORKER_TAG not in run.tags:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "launched by the code server")
        identity = json.loads(run.tags[WORKER_TAG])
        if identity.get("host") != socket.gethostname():
            return CheckRunHealthResult(
                WorkerStatus.UNKNOWN, f"the run's process is on {identity.get('host')}"
            )
        if is_same_process(identity):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(identity["pid"]))
        return CheckRunHealthResult(
            WorkerStatus.NOT_FOUND,
            f"the run's process {identity['pid']} is no longer running",
            run_worker_id=str(identity["pid"]),
        )

    def join(self, timeout: float = 30) -> None:
        """Wait for the runs this launcher started to finish (tests and short-lived
        instances), as `DefaultRunLauncher.join` does."""
        deadline = time.monotonic() + timeout
        while True:
            active = [
                run_id
                for run_id in self._run_ids
                if (run := self._instance.get_run_by_id(run_id)) and not run.is_finished
            ]
            if not active:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still running after {timeout} s: {active}")
            time.sleep(0.05)

    def dispose(self) -> None:
        with self._warm_lock:
            for warm in self._warm.values():
                warm.close()
            self._warm.clear()


class RunStartError(Exception):
    """The warm process could not start a run's process, or the process failed before the run
    began."""


def local_executable(origin: Any) -> str | None:
    """The Python of the run's code when it is on this machine and no container holds the code;
    None otherwise (the run then goes to `DefaultRunLauncher`)."""
    repository = getattr(origin, "repository_origin", None)
    if repository is None or repository.container_image or repository.container_context:
        return None
    executable = repository.executable_path or sys.executable
    if not (os.path.isfile(executable) and os.access(executable, os.X_OK)):
        return None
    entry_point = list(repository.entry_point or [])
    # the origin's entry point is how Dagster would start the run's Python: `dagster` (or
    # `python -m dagster`) is what this launcher replaces; anything else is left to Dagster
    if entry_point not in ([], ["dagster"], [executable, "-m", "dagster"]):
        return None
    return executable


def worker_identity(pid: int) -> dict[str, Any]:
    """What finds a run's process again: the host, the pid and the process's start time."""
    return {"host": socket.gethostname(), "pid": pid, "start": process_start_time(pid)}


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux); None where /proc is not."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[19]


def is_same_process(identity: Mapping[str, Any]) -> bool:
    """Whether the process the identity names is alive here and is still the one that was
    started (a pid taken again by another process does not count)."""
    if identity.get("host") != socket.gethostname():
        return False
    pid = int(identity["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    started = identity.get("start")
    return started is None or process_start_time(pid) == started


class WarmProcess:
    """The launcher's end of one warm process: it starts it, sends it runs and reads its answers.
    One run is started at a time; each waits at most its timeout."""

    def __init__(self, executable: str, preload: Sequence[str]) -> None:
        self.executable = executable
        self._lock = threading.Lock()
        command_read, self._command = os.pipe()
        self._replies, reply_write = os.pipe()
        self.process = subprocess.Popen(
            [
                executable,
                "-m",
                __name__,
                "--serve",
                str(command_read),
                str(reply_write),
                *preload,
            ],
            pass_fds=(command_read, reply_write),
            stdin=subprocess.DEVNULL,
        )
        os.close(command_read)
        os.close(reply_write)
        self._buffer = b""
        self._ready: dict[str, Any] | None = None
        self.stale = ""

    def current(self) -> bool:
        """Whether the process lives and every library file it imported is unchanged (`stale`
        says which changed)."""
        if self.process.poll() is not None:
            self.stale = f"it exited with code {self.process.returncode}"
            return False
        for path, mtime in ((self._ready or {}).get("files") or {}).items():
            try:
                changed = os.stat(path).st_mtime_ns != mtime
            except OSError:
                changed = True
            if changed:
                self.stale = f"{path} changed"
                return False
        return True

    def _reply(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            readable, _, _ = select.select([self._replies], [], [], left)
            if not readable:
                continue
            chunk = os.read(self._replies, 65536)
            if not chunk:
                raise RunStartError(
                    f"the warm run process of {self.executable} exited "
                    f"(exit code {self.process.poll()}); see the daemon's output"
                )
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def wait_ready(self) -> dict[str, Any]:
        if self._ready is None:
            started = time.monotonic()
            try:
                self._ready = self._reply(started + READY_TIMEOUT_SECONDS)
            except TimeoutError as error:
                self.close()
                raise RunStartError(
                    f"the warm run process of {self.executable} did not finish importing "
                    f"in {READY_TIMEOUT_SECONDS:.0f} s"
                ) from error
            LOGGER.info(
                "warm run process of %s (pid %s) ready in %.1f s",
                self.executable,
                self.process.pid,
                time.monotonic() - started,
            )
            for failure in self._ready.get("failed") or []:
                LOGGER.warning("the warm run process could not import %s", failure)
            others = [name for name in self._ready.get("threads") or [] if name not in FORK_SAFE]
            if others:
                LOGGER.warning(
                    "the warm run process has threads after its imports (%s); a forked run "
                    "process gets only the forking one (check preload_modules)",
                    ", ".join(others),
                )
        return self._ready

    def start_run(self, run_id: str, input_json: str, timeout: float, on_forked: Any = None) -> int:
        """Fork the run's process and wait until it has loaded the instance and the run; its
        pid. `on_forked(pid)` is called as soon as the pid is known."""
        with self._lock:
            self.wait_ready()
            message = json.dumps({"run_id": run_id, "input": input_json}) + "\n"
            try:
                os.write(self._command, message.encode())
            except BrokenPipeError as error:
                raise RunStartError(
                    f"the warm run process of {self.executable} has exited"
                ) from error
            deadline = time.monotonic() + timeout
            pid: int | None = None
            while True:
                try:
                    reply = self._reply(deadline)
                except TimeoutError as error:
                    if pid is not None:
                        with suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    raise RunStartError(
                        f"the process of run {run_id} did not start in {timeout:.0f} s"
                    ) from error
                if reply.get("run_id") != run_id:
                    continue
                if "pid" in reply:
                    pid = int(reply["pid"])
                    if on_forked is not None:
                        on_forked(pid)
                elif "failed" in reply:
                    raise RunStartError(f"the process of run {run_id} failed: {reply['failed']}")
                elif reply.get("started") and pid is not None:
                    return pid

    def close(self) -> None:
        """End the warm process (the runs it started keep running)."""
        for fd in (self._command, self._replies):
            with suppress(OSError):
                os.close(fd)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


# ---- the warm process (`python -m ingestion_assets.run_launcher --serve ...`) ----


def serve(command_fd: int, reply_fd: int, preload: Sequence[str]) -> None:
    """Import `preload`, say so, then fork a run's process for every command until the launcher
    closes the command pipe."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher's closing pipe ends this process
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked runs are reaped by the kernel
    failed = []
    for name in preload:
        try:
            __import__(name)
        except Exception as error:  # a missing optional library: its runs import it themselves
            failed.append(f"{name}: {type(error).__name__}: {error}")
    _purge_project_modules()
    replies = os.fdopen(reply_fd, "w", buffering=1)
    ready = {"ready": True, "failed": failed, "threads": _threads(), "files": _library_files()}
    replies.write(json.dumps(ready) + "\n")
    starting: dict[int, tuple[str, bytes]] = {}  # status pipe -> (run id, what it said so far)
    buffer = b""
    while True:
        readable, _, _ = select.select([command_fd, *starting], [], [])
        for fd in readable:
            if fd == command_fd:
                chunk = os.read(command_fd, 1 << 20)
                if not chunk:
                    return
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    command = json.loads(line)
                    status_read, status_write = os.pipe()
                    pid = os.fork()
                    if pid == 0:
                        os.close(status_read)
                        for other in (command_fd, reply_fd, *starting):
                            with suppress(OSError):
                                os.close(other)
                        os._exit(_run_worker(command["input"], status_write))
                    os.close(status_write)
                    starting[status_read] = (command["run_id"], b"")
                    replies.write(json.dumps({"run_id": command["run_id"], "pid": pid}) + "\n")
            else:
                run_id, said = starting[fd]
                chunk = os.read(fd, 65536)
                if chunk:
                    starting[fd] = (run_id, said + chunk)
                    continue
                os.close(fd)
                del starting[fd]
                status = json.loads(said) if said.strip() else {"failed": _EXITED}
                replies.write(json.dumps({"run_id": run_id, **status}) + "\n")


def _threads() -> list[str]:
    """The names of this process's threads but the main one (Linux; empty elsewhere)."""
    names = []
    with suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            if task == str(os.getpid()):
                continue
            with suppress(OSError), open(f"/proc/self/task/{task}/comm", encoding="utf-8") as comm:
                names.append(comm.read().strip())
    return names


def _library_files() -> dict[str, int]:
    """The file of every imported top-level package outside the project, with its modification
    time: what the launcher compares to notice an upgrade."""
    skipped = (sysconfig.get_paths()["stdlib"], os.path.dirname(os.path.abspath(__file__)))
    files = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        # `__main__` (and multiprocessing's `__mp_main__`) is this module
        if "." in name or name.startswith("__") or not path or path.startswith(skipped):
            continue
        with suppress(OSError):
            files[path] = os.stat(path).st_mtime_ns
    return files


_EXITED = "the run's process exited before it loaded the run; see the daemon's output"


def _purge_project_modules() -> None:
    """Forget the project's modules, so that runs import them from the files as they are."""
    for name in [
        n for n in sys.modules if n == PROJECT_PACKAGE or n.startswith(PROJECT_PACKAGE + ".")
    ]:
        del sys.modules[name]


def _run_worker(input_json: str, status_fd: int) -> int:
    """A forked run's process: `dagster api execute_run`'s work, telling the warm process once
    the instance and the run are loaded (or why not). Its exit code."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    status = os.fdopen(status_fd, "w")

    def tell(message: dict[str, Any]) -> None:
        try:
            status.write(json.dumps(message))
            status.close()
        except OSError:  # the warm process is gone; the run goes on
            pass

    try:
        from dagster._cli.api import _execute_run_command_body
        from dagster._cli.utils import get_instance_for_cli
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import deserialize_value
        from dagster._utils.error import serializable_error_info_from_exc_info
        from dagster._utils.interrupts import capture_interrupts
    except BaseException as error:
        tell({"failed": f"{type(error).__name__}: {error}"})
        return 1
    told = False
    try:
        with capture_interrupts():
            args = deserialize_value(input_json, ExecuteRunArgs)
            with get_instance_for_cli(instance_ref=args.instance_ref) as instance:
                if instance.get_run_by_id(args.run_id) is None:
                    raise LookupError(f"run {args.run_id} is not in the instance's run storage")
                tell({"started": True})
                told = True
                return _execute_run_command_body(
                    args.run_id,
                    instance,
                    lambda event: None,
                    set_exit_code_on_failure=bool(args.set_exit_code_on_failure),
                )
    except BaseException:
        info = serializable_error_info_from_exc_info(sys.exc_info())
        if not told:
            tell({"failed": info.to_string()})
        else:
            sys.stderr.write(info.to_string())
        return 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__" and sys.argv[1:2] == ["--serve"]:
    serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:])
