"""rsync daemon with -z (Debian's rsync), on 127.0.0.1.

The daemon serves the new tree as a read-only module; the client starts from a copy
of the old tree (``cp -a``, setup) and runs ``rsync -aHAXz --numeric-ids --delete``.
Bytes: what the daemon sent, from its log ("sent N bytes"); what the client sent
(block checksums) is in the note.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

from support.registry import free_port
from support.tools import ToolError

from .process import run_measured
from .strategy import Step, Strategy, Unavailable
from .treecheck import check_tree

TIMEOUT = 3600.0
_SENT = re.compile(r"sent (\d+) bytes\s+received (\d+) bytes")


def _run(step: Step) -> dict[str, Any]:
    if shutil.which("rsync") is None:
        raise Unavailable("rsync is not installed (Debian package rsync)")
    work = step.work
    port = free_port()
    log = work / "rsyncd.log"
    conf = work / "rsyncd.conf"
    conf.write_text(
        f"pid file = {work / 'rsyncd.pid'}\nport = {port}\naddress = 127.0.0.1\n"
        f"use chroot = no\nlog file = {log}\nnumeric ids = yes\n\n"
        f"[new]\npath = {step.new_tree}\nread only = yes\nuid = root\ngid = root\n"
    )
    dest = work / "dest"
    t0 = time.perf_counter()
    os.makedirs(dest, exist_ok=True)
    run_measured(["cp", "-a", f"{step.old_tree}/.", f"{dest}/"], timeout=TIMEOUT).check()
    setup_seconds = time.perf_counter() - t0
    with open(work / "rsyncd.stderr", "wb") as err:
        daemon = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={conf}"],
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 15
        while not log.exists() or "rsyncd version" not in log.read_text(errors="replace"):
            if daemon.poll() is not None or time.monotonic() > deadline:
                raise ToolError(f"rsync daemon did not start: {work}")
            time.sleep(0.05)
        m = run_measured(
            ["rsync", "-aHAXz", "--checksum", "--numeric-ids", "--delete", "--stats",
             f"rsync://127.0.0.1:{port}/new/", f"{dest}/"],
            timeout=TIMEOUT,
        ).check()  # fmt: skip
        time.sleep(0.2)
    finally:
        if daemon.poll() is None:
            os.kill(daemon.pid, signal.SIGTERM)
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(daemon.pid, signal.SIGKILL)
                daemon.wait(timeout=10)
    # The daemon's parent logs a zero summary of its own when it is stopped: take the
    # transfer's line (the largest).
    hits = [(int(s), int(r)) for s, r in _SENT.findall(log.read_text(errors="replace"))]
    if not hits or max(hits)[0] == 0:
        raise ToolError(f"no transfer summary in {log}")
    sent, received = max(hits)
    tree = check_tree(step.new_tree, dest)
    shutil.rmtree(dest, ignore_errors=True)
    return {
        "bytes": sent,
        "requests": 1,
        "seconds": m.seconds,
        "maxrss_mib": m.maxrss_mib,
        "tree": tree,
        "setup": {"seconds": setup_seconds, "what": "cp -a of the old tree"},
        "build": {"seconds": 0.0, "tool": "none (the daemon serves the tree)"},
        "note": f"one connection; the client sent {received} bytes (block checksums)",
    }


STRATEGIES = [Strategy("rsync", "rsync daemon -z", _run)]
