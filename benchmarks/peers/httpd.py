"""nginx serving a directory on 127.0.0.1 (``tests/support/nginx.py``'s static mode).

Its access log records method, URI, status, body bytes sent and the Range header of
every request; ``since(mark)`` sums what one client fetched.  Stopped by pid.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support.nginx import start_nginx


@dataclass(frozen=True)
class Served:
    url: str
    access_log: Path

    def mark(self) -> int:
        time.sleep(0.1)
        return self.access_log.stat().st_size

    def since(self, mark: int) -> tuple[int, int, dict[str, int]]:
        """(requests, body bytes, statuses) logged after *mark*."""
        time.sleep(0.2)  # nginx writes the line when the response is done
        with open(self.access_log, "rb") as f:
            f.seek(mark)
            lines = f.read().decode("utf-8", "replace").splitlines()
        requests = nbytes = 0
        statuses: dict[str, int] = {}
        for line in lines:
            parts = line.split(" ", 4)
            if len(parts) < 4:
                continue
            requests += 1
            nbytes += int(parts[3])
            statuses[parts[2]] = statuses.get(parts[2], 0) + 1
        return requests, nbytes, statuses


@contextlib.contextmanager
def serve_directory(root: Path, work: Path) -> Iterator[Served]:
    nginx = start_nginx(work, root=root)
    try:
        yield Served(nginx.url, nginx.access_log)
    finally:
        nginx.stop()
