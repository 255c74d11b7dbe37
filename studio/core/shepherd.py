"""`python -m studio.core.shepherd EXIT_FILE -- ARGV...`: the parent of every process the studio supervises.

It starts ARGV as its child (same process group, same log), waits for it, writes how it ended to EXIT_FILE
(JSON: exit code or signal) and exits with the child's code. A studio restarted after a crash is no longer
the parent of the processes it re-adopts, so the kernel would hand their exit status to init; the shepherd
keeps it in the process's own folder instead. Standard library only: it starts in a few milliseconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time

# Signals sent to the whole group (cancel, stop) reach the shepherd too. It stays to record the end;
# a handler (unlike SIG_IGN) is reset to the default in the child by exec, so the child still gets them.
GROUP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _write(path: str, record: dict) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".exit-", dir=folder)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(record, f)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: python -m studio.core.shepherd EXIT_FILE -- ARGV...", file=sys.stderr)
        return 2
    exit_file, command = argv[0], argv[2:]
    for signum in GROUP_SIGNALS:
        signal.signal(signum, lambda *_: None)
    try:
        child = subprocess.Popen(command)
    except OSError as exc:
        print(f"shepherd: cannot start {command[0]}: {exc}", file=sys.stderr, flush=True)
        _write(exit_file, {"code": 127, "signal": None, "pid": None, "error": str(exc), "ended_at": time.time()})
        return 127
    code = child.wait()
    _write(exit_file, {"code": code if code >= 0 else None, "signal": -code if code < 0 else None,
                       "pid": child.pid, "ended_at": time.time()})
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
