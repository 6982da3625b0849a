"""OSTree static deltas (Debian's ostree 2022.7): the smallest peer measured so far.

Both trees are committed to an ``archive`` repository (the server); ``static-delta
generate --inline --min-fallback-size=0`` writes one self-contained delta file (its
size is what a client downloads); a ``bare`` client repository that already holds
the old commit (``pull-local``, setup) applies it with ``static-delta apply-offline``;
the new commit is checked out with ``--force-copy`` and diffed against the new tree.

OSTree stores no mtimes (checkouts get 0) and no hardlinks (identical objects are
linked by checkout, or copied with --force-copy): mtimes are not compared; hardlink
sets of the source show up as differences.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from .process import run_measured
from .strategy import Step, Strategy, Unavailable
from .treecheck import check_tree

TIMEOUT = 3600.0
EPOCH = 1_700_000_000


def _ostree(*args: str | Path, timeout: float = TIMEOUT) -> Any:
    return run_measured(["ostree", *(str(a) for a in args)], timeout=timeout).check()


def _commit(repo: Path, tree: Path, subject: str) -> tuple[str, float]:
    m = _ostree(
        "commit",
        f"--repo={repo}",
        "--branch=bench",
        f"--timestamp=@{EPOCH}",
        f"--subject={subject}",
        f"--tree=dir={tree}",
    )
    return m.stdout.strip().splitlines()[-1], m.seconds


def measure_static_delta(old_tree: Path, new_tree: Path, workdir: Path) -> dict[str, Any]:
    """Commit both trees, generate an inline static delta, apply it offline, check the tree.

    Returns ``bytes`` (the delta file: what a client downloads), ``generate_seconds``,
    ``apply_seconds``, ``apply_maxrss_mib``, ``commit_seconds``, ``checkout_seconds``,
    ``tree_ok``, ``tree_problems`` (the first 20 differences; mtimes not compared) and
    ``tree`` (the full verdict).  *workdir* is created and left with the repositories
    (remove it when done).
    """
    if shutil.which("ostree") is None:
        raise Unavailable("ostree is not installed (Debian package ostree)")
    workdir.mkdir(parents=True, exist_ok=True)
    server, client = workdir / "server-repo", workdir / "client-repo"
    delta, out = workdir / "delta", workdir / "checkout"
    for p in (server, client, delta, out):
        shutil.rmtree(p, ignore_errors=True)
    _ostree("init", f"--repo={server}", "--mode=archive")
    _ostree("config", f"--repo={server}", "set", "core.fsync", "false")
    old_commit, t_old = _commit(server, old_tree, "old")
    new_commit, t_new = _commit(server, new_tree, "new")
    gen = _ostree(
        "static-delta",
        "generate",
        f"--repo={server}",
        f"--from={old_commit}",
        f"--to={new_commit}",
        "--inline",
        "--min-fallback-size=0",
        f"--filename={delta}",
    )
    _ostree("init", f"--repo={client}", "--mode=bare")
    _ostree("config", f"--repo={client}", "set", "core.fsync", "false")
    _ostree("pull-local", f"--repo={client}", server, old_commit)  # the client has v_k
    apply = _ostree("static-delta", "apply-offline", f"--repo={client}", delta)
    t0 = time.perf_counter()
    _ostree("checkout", f"--repo={client}", "--force-copy", new_commit, out)
    checkout_seconds = time.perf_counter() - t0
    tree = check_tree(new_tree, out, check_mtime=False)
    return {
        "bytes": delta.stat().st_size,
        "generate_seconds": gen.seconds,
        "apply_seconds": apply.seconds,
        "apply_maxrss_mib": apply.maxrss_mib,
        "commit_seconds": t_old + t_new,
        "checkout_seconds": checkout_seconds,
        "generate_summary": "; ".join(
            line.strip()
            for line in (gen.stdout + gen.stderr).splitlines()
            if "=" in line or "objects" in line
        ),
        "tree_ok": tree["ok"],
        "tree_problems": tree["first"],
        "tree": tree,
    }


def _run(step: Step) -> dict[str, Any]:
    r = measure_static_delta(step.old_tree, step.new_tree, step.work)
    return {
        "bytes": r["bytes"],
        "requests": 1,
        "seconds": r["apply_seconds"],
        "maxrss_mib": r["apply_maxrss_mib"],
        "tree": r["tree"],
        "build": {
            "seconds": r["commit_seconds"] + r["generate_seconds"],
            "commit_seconds": r["commit_seconds"],
            "generate_seconds": r["generate_seconds"],
        },
        "note": "delta file size (one download, not served); applied offline; "
        f"checkout {r['checkout_seconds']:.2f} s; {r['generate_summary']}",
    }


STRATEGIES = [
    Strategy(
        "ostree-delta",
        "OSTree static delta (inline, applied offline)",
        _run,
        wire="delta file size",
        quick=False,  # commits + bsdiff: about a minute of CPU on tiny, beyond bench-quick's budget
    )
]
