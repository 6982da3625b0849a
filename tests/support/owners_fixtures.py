"""Real package databases for the ownership tests, made with the real tools.

- rpm: two source packages built with Debian's ``rpmbuild`` and installed with
  ``rpm --root`` into an sqlite rpmdb (``apt-get install rpm``).
- alpm: a package archive made by hand (``.PKGINFO`` + ``.MTREE``, ``bsdtar``)
  and installed with Debian's ``pacman -U --root`` (``pacman-package-manager``).
- apk: Debian 12 has no apk-tools, so ``lib/apk/db/installed`` is written by
  hand in the documented format, with real SHA-1 ``Z:`` checksums.
- Python: numpy wheels installed by ``pip install --target`` from PyPI, cached.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sys
from dataclasses import replace
from pathlib import Path

from chunkah.tree.model import Entry, EntryType, FileContent, Tree

from .debian import cache_root, file_lock
from .tools import run

__all__ = [
    "RPM_SPEC_HELLO",
    "RPM_SPEC_WORLD",
    "build_alpm_root",
    "build_rpm_root",
    "file_entry",
    "numpy_target",
    "tree_under",
    "write_apk_root",
]

RPM_SPEC_HELLO = """\
Name: hello
Version: 1.0
Release: 3
Epoch: 2
Summary: hello
License: MIT
BuildArch: noarch

%description
hello

%package data
Summary: hello data
%description data
data

%install
mkdir -p %{buildroot}/usr/bin %{buildroot}/usr/share/hello
printf '#!/bin/sh\\necho hello\\n' > %{buildroot}/usr/bin/hello
chmod 755 %{buildroot}/usr/bin/hello
ln -s hello %{buildroot}/usr/bin/hi
printf 'hello data %s\\n' $(seq 1 500) > %{buildroot}/usr/share/hello/data.txt

%files
/usr/bin/hello
/usr/bin/hi

%files data
%dir /usr/share/hello
/usr/share/hello/data.txt

%changelog
* Mon Nov 13 2023 A B <a@example.org> - 2:1.0-3
- three
* Wed Nov 01 2023 A B <a@example.org> - 2:1.0-2
- two
* Sun Jan 01 2023 A B <a@example.org> - 2:1.0-1
- one
"""

# Ships under /bin and /lib: the tree's bin -> usr/bin symlink moves them.
RPM_SPEC_WORLD = """\
Name: world
Version: 0.5
Release: 1
Summary: world
License: MIT
BuildArch: noarch

%description
world

%install
mkdir -p %{buildroot}/bin %{buildroot}/lib/world
printf '#!/bin/sh\\necho world\\n' > %{buildroot}/bin/world
chmod 755 %{buildroot}/bin/world
printf 'world lib %s\\n' $(seq 1 300) > %{buildroot}/lib/world/lib.txt

%files
/bin/world
%dir /lib/world
/lib/world/lib.txt
"""


def build_rpm_root(work: Path) -> Path:
    """Build the two packages and install them into ``work/root`` (merged /usr)."""
    top = work / "rpmbuild"
    for name, spec in (("hello", RPM_SPEC_HELLO), ("world", RPM_SPEC_WORLD)):
        spec_path = work / f"{name}.spec"
        spec_path.write_text(spec)
        run(
            [
                "rpmbuild",
                "-bb",
                "--define",
                f"_topdir {top}",
                "--define",
                "_binary_filedigest_algorithm 8",
                "--define",
                "_build_id_links none",
                spec_path,
            ],
            timeout=120,
        )
    root = work / "root"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/lib").mkdir(parents=True)
    os.symlink("usr/bin", root / "bin")
    os.symlink("usr/lib", root / "lib")
    rpms = sorted((top / "RPMS/noarch").glob("*.rpm"))
    run(
        [
            "rpm",
            f"--root={root}",
            "--dbpath=/usr/lib/sysimage/rpm",
            "--define",
            "_db_backend sqlite",
            "-i",
            "--nodeps",
            "--ignorearch",
            "--noscripts",
            *rpms,
        ],
        timeout=120,
    )
    return root


def rpm_query(root: Path, *args: str) -> str:
    """``rpm --root ROOT --dbpath ... ARGS`` output, for comparing against our parser."""
    return run(
        ["rpm", f"--root={root}", "--dbpath=/usr/lib/sysimage/rpm", *args], timeout=60
    ).stdout.decode()


def _make_alpm_pkg(work: Path, name: str, base: str, version: str, files: dict[str, bytes]) -> Path:
    pkgdir = work / f"{name}-pkg"
    for rel, data in files.items():
        p = pkgdir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (pkgdir / ".PKGINFO").write_text(
        f"pkgname = {name}\npkgbase = {base}\npkgver = {version}\npkgdesc = {name}\n"
        "url = https://example.org\nbuilddate = 1699000000\npackager = T <t@example.org>\n"
        f"size = {sum(len(d) for d in files.values())}\narch = x86_64\nlicense = MIT\n"
    )
    tops = sorted({rel.split("/")[0] for rel in files})
    run(
        [
            "bsdtar",
            "--format=mtree",
            "--options=!all,use-set,type,uid,gid,mode,time,size,sha256,link",
            "-czf",
            ".MTREE",
            ".PKGINFO",
            *tops,
        ],
        cwd=pkgdir,
    )
    out = work / f"{name}-{version}-x86_64.pkg.tar.zst"
    run(["bsdtar", "--zstd", "-cf", out, ".PKGINFO", ".MTREE", *tops], cwd=pkgdir)
    return out


def build_alpm_root(work: Path) -> Path:
    """Two packages from one pkgbase plus one other, installed with ``pacman -U --root``.

    ``etc/pacman.conf`` in the root points DBPath at a non-default place so the
    source must read it.
    """
    pkgs = [
        _make_alpm_pkg(work, "foo-bin", "foo", "1.2-1", {"usr/bin/foo": b"#!/bin/sh\necho foo\n"}),
        _make_alpm_pkg(
            work, "foo-data", "foo", "1.2-1", {"usr/share/foo/data": b"foo data\n" * 400}
        ),
        _make_alpm_pkg(work, "bar", "bar", "3.0-2", {"usr/lib/bar/bar.txt": b"bar\n" * 100}),
    ]
    root = work / "root"
    dbpath = root / "usr/lib/pacman-db"
    dbpath.mkdir(parents=True)
    conf = root / "etc/pacman.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text(
        "[options]\n# our db lives under /usr\nDBPath = /usr/lib/pacman-db/\n"
        "Architecture = auto\nSigLevel = Never\nLocalFileSigLevel = Never\n"
    )
    run(
        [
            "pacman",
            "-U",
            "--root",
            root,
            "--dbpath",
            dbpath,
            "--config",
            conf,
            "--noconfirm",
            "--noscriptlet",
            *pkgs,
        ],
        timeout=120,
    )
    return root


def _q1(data: bytes) -> str:
    return "Q1" + base64.b64encode(hashlib.sha1(data).digest()).decode()


def write_apk_root(root: Path) -> dict[str, bytes]:
    """A hand-written ``lib/apk/db/installed`` (apk-tools is not in Debian 12) and its files.

    Returns the files written (path -> content). ``busybox`` and
    ``busybox-binsh`` share the origin ``busybox``.
    """
    files = {
        "bin/busybox": b"\x7fELF busybox" * 100,
        "bin/sh": b"sh shim",
        "etc/motd": b"Welcome to Alpine!\n",
        "usr/lib/libz.so.1.3": b"\x7fELF zlib" * 50,
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    z = {k: _q1(v) for k, v in files.items()}
    db = f"""C:Q1abcdefghijklmnopqrstuvwxyzA=
P:busybox
V:1.36.1-r15
A:x86_64
S:500000
I:900000
T:Size optimized toolbox
U:https://busybox.net/
L:GPL-2.0-only
o:busybox
m:Sören Tempel <soeren+alpine@soeren-tempel.net>
t:1699000000
c:abc123
F:bin
R:busybox
a:0:0:755
Z:{z["bin/busybox"]}
F:etc
R:motd
Z:{z["etc/motd"]}

P:busybox-binsh
V:1.36.1-r15
A:x86_64
o:busybox
t:1699000000
F:bin
R:sh
Z:{z["bin/sh"]}

P:zlib
V:1.3.1-r0
A:x86_64
o:zlib
t:1690000000
F:usr/lib
R:libz.so.1.3
Z:{z["usr/lib/libz.so.1.3"]}

"""
    dbfile = root / "lib/apk/db/installed"
    dbfile.parent.mkdir(parents=True, exist_ok=True)
    dbfile.write_text(db)
    return files


def numpy_target(version: str = "2.4.0") -> Path:
    """``pip install --target`` of a numpy manylinux wheel for CPython 3.11, cached."""
    base = cache_root() / "owners"
    final = base / f"numpy-{version}"
    with file_lock(base / f".numpy-{version}.lock"):
        if not final.is_dir():
            tmp = base / f".tmp-numpy-{version}-{os.getpid()}"
            run(
                [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--no-deps",
                    "--target",
                    tmp,
                    "--only-binary=:all:",
                    "--python-version",
                    "3.11",
                    "--platform",
                    "manylinux_2_28_x86_64",  # numpy >= 2.3 ships manylinux_2_28 wheels only
                    "--implementation",
                    "cp",
                    f"numpy=={version}",
                ],
                timeout=600,
            )
            os.rename(tmp, final)
    return final


def tree_under(tree: Tree, prefix: bytes) -> Tree:
    """``tree`` moved below ``prefix`` (its parent directories added)."""
    out = Tree()
    parts = prefix.split(b"/")
    for i in range(1, len(parts) + 1):
        out.add(Entry(path=b"/".join(parts[:i]), type=EntryType.DIR, mode=0o755))
    for e in tree:
        path = prefix + b"/" + e.path if e.path else prefix
        group = prefix + b"/" + e.hardlink_group if e.hardlink_group else None
        out.add(replace(e, path=path, hardlink_group=group))
    return out


def file_entry(
    spool: Path,
    path: bytes,
    data: bytes,
    *,
    xattrs: tuple[tuple[str, bytes], ...] = (),
    hardlink_group: bytes | None = None,
) -> Entry:
    """A regular-file Entry whose content is ``data`` written to a spool file."""
    spool.mkdir(parents=True, exist_ok=True)
    f = spool / hashlib.sha256(path).hexdigest()
    f.write_bytes(data)
    return Entry(
        path=path,
        type=EntryType.FILE,
        size=len(data),
        content=FileContent(os.fsencode(f), len(data)),
        xattrs=xattrs,
        hardlink_group=hardlink_group,
    )
