"""zchunk on the tar (Debian's zchunk 1.2.3: ``zck`` and ``zckdl``).

The canonical tars of both versions are compressed with ``zck`` (build); nginx
serves the new ``.zck``; ``zckdl -s OLD.zck URL`` reuses the old file's chunks and
fetches the rest by (multi-)range requests; ``unzck`` gives back the tar, which must
be the new tar byte for byte.  Bytes and requests from nginx's access log.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

from .httpd import serve_directory
from .process import run_measured
from .strategy import Step, Strategy, Unavailable
from .treecheck import verdict

TIMEOUT = 3600.0


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _run(step: Step) -> dict[str, Any]:
    if shutil.which("zckdl") is None:
        raise Unavailable("zchunk is not installed (Debian package zchunk)")
    old_tar, new_tar = step.ws.tar(step.k), step.ws.tar(step.k + 1)
    srv_root, client = step.work / "srv", step.work / "client"
    srv_root.mkdir(parents=True)
    client.mkdir()
    z_new = run_measured(["zck", "-o", srv_root / "new.tar.zck", new_tar], timeout=TIMEOUT).check()
    z_old = run_measured(["zck", "-o", client / "old.tar.zck", old_tar], timeout=TIMEOUT).check()
    with serve_directory(srv_root, step.work / "nginx") as srv:
        mark = srv.mark()
        m = run_measured(
            ["zckdl", "-s", client / "old.tar.zck", f"{srv.url}/new.tar.zck"],
            timeout=TIMEOUT,
            cwd=client,
        ).check()
        requests, nbytes, statuses = srv.since(mark)
    un = run_measured(["unzck", client / "new.tar.zck"], timeout=TIMEOUT, cwd=client).check()
    back = client / "new.tar"
    same = back.stat().st_size == new_tar.stat().st_size and _sha256(back) == _sha256(new_tar)
    tree = verdict(
        [] if same else ["content differs for the unpacked tar"],
        mtimes="compared (byte-identical tar)",
    )
    shutil.rmtree(client, ignore_errors=True)
    return {
        "bytes": nbytes,
        "requests": requests,
        "seconds": m.seconds + un.seconds,
        "maxrss_mib": max(m.maxrss_mib, un.maxrss_mib),
        "tree": tree,
        "statuses": statuses,
        "build": {
            "seconds": z_new.seconds,
            "bytes": (srv_root / "new.tar.zck").stat().st_size,
            "tool": "zck",
            "old_zck_seconds": z_old.seconds,
        },
        "note": f"zckdl {m.seconds:.2f} s + unzck {un.seconds:.2f} s; "
        + " ".join(m.stdout.split()[-8:]),
    }


STRATEGIES = [Strategy("zchunk", "zchunk (zckdl) on the tar", _run)]
