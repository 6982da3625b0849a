"""The sysroot on disk: layout, lock, chunk and TOC cache, deployment records, status.

Everything here either reads state or writes one small thing atomically (a cache
entry, a JSON record, a symlink).  Committing, rolling back and garbage collection
live in ``chunkah.host.deploy``; the byte-level layout is in docs/sysroot.md.

::

    SYSROOT/
      sysroot.json                      {"schema": 1} -- marks an initialised sysroot
      lock                              flock(2) target; the holder writes {"pid", "since"}
      current  -> deployments/<id>/root the commit point (one rename(2) switches it)
      previous -> deployments/<id>/root the rollback target
      switch.json                       journal, only while current/previous change
      deployments/<id>/deployment.json  the record (image, digests, layers, /etc merge)
      deployments/<id>/root/            exactly the image's tree; never modified
      state/etc/<id>/                   the administrator's /etc for deployment <id>
      state/var/                        the persistent /var (from the first image)
      cache/chunks/sha256/ab/abcd...    verified chunks, by sha256 of their bytes
      cache/tocs/sha256/<hex>           TOC blobs of deployed images, by their digest
      cache/tmp/                        temporary files of cache writes
      staging/                          trees being assembled; emptied when locked
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from chunkah.errors import InputError, StateError, VerificationError
from chunkah.host.etcmerge import EtcConflict

__all__ = [
    "DEPLOYMENT_ID_RE",
    "Deployment",
    "DeploymentMetadata",
    "LayerRecord",
    "LockHolder",
    "Sysroot",
    "SysrootLock",
    "digest_hex",
    "disk_full_error",
    "fsync_dir",
    "is_disk_full",
    "status",
    "sync_filesystem",
    "utc_now",
    "write_file_atomic",
]

SCHEMA = 1
DEPLOYMENT_ID_RE = re.compile(r"^[0-9]{4,}-[0-9a-f]{12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


# --- small durable-write primitives ---------------------------------------------------


def utc_now() -> str:
    """The current time as ``2024-06-11T10:15:00Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


def disk_full_error(where: Path, doing: str, exc: OSError) -> StateError:
    """The StateError a full disk (or quota) becomes; the message says what to do."""
    return StateError(
        f"disk full while {doing} in {where} ({os.strerror(exc.errno or errno.ENOSPC)}): "
        "the current deployment is unchanged and the staging area was cleaned; free space "
        "on that filesystem (old deployments and cache entries are garbage-collected after "
        "each update) and run the update again"
    )


def fsync_dir(path: str | os.PathLike[str] | bytes) -> None:
    """fsync a directory, so renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs() -> Any:
    try:
        fn = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):  # not glibc/Linux: fall back to sync(2)
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_SYNCFS = _load_syncfs()


def sync_filesystem(path: str | os.PathLike[str] | bytes) -> None:
    """Make everything written on the filesystem holding ``path`` durable: syncfs(2).

    One call replaces an fsync per file and per directory of a staged tree (thousands
    of journal commits on ext4); it also flushes unrelated dirty data on that
    filesystem, which is the price OSTree pays the same way.  Where syncfs is missing,
    sync(2) flushes every filesystem.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _SYNCFS is None:
            os.sync()
        elif _SYNCFS(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs: {os.strerror(err)}", os.fsdecode(path))
    finally:
        os.close(fd)


def write_file_atomic(path: Path, data: bytes, *, mode: int = 0o644, sync: bool = True) -> None:
    """Write ``path`` as a whole: temp file next to it, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            if sync:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync:
        fsync_dir(path.parent)


def digest_hex(digest: bytes | str) -> str:
    """64 lowercase hex digits from a raw 32-byte sha256, hex, or ``sha256:<hex>``."""
    if isinstance(digest, bytes | bytearray | memoryview):
        raw = bytes(digest)
        if len(raw) != 32:
            raise InputError(f"a sha256 digest has 32 bytes, got {len(raw)}")
        return raw.hex()
    text = digest.removeprefix("sha256:")
    if not _HEX64.match(text):
        raise InputError(f"not a sha256 digest: {digest!r}")
    return text


# --- records -------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerRecord:
    """One layer of a deployed image, as recorded in deployment.json."""

    digest: str  # the blob's descriptor digest
    diff_id: str  # sha256 of the uncompressed tar
    media_type: str = ""
    size: int = 0
    toc_digest: str | None = None  # the TOC blob's digest, kept in cache/tocs/sha256/<hex>
    toc_format: str = ""  # "chunkah" | "zstd:chunked" | "" (no TOC: plain layer)

    def to_json(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "diff_id": self.diff_id,
            "media_type": self.media_type,
            "size": self.size,
            "toc_digest": self.toc_digest,
            "toc_format": self.toc_format,
            # where the blob is, relative to the sysroot (derived; for reading by hand)
            "toc_path": (
                f"cache/tocs/sha256/{digest_hex(self.toc_digest)}" if self.toc_digest else None
            ),
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerRecord:
        return cls(
            digest=str(obj["digest"]),
            diff_id=str(obj["diff_id"]),
            media_type=str(obj.get("media_type", "")),
            size=int(obj.get("size", 0)),
            toc_digest=obj.get("toc_digest"),
            toc_format=str(obj.get("toc_format", "")),
        )


@dataclass(frozen=True)
class DeploymentMetadata:
    """What the updater knows about the image it hands to ``commit_deployment``.

    ``tocs`` maps a TOC digest (``sha256:<hex>``) to the TOC blob's bytes or to a file
    holding them; they are verified and stored in ``cache/tocs`` with the deployment.
    ``extra`` is any JSON-ready data the updater wants kept (e.g. bytes fetched).
    """

    image_ref: str
    manifest_digest: str
    layers: tuple[LayerRecord, ...] = ()
    config_digest: str = ""
    tocs: Mapping[str, bytes | Path] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    """A committed deployment: ``root`` is exactly the image's tree."""

    id: str
    path: Path  # SYSROOT/deployments/<id>
    image_ref: str
    manifest_digest: str
    created: str
    layers: tuple[LayerRecord, ...] = ()
    config_digest: str = ""
    etc_merged_from: str | None = None  # the deployment whose /etc was merged, if any
    etc_conflicts: tuple[EtcConflict, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def root(self) -> Path:
        return self.path / "root"

    def to_json(self) -> dict[str, Any]:
        """The deployment.json document (and the status entry)."""
        return {
            "schema": SCHEMA,
            "id": self.id,
            "image_ref": self.image_ref,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "created": self.created,
            "layers": [layer.to_json() for layer in self.layers],
            "etc": {
                "merged_from": self.etc_merged_from,
                "conflicts": [c.to_json() for c in self.etc_conflicts],
            },
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, path: Path, obj: Mapping[str, Any]) -> Deployment:
        etc = obj.get("etc") or {}
        return cls(
            id=str(obj["id"]),
            path=path,
            image_ref=str(obj.get("image_ref", "")),
            manifest_digest=str(obj.get("manifest_digest", "")),
            config_digest=str(obj.get("config_digest", "")),
            created=str(obj.get("created", "")),
            layers=tuple(LayerRecord.from_json(x) for x in obj.get("layers", ())),
            etc_merged_from=etc.get("merged_from"),
            etc_conflicts=tuple(EtcConflict.from_json(c) for c in etc.get("conflicts", ())),
            extra=dict(obj.get("extra") or {}),
        )


@dataclass(frozen=True)
class LockHolder:
    """Who holds the sysroot lock (pid from the kernel when it can tell)."""

    pid: int | None
    since: str | None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "since": self.since}


@dataclass(frozen=True)
class Pointers:
    """``current`` and ``previous`` as they are in effect (the switch journal applied)."""

    current: str | None
    previous: str | None
    pending_switch: bool


# --- the lock --------------------------------------------------------------------------


class SysrootLock:
    """An acquired sysroot lock; a context manager, or ``release()`` it explicitly."""

    def __init__(self, sysroot: Sysroot) -> None:
        self._sysroot = sysroot

    def __enter__(self) -> Sysroot:
        return self._sysroot

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        self._sysroot._unlock()


def _proc_locks_holder(lock_path: Path) -> tuple[bool, int | None] | None:
    """(held, pid) from /proc/locks for an flock on ``lock_path``; None if unknown."""
    try:
        st = os.stat(lock_path)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            key = (int(major, 16), int(minor, 16), int(ino))
            pid = int(parts[4])
        except ValueError:
            continue
        if key == want:
            return True, (pid if pid > 0 else None)
    return False, None


# --- the sysroot -----------------------------------------------------------------------


class Sysroot:
    """One sysroot directory.  Cheap to create; ``init`` makes the layout, ``open`` checks it.

    Writes (commit, rollback, gc, staging, cache writes of an update) need the lock:
    ``with sysroot.lock(): ...``.  Reads (``current``, ``previous``, ``status``) do not.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(os.path.abspath(path))
        self._lock_fd: int | None = None
        self._lock_depth = 0

    def __repr__(self) -> str:
        return f"Sysroot({str(self.path)!r})"

    # layout
    @property
    def deployments_dir(self) -> Path:
        return self.path / "deployments"

    @property
    def state_dir(self) -> Path:
        return self.path / "state"

    @property
    def var_dir(self) -> Path:
        """The persistent /var, shared by all deployments."""
        return self.path / "state" / "var"

    @property
    def cache_dir(self) -> Path:
        return self.path / "cache"

    @property
    def staging_dir(self) -> Path:
        return self.path / "staging"

    @property
    def lock_path(self) -> Path:
        return self.path / "lock"

    @property
    def journal_path(self) -> Path:
        return self.path / "switch.json"

    def etc_dir(self, deployment_id: str) -> Path:
        """The administrator's /etc for a deployment (bind it over ``root/etc`` at boot)."""
        return self.path / "state" / "etc" / deployment_id

    def deployment_path(self, deployment_id: str) -> Path:
        return self.deployments_dir / deployment_id

    _DIRS = (
        "deployments",
        "state",
        "state/etc",
        "cache",
        "cache/chunks",
        "cache/chunks/sha256",
        "cache/tocs",
        "cache/tocs/sha256",
        "cache/tmp",
        "staging",
    )

    @classmethod
    def init(cls, path: str | os.PathLike[str]) -> Sysroot:
        """Create the layout (idempotent; an existing sysroot is left as it is)."""
        sysroot = cls(path)
        try:
            sysroot.path.mkdir(parents=True, exist_ok=True)
            for rel in cls._DIRS:
                (sysroot.path / rel).mkdir(mode=0o755, exist_ok=True)
            (sysroot.state_dir / "etc").chmod(0o700)  # /etc copies may hold secrets
            marker = sysroot.path / "sysroot.json"
            if not marker.exists():
                write_file_atomic(marker, json.dumps({"schema": SCHEMA}).encode() + b"\n")
            fsync_dir(sysroot.path)
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(sysroot.path, "creating the sysroot", exc) from exc
            raise StateError(f"cannot create a sysroot in {sysroot.path}: {exc}") from exc
        return sysroot

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Sysroot:
        """An existing sysroot; StateError if ``path`` is not one."""
        sysroot = cls(path)
        marker = sysroot.path / "sysroot.json"
        try:
            doc = json.loads(marker.read_bytes())
        except FileNotFoundError:
            raise StateError(
                f"{sysroot.path} is not a chunkah sysroot (no sysroot.json); "
                "a first `chunkah update` creates one"
            ) from None
        except (OSError, ValueError) as exc:
            raise StateError(f"cannot read {marker}: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
            raise StateError(f"{marker}: unsupported sysroot schema {doc!r}")
        return sysroot

    # --- lock ------------------------------------------------------------------------

    @property
    def locked(self) -> bool:
        """True while this object holds the lock."""
        return self._lock_fd is not None

    def lock(self, wait: float | None = None) -> SysrootLock:
        """Take the update lock (flock on SYSROOT/lock), re-entrant within this object.

        ``wait=None`` fails at once with a StateError naming the holder; a number waits
        up to that many seconds (``math.inf``: for ever).  On first acquisition the
        leftovers of crashed runs are cleaned (staging, cache temp files, a pending
        switch is finished) -- so stage trees only while holding the lock.
        """
        if self._lock_fd is not None:
            self._lock_depth += 1
            return SysrootLock(self)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StateError(f"cannot open the sysroot lock {self.lock_path}: {exc}") from exc
        deadline = None if wait is None else time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if deadline is None or time.monotonic() >= deadline:
                        raise self._busy_error(wait) from None
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            holder = {"pid": os.getpid(), "since": utc_now()}
            with contextlib.suppress(OSError):  # informational only
                os.ftruncate(fd, 0)
                os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        self._lock_depth = 1
        try:
            self.recover()
        except BaseException:
            self._unlock(force=True)
            raise
        return SysrootLock(self)

    def _busy_error(self, wait: float | None) -> StateError:
        holder = self.lock_holder()
        who = "another update"
        if holder is not None and holder.pid is not None:
            who += f" (pid {holder.pid})"
        since = f" since {holder.since}" if holder is not None and holder.since else ""
        waited = f" (waited {wait:g} s)" if wait else ""
        return StateError(
            f"{who} is running on {self.path}{since}{waited}; wait for it to finish, "
            "or check `chunkah status`"
        )

    def _unlock(self, *, force: bool = False) -> None:
        if self._lock_fd is None:
            return
        self._lock_depth -= 1
        if self._lock_depth > 0 and not force:
            return
        fd, self._lock_fd, self._lock_depth = self._lock_fd, None, 0
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)  # closing the last descriptor releases the flock

    def require_lock(self, doing: str) -> None:
        if self._lock_fd is None:
            raise StateError(f"{doing} needs the sysroot lock: use `with sysroot.lock(): ...`")

    def lock_holder(self) -> LockHolder | None:
        """Who holds the lock now, or None (read-only: never takes the lock)."""
        since: str | None = None
        file_pid: int | None = None
        try:
            doc = json.loads(self.lock_path.read_bytes() or b"{}")
            if isinstance(doc, dict):
                since = doc.get("since")
                file_pid = doc.get("pid")
        except (OSError, ValueError):
            pass
        if self._lock_fd is not None:
            return LockHolder(pid=os.getpid(), since=since)
        probe = _proc_locks_holder(self.lock_path)
        if probe is None:
            probe = self._probe_lock()
        held, kernel_pid = probe
        if not held:
            return None
        return LockHolder(pid=file_pid if file_pid is not None else kernel_pid, since=since)

    def _probe_lock(self) -> tuple[bool, int | None]:
        """Fallback when /proc/locks is unreadable: try a shared lock and drop it."""
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False, None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, None
        finally:
            os.close(fd)
        return False, None

    def recover(self) -> None:
        """Finish or drop what a crashed run left (needs the lock; done by ``lock``)."""
        self.require_lock("recovering the sysroot")
        # Best effort: on a full disk, cleaning frees space and an unfinished journal is
        # still read correctly; refusing the lock here would block the gc that helps.
        with contextlib.suppress(OSError):
            self.clean_staging()
        with contextlib.suppress(OSError):
            self.finish_switch()

    def clean_staging(self) -> int:
        """Remove everything in staging/ and cache/tmp/ (needs the lock); bytes freed."""
        self.require_lock("cleaning the staging area")
        freed = 0
        for area in (self.staging_dir, self.cache_dir / "tmp"):
            if not area.is_dir():
                continue
            with os.scandir(area) as it:
                names = [de.name for de in it]
            for name in names:
                freed += remove_tree(area / name)
        with os.scandir(self.path) as it:
            stale = [de.name for de in it if de.name.startswith(".") and ".tmp-" in de.name]
        for name in stale:
            freed += remove_tree(self.path / name)
        return freed

    # --- staging ---------------------------------------------------------------------

    @contextlib.contextmanager
    def stage(self, name: str = "tree") -> Iterator[Path]:
        """An empty directory in staging/ for the assembler (needs the lock).

        On an exception it is removed and a full disk becomes a StateError.
        ``commit_deployment`` consumes it on success.  The directory is created 0700:
        give it the image root's mode, owner and mtime.
        """
        self.require_lock("staging a tree")
        try:
            path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.staging_dir))
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(
                    self.staging_dir, "creating a staging directory", exc
                ) from exc
            raise StateError(f"cannot create a staging directory: {exc}") from exc
        try:
            yield path
        except BaseException as exc:
            with contextlib.suppress(OSError):
                remove_tree(path)
            if is_disk_full(exc):
                assert isinstance(exc, OSError)
                raise disk_full_error(self.staging_dir, "staging the new tree", exc) from exc
            raise

    # --- cache -----------------------------------------------------------------------

    def chunk_path(self, sha256: bytes | str) -> Path:
        hx = digest_hex(sha256)
        return self.cache_dir / "chunks" / "sha256" / hx[:2] / hx

    def toc_file(self, digest: bytes | str) -> Path:
        return self.cache_dir / "tocs" / "sha256" / digest_hex(digest)

    def cache_put(
        self,
        sha256: bytes | str,
        data: bytes | bytearray | memoryview,
        *,
        verify: bool = True,
        sync: bool = True,
    ) -> Path:
        """Store a chunk under its sha256 (raw 32 bytes, hex or ``sha256:hex``).

        Temp file in cache/tmp, fsync (unless ``sync=False``), rename: a file in the
        cache is always complete.  ``verify`` (default) hashes ``data`` first and raises
        VerificationError on a mismatch -- pass False only if you just verified it.
        Thread-safe.  A disk-full error becomes a StateError.
        """
        hx = digest_hex(sha256)
        final = self.cache_dir / "chunks" / "sha256" / hx[:2] / hx
        if final.exists():
            return final
        if verify and hashlib.sha256(data).hexdigest() != hx:
            raise VerificationError(
                f"chunk does not match its digest sha256:{hx}: got "
                f"sha256:{hashlib.sha256(data).hexdigest()}; not stored"
            )
        self._store(final, lambda f: f.write(data), sync=sync, what=f"chunk sha256:{hx}")
        return final

    def cache_get(self, sha256: bytes | str) -> Path | None:
        """The cached chunk's file, or None."""
        path = self.chunk_path(sha256)
        try:
            return path if stat.S_ISREG(os.lstat(path).st_mode) else None
        except FileNotFoundError:
            return None

    def cache_has(self, sha256: bytes | str) -> bool:
        return self.cache_get(sha256) is not None

    def toc_put(self, digest: str, blob: bytes | Path, *, sync: bool = True) -> Path:
        """Store a TOC blob under its digest (verified, atomic).  ``blob``: bytes or a file."""
        hx = digest_hex(digest)
        final = self.toc_file(hx)
        if final.exists():
            return final
        if isinstance(blob, Path):
            with open(blob, "rb") as src:
                got = hashlib.file_digest(src, "sha256").hexdigest()
        else:
            got = hashlib.sha256(blob).hexdigest()
        if got != hx:
            raise VerificationError(f"TOC does not match its digest sha256:{hx}: got sha256:{got}")

        def write(f: BinaryIO) -> None:
            if isinstance(blob, Path):
                with open(blob, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
            else:
                f.write(blob)

        self._store(final, write, sync=sync, what=f"TOC sha256:{hx}")
        return final

    def toc_path(self, digest: str) -> Path | None:
        """The stored TOC blob for a digest, or None."""
        path = self.toc_file(digest)
        return path if path.is_file() else None

    def _store(self, final: Path, write: Any, *, sync: bool, what: str) -> None:
        tmpdir = self.cache_dir / "tmp"
        tmp: str | None = None
        try:
            final.parent.mkdir(exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix="put-", dir=tmpdir)
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fchmod(f.fileno(), 0o644)
                if sync:
                    os.fsync(f.fileno())
            os.rename(tmp, final)
            tmp = None
        except OSError as exc:
            if is_disk_full(exc):
                raise disk_full_error(self.cache_dir, f"storing {what}", exc) from exc
            raise StateError(f"cannot store {what} in {self.cache_dir}: {exc}") from exc
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    # --- deployments -----------------------------------------------------------------

    def _link_id(self, name: str) -> str | None:
        try:
            target = os.readlink(self.path / name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"cannot read {self.path / name}: {exc}") from exc
        parts = target.split("/")
        if len(parts) != 3 or parts[0] != "deployments" or parts[2] != "root":
            raise StateError(f"{self.path / name} points to {target!r}, not a deployment")
        if not DEPLOYMENT_ID_RE.match(parts[1]):
            raise StateError(f"{self.path / name} names a bad deployment id {parts[1]!r}")
        return parts[1]

    def read_journal(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.journal_path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # a torn journal can only be one that was never acted upon
        return doc if isinstance(doc, dict) else {}

    def pointers(self) -> Pointers:
        """current/previous in effect (read-only; consistent even during a switch)."""
        for _ in range(50):
            cur, prev = self._link_id("current"), self._link_id("previous")
            journal = self.read_journal()
            if (cur, prev) != (self._link_id("current"), self._link_id("previous")):
                continue  # a switch step happened while we read; read again
            if journal and journal.get("to") == cur and cur is not None:
                return Pointers(cur, journal.get("from"), pending_switch=True)
            return Pointers(cur, prev, pending_switch=journal is not None)
        raise StateError(f"{self.path}: current/previous keep changing; try again")

    def deployment(self, deployment_id: str) -> Deployment:
        path = self.deployment_path(deployment_id)
        try:
            doc = json.loads((path / "deployment.json").read_bytes())
            return Deployment.from_json(path, doc)
        except FileNotFoundError:
            raise StateError(f"deployment {deployment_id} is missing from {path}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StateError(f"cannot read {path / 'deployment.json'}: {exc}") from exc

    def current(self) -> Deployment | None:
        """The current deployment (``SYSROOT/current``), or None before the first one."""
        cur = self.pointers().current
        return self.deployment(cur) if cur else None

    def previous(self) -> Deployment | None:
        """The rollback target, or None."""
        prev = self.pointers().previous
        return self.deployment(prev) if prev else None

    def deployment_ids(self) -> list[str]:
        """Every deployment directory on disk (committed or orphaned), oldest first."""
        try:
            with os.scandir(self.deployments_dir) as it:
                ids = [de.name for de in it if DEPLOYMENT_ID_RE.match(de.name)]
        except FileNotFoundError:
            return []
        return sorted(ids, key=lambda i: (int(i.split("-")[0]), i))

    def next_deployment_id(self, manifest_digest: str) -> str:
        serials = [int(i.split("-")[0]) for i in self.deployment_ids()]
        ptr = self.pointers()
        serials += [int(i.split("-")[0]) for i in (ptr.current, ptr.previous) if i]
        text = manifest_digest.removeprefix("sha256:")
        short = text[:12] if re.match(r"^[0-9a-f]{12}", text) else None
        if short is None:
            short = hashlib.sha256(manifest_digest.encode()).hexdigest()[:12]
        return f"{max(serials, default=0) + 1:04d}-{short}"

    # --- the switch (journal + one rename) ---------------------------------------------

    def replace_symlink(self, name: str, deployment_id: str, *, sync: bool = True) -> None:
        """Point SYSROOT/<name> at a deployment's root: symlink next to it, rename(2)."""
        tmp = self.path / f".{name}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(f"deployments/{deployment_id}/root", tmp)
        try:
            os.rename(tmp, self.path / name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        if sync:
            fsync_dir(self.path)

    def write_journal(self, from_id: str | None, to_id: str) -> None:
        doc = {"from": from_id, "to": to_id, "since": utc_now(), "pid": os.getpid()}
        write_file_atomic(self.journal_path, json.dumps(doc).encode() + b"\n")

    def finish_switch(self) -> None:
        """Complete a switch whose journal is still there (needs the lock)."""
        self.require_lock("finishing a switch")
        journal = self.read_journal()
        if journal is None:
            return
        cur = self._link_id("current")
        from_id = journal.get("from")
        switched = journal.get("to") == cur and cur is not None and isinstance(from_id, str)
        if switched and self._link_id("previous") != from_id:
            assert isinstance(from_id, str)
            self.replace_symlink("previous", from_id)
        os.unlink(self.journal_path)
        fsync_dir(self.path)


# --- trees on disk ----------------------------------------------------------------------


def remove_tree(path: Path | str | bytes) -> int:
    """Remove a file or a directory tree (never following symlinks); disk bytes freed.

    Only inodes whose last link goes away are counted, so removing a deployment that
    shares files with another one by hardlinks reports what it really frees.
    """
    bpath = os.fsencode(path)
    try:
        st = os.lstat(bpath)
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(bpath)
        return st.st_blocks * 512 if st.st_nlink <= 1 else 0
    freed = 0
    stack: list[tuple[bytes, bool]] = [(bpath, False)]
    while stack:
        dpath, listed = stack.pop()
        if listed:
            freed += os.lstat(dpath).st_blocks * 512
            os.rmdir(dpath)
            continue
        stack.append((dpath, True))
        with contextlib.suppress(PermissionError):
            os.chmod(dpath, 0o700)  # a 0555 directory in a tree (root can anyway)
        with os.scandir(dpath) as it:
            for de in it:
                est = de.stat(follow_symlinks=False)
                if stat.S_ISDIR(est.st_mode):
                    stack.append((de.path, False))
                else:
                    os.unlink(de.path)
                    if est.st_nlink <= 1:
                        freed += est.st_blocks * 512
    return freed


def disk_use(path: Path, seen: set[tuple[int, int]] | None = None) -> int:
    """Disk bytes of what is in ``path``, each inode counted once (calls may share ``seen``)."""
    seen = set() if seen is None else seen
    total = 0
    stack = [os.fsencode(path)]
    try:
        st = os.lstat(stack[0])
    except FileNotFoundError:
        return 0
    if not stat.S_ISDIR(st.st_mode):
        return st.st_blocks * 512
    while stack:  # the directory's own blocks are not counted, only what is in it
        try:
            with os.scandir(stack.pop()) as it:
                for de in it:
                    try:
                        est = de.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if est.st_nlink > 1 and not stat.S_ISDIR(est.st_mode):
                        key = (est.st_dev, est.st_ino)
                        if key in seen:
                            continue
                        seen.add(key)
                    total += est.st_blocks * 512
                    if stat.S_ISDIR(est.st_mode):
                        stack.append(de.path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # removed while we walked (status runs during updates)
    return total


def _deployment_summary(sysroot: Sysroot, deployment_id: str | None) -> dict[str, Any] | None:
    if deployment_id is None:
        return None
    try:
        dep = sysroot.deployment(deployment_id)
    except StateError as exc:
        return {"id": deployment_id, "error": str(exc)}
    return {
        "id": dep.id,
        "image_ref": dep.image_ref,
        "manifest_digest": dep.manifest_digest,
        "created": dep.created,
        "root": str(dep.root),
        "etc": str(sysroot.etc_dir(dep.id)),
        "etc_conflicts": [c.to_json() for c in dep.etc_conflicts],
    }


def status(sysroot: Sysroot, *, disk: bool = True) -> dict[str, Any]:
    """A JSON-ready report; read-only, needs no lock, works while an update runs.

    Keys: ``sysroot``, ``current`` and ``previous`` (id, image_ref, manifest_digest,
    created, root, etc, etc_conflicts; or None), ``etc_conflicts`` (the current
    deployment's), ``deployments`` (ids on disk), ``pending_switch``,
    ``update_running`` (``{"pid", "since"}`` or None) and, with ``disk``, ``disk``
    (bytes used by deployments, state, cache chunks and TOCs, staging; each inode once).
    """
    ptr = sysroot.pointers()
    holder = sysroot.lock_holder()
    cur = _deployment_summary(sysroot, ptr.current)
    out: dict[str, Any] = {
        "sysroot": str(sysroot.path),
        "current": cur,
        "previous": _deployment_summary(sysroot, ptr.previous),
        "etc_conflicts": (cur or {}).get("etc_conflicts", []),
        "deployments": sysroot.deployment_ids(),
        "pending_switch": ptr.pending_switch,
        "update_running": holder.to_json() if holder else None,
    }
    if disk:
        seen: set[tuple[int, int]] = set()
        use = {
            "deployments": disk_use(sysroot.deployments_dir, seen),
            "state": disk_use(sysroot.state_dir, seen),
            "cache_chunks": disk_use(sysroot.cache_dir / "chunks", seen),
            "cache_tocs": disk_use(sysroot.cache_dir / "tocs", seen),
            "staging": disk_use(sysroot.staging_dir, seen) + disk_use(sysroot.cache_dir / "tmp"),
        }
        use["total"] = sum(use.values())
        out["disk"] = use
    return out
