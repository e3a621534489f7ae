"""Run one command, write its peak resident set size (KiB) and wall seconds to a file, and exit
as it exited.

Linux starts a child's RSS high-water mark at its parent's RSS when it forks, and keeps it across
exec: a case started straight from the harness would report at least the harness's memory. This
launcher is a small process (run with `python -I -S`, importing only `os` and `sys`), so the peak
it reports is the command's own, to within its few MB."""

import os
import sys
import time


def main() -> int:
    """`rss_launcher.py OUT_FILE COMMAND...`."""
    out_file, command = sys.argv[1], sys.argv[2:]
    started = time.monotonic()
    try:
        pid = os.posix_spawnp(command[0], command, os.environ)
    except OSError as error:
        sys.stderr.write(f"cannot start {command[0]}: {error}\n")
        return 127
    _, status, usage = os.wait4(pid, 0)
    seconds = time.monotonic() - started
    with open(out_file, "w", encoding="utf-8") as out:
        out.write(f"{usage.ru_maxrss} {seconds:.6f}\n")
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
