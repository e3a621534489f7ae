"""Run a benchmark case as child processes with a time limit, and measure their peak RSS.

Each case runs in processes of its own, so its peak resident memory is its own: the kernel's
`ru_maxrss` of each process, read by a small launcher process when the command exits (see
rss_launcher.py for why not from here). A pipeline of processes (a Singer tap piped into a target)
reports the sum of its processes' peaks, an upper bound of what it held at once."""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

LAUNCHER = pathlib.Path(__file__).resolve().parent / "rss_launcher.py"
POLL_SECONDS = 0.05
KILL_GRACE_SECONDS = 10.0


class CaseError(RuntimeError):
    """A case failed or ran out of time; the message names the case and says why."""


@dataclass(frozen=True)
class ProcessRun:
    """What the processes of one run did: exit codes, peak RSS, wall time, output files."""

    exit_codes: list[int]
    peak_rss_mb: float
    wall_seconds: float
    stdout_path: pathlib.Path
    stderr_paths: list[pathlib.Path]

    def stdout(self) -> str:
        """The last process's standard output."""
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def last_error_line(self) -> str:
        """The last non-empty line any process wrote to stderr (for a one-line reason)."""
        for path in reversed(self.stderr_paths):
            lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
            for line in reversed(lines):
                if line.strip():
                    return line.strip()[:300]
        return "no error output"


def _kill_group(group: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGTERM)
    deadline = time.monotonic() + KILL_GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(POLL_SECONDS)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def run_processes(
    case: str,
    commands: Sequence[Sequence[str]],
    log_dir: pathlib.Path,
    timeout_seconds: float,
    env: Mapping[str, str] | None = None,
    stdin_text: str | None = None,
) -> ProcessRun:
    """Run `commands` as a pipeline (each one's stdout into the next one's stdin), bounded in time.

    The processes share a new process group, so a timeout or Ctrl-C ends all of them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path = log_dir / "stdout.txt"
    stderr_paths = [log_dir / f"stderr-{index}.txt" for index in range(len(commands))]
    usage_paths = [log_dir / f"usage-{index}.txt" for index in range(len(commands))]
    processes: list[subprocess.Popen[bytes]] = []
    environment = dict(os.environ if env is None else env)
    started = time.monotonic()
    group = 0
    try:
        for index, command in enumerate(commands):
            last = index == len(commands) - 1
            with stderr_paths[index].open("wb") as stderr:
                stdout_target = stdout_path.open("wb") if last else None
                try:
                    process = subprocess.Popen(
                        [
                            sys.executable,
                            "-I",
                            "-S",
                            str(LAUNCHER),
                            str(usage_paths[index]),
                            *command,
                        ],
                        stdin=processes[-1].stdout if processes else subprocess.PIPE,
                        stdout=stdout_target if stdout_target else subprocess.PIPE,
                        stderr=stderr,
                        env=environment,
                        process_group=group,
                    )
                finally:
                    if stdout_target:
                        stdout_target.close()
            if processes and processes[-1].stdout:
                # the pipe now belongs to the two children; our copy would keep it open
                processes[-1].stdout.close()
            group = group or process.pid
            processes.append(process)
        first = processes[0]
        if first.stdin:
            if stdin_text is not None:
                first.stdin.write(stdin_text.encode())
            first.stdin.close()
        codes = _reap(case, processes, group, started, timeout_seconds, log_dir)
        usages = [_usage(path) for path in usage_paths]
        return ProcessRun(
            exit_codes=codes,
            peak_rss_mb=sum(peak for peak, _ in usages),
            # from the first command's start to the last one's end, as the launchers timed them
            wall_seconds=max(seconds for _, seconds in usages),
            stdout_path=stdout_path,
            stderr_paths=stderr_paths,
        )
    except BaseException:
        if group:
            _kill_group(group)
        for process in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(KILL_GRACE_SECONDS)
        raise


def _usage(path: pathlib.Path) -> tuple[float, float]:
    """Peak RSS in MB and wall seconds, as the launcher wrote them (zeros if it could not)."""
    try:
        peak_kib, seconds = path.read_text(encoding="utf-8").split()
        return int(peak_kib) / 1024, float(seconds)
    except (OSError, ValueError):
        return 0.0, 0.0


def _reap(
    case: str,
    processes: list[subprocess.Popen[bytes]],
    group: int,
    started: float,
    timeout_seconds: float,
    log_dir: pathlib.Path,
) -> list[int]:
    """Wait for every process (polling, bounded); their exit codes."""
    deadline = started + timeout_seconds
    codes: dict[int, int] = {}
    while len(codes) < len(processes):
        for process in processes:
            if process.pid not in codes and process.poll() is not None:
                codes[process.pid] = process.returncode
        if len(codes) == len(processes):
            break
        if time.monotonic() > deadline:
            _kill_group(group)
            raise CaseError(
                f"{case}: no result within {timeout_seconds:.0f} s; stopped it (logs in {log_dir})"
            )
        time.sleep(POLL_SECONDS)
    return [codes[process.pid] for process in processes]


def json_result(case: str, run: ProcessRun) -> dict[str, object]:
    """The JSON object a case prints as its last line of output; a clear error otherwise."""
    if any(code != 0 for code in run.exit_codes):
        raise CaseError(f"{case}: exited with {run.exit_codes}: {run.last_error_line()}")
    lines = [line for line in run.stdout().splitlines() if line.startswith("{")]
    if not lines:
        raise CaseError(f"{case}: printed no result line: {run.last_error_line()}")
    result: dict[str, object] = json.loads(lines[-1])
    return result


@dataclass(frozen=True)
class Sample:
    """One run of a case: rows landed, seconds of its timed part, and what it cost."""

    rows: int
    seconds: float
    peak_rss_mb: float
    process_seconds: float
    bytes_written: int
    note: str = ""


@dataclass(frozen=True)
class Figures:
    """A case's figures, each the median over its runs."""

    rows: int
    rows_per_second: float
    megabytes_per_second: float
    peak_rss_mb: float
    seconds: float
    process_seconds: float
    written_mb: float
    runs: int
    note: str = ""


def median_figures(samples: Sequence[Sample], arrow_bytes_per_row: float) -> Figures:
    """Medians of every figure; MB/s counts the Arrow bytes of the rows moved."""
    rates = [sample.rows / sample.seconds if sample.seconds > 0 else 0.0 for sample in samples]
    notes = sorted({sample.note for sample in samples if sample.note})
    return Figures(
        rows=int(statistics.median(sample.rows for sample in samples)),
        rows_per_second=statistics.median(rates),
        megabytes_per_second=statistics.median(rate * arrow_bytes_per_row / 1e6 for rate in rates),
        peak_rss_mb=statistics.median(sample.peak_rss_mb for sample in samples),
        seconds=statistics.median(sample.seconds for sample in samples),
        process_seconds=statistics.median(sample.process_seconds for sample in samples),
        written_mb=statistics.median(sample.bytes_written / 1e6 for sample in samples),
        runs=len(samples),
        note="; ".join(notes),
    )
