"""Child processes measured the same way for every peer: wall time and peak RSS."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from support.tools import ToolError


@dataclass
class Measured:
    """One child process: exit status, wall seconds, its own peak RSS, its output."""

    argv: list[str]
    returncode: int
    seconds: float
    maxrss_mib: float
    stdout: str
    stderr: str
    timed_out: bool = False

    def check(self) -> Measured:
        if self.returncode != 0:
            what = "timed out" if self.timed_out else f"exit status {self.returncode}"
            raise ToolError(
                f"{what}: {' '.join(self.argv)}\n--- stdout ---\n{self.stdout[-4000:]}\n"
                f"--- stderr ---\n{self.stderr[-4000:]}"
            )
        return self


def run_measured(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Measured:
    """Run *argv*, wait for it with ``os.wait4`` (wall time and ru_maxrss), bounded.

    ru_maxrss is the largest resident set of the process itself (not of its children).
    """
    args = [os.fspath(a) for a in argv]
    full_env = dict(os.environ, **(env or {}))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(
            args, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=full_env, cwd=cwd
        )
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(
            args,
            proc.returncode,
            seconds,
            usage.ru_maxrss / 1024,  # KiB on Linux
            out.read().decode("utf-8", "replace"),
            err.read().decode("utf-8", "replace"),
            timed_out.is_set(),
        )


def measured_ok(
    argv: Sequence[str | os.PathLike[str]], *, timeout: float, **kw: object
) -> Measured:
    """``run_measured(...).check()``."""
    return run_measured(argv, timeout=timeout, **kw).check()  # type: ignore[arg-type]
