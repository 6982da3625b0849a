"""Thin wrappers around the real tools the tests use as judges.

Every wrapper runs the tool with a timeout and, when it fails, raises
``ToolError`` (an ``AssertionError``, so pytest shows it as a test failure)
whose message carries the command line, exit status, stdout and stderr.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_TIMEOUT = 300.0

#: Debian packages that provide the tools below (the Makefile installs them).
TOOL_PACKAGES = {
    "docker-registry": "docker-registry",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "mmdebstrap": "mmdebstrap",
    "tar": "tar",
    "cp": "coreutils",
}


class ToolError(AssertionError):
    """A real tool failed, timed out or is missing."""


def require_tool(name: str) -> str:
    """Return the absolute path of *name* or fail with how to install it."""
    found = shutil.which(name)
    if found is None:
        package = TOOL_PACKAGES.get(name, name)
        raise ToolError(
            f"{name} is not installed; `make debs` installs it (Debian package {package})"
        )
    return found


def _tail(data: bytes | str | None, limit: int = 8000) -> str:
    if not data:
        return "<empty>"
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    if len(text) > limit:
        text = f"...[{len(text) - limit} chars cut]...\n" + text[-limit:]
    return text


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    input: bytes | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[bytes]:
    """Run *argv*, capture its output, and fail clearly on error or timeout.

    *env* entries are added to the current environment, not substituted for it.
    """
    args = [os.fspath(a) for a in argv]
    require_tool(args[0])
    full_env = None
    if env is not None:
        full_env = dict(os.environ)
        full_env.update(env)
    shown = " ".join(args)
    try:
        proc = subprocess.run(
            args,
            input=input,
            capture_output=True,
            timeout=timeout,
            env=full_env,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolError(
            f"timed out after {timeout:g}s: {shown}\n"
            f"--- stdout ---\n{_tail(exc.stdout)}\n--- stderr ---\n{_tail(exc.stderr)}"
        ) from None
    if check and proc.returncode != 0:
        raise ToolError(
            f"exit status {proc.returncode}: {shown}\n"
            f"--- stdout ---\n{_tail(proc.stdout)}\n--- stderr ---\n{_tail(proc.stderr)}"
        )
    return proc


# --- skopeo -------------------------------------------------------------------

_LOOPBACK_PREFIXES = ("docker://127.0.0.1", "docker://localhost", "docker://[::1]")


def is_loopback_docker_ref(ref: str) -> bool:
    """True for ``docker://`` references to a registry on this machine (plain HTTP)."""
    return ref.startswith(_LOOPBACK_PREFIXES)


def skopeo_copy(
    src: str,
    dst: str,
    *extra: str,
    preserve_digests: bool = False,
    timeout: float = DEFAULT_TIMEOUT,
) -> subprocess.CompletedProcess[bytes]:
    """``skopeo copy SRC DST``; loopback ``docker://`` refs get ``--*-tls-verify=false``.

    *extra* goes before the references, e.g. ``"--dest-compress-format", "gzip"``.
    ``--insecure-policy`` keeps the machine's policy.json out of the picture.
    """
    argv = ["skopeo", "--insecure-policy", "copy"]
    if is_loopback_docker_ref(src):
        argv.append("--src-tls-verify=false")
    if is_loopback_docker_ref(dst):
        argv.append("--dest-tls-verify=false")
    if preserve_digests:
        argv.append("--preserve-digests")
    argv += [*extra, src, dst]
    return run(argv, timeout=timeout)


def skopeo_inspect(
    ref: str,
    raw: bool = False,
    config: bool = False,
    *,
    parse: bool = True,
    timeout: float = 120.0,
) -> dict[str, Any] | bytes:
    """``skopeo inspect [--raw] [--config] REF``.

    Returns the parsed JSON, or the exact bytes when ``parse=False`` (with
    ``raw=True`` those are the manifest bytes, whose sha256 is the digest).
    """
    argv = ["skopeo", "--insecure-policy", "inspect"]
    if is_loopback_docker_ref(ref):
        argv.append("--tls-verify=false")
    if raw:
        argv.append("--raw")
    if config:
        argv.append("--config")
    argv.append(ref)
    out = run(argv, timeout=timeout).stdout
    if not parse:
        return out
    doc: dict[str, Any] = json.loads(out)
    return doc


# --- umoci --------------------------------------------------------------------


def umoci(*args: str | os.PathLike[str], timeout: float = DEFAULT_TIMEOUT) -> str:
    """Run ``umoci ARGS`` and return its stdout as text."""
    return run(["umoci", *args], timeout=timeout).stdout.decode("utf-8", "replace")


def umoci_init_new(layout: str | os.PathLike[str], tag: str) -> None:
    """Create an OCI layout holding one empty image tagged *tag*."""
    umoci("init", "--layout", layout)
    umoci("new", "--image", f"{os.fspath(layout)}:{tag}")


def umoci_insert(
    layout: str | os.PathLike[str], tag: str, source: str | os.PathLike[str], target: str
) -> None:
    """Add *source* (a file or directory) at *target* in a new layer of LAYOUT:TAG."""
    umoci("insert", "--image", f"{os.fspath(layout)}:{tag}", source, target)


def umoci_unpack(
    layout: str | os.PathLike[str],
    tag: str,
    bundle: str | os.PathLike[str],
    *extra: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """``umoci unpack --image LAYOUT:TAG BUNDLE``; returns ``BUNDLE/rootfs``.

    umoci reads plain and gzip layers only: convert zstd images with
    ``skopeo_copy(..., "--dest-compress-format", "gzip")`` first.
    Run as root so that owners, devices and xattrs are restored for real.
    """
    umoci("unpack", *extra, "--image", f"{os.fspath(layout)}:{tag}", bundle, timeout=timeout)
    return Path(bundle) / "rootfs"


def umoci_repack(layout: str | os.PathLike[str], tag: str, bundle: str | os.PathLike[str]) -> None:
    """``umoci repack --image LAYOUT:TAG BUNDLE``: the bundle's changes as a new layer."""
    umoci("repack", "--image", f"{os.fspath(layout)}:{tag}", bundle)


# --- mmdebstrap ---------------------------------------------------------------


def mmdebstrap(
    suite: str,
    target: str | os.PathLike[str],
    sources: Sequence[str],
    *options: str,
    source_date_epoch: int | None = 1700000000,
    timeout: float = 1200.0,
) -> subprocess.CompletedProcess[bytes]:
    """``mmdebstrap -q OPTIONS SUITE TARGET SOURCES...``.

    A *target* ending in ``.tar`` writes a tarball (with ``dev/`` device nodes);
    ``SOURCE_DATE_EPOCH`` makes the tarball bit-identical for the same packages.
    """
    env = {} if source_date_epoch is None else {"SOURCE_DATE_EPOCH": str(source_date_epoch)}
    argv = ["mmdebstrap", "-q", *options, suite, os.fspath(target), *sources]
    return run(argv, env=env, timeout=timeout)
