"""Helpers for tests that drive real components.

Import them as ``from support.treediff import assert_trees_equal`` (pytest puts
``tests/`` on ``sys.path`` because of ``tests/conftest.py``).

Fixtures (``tests/conftest.py``):
    docker_registry            session  Debian docker-registry 2.8 on 127.0.0.1
    docker_registry_redirect   session  same, blob GETs 307 to a Range-capable server
    debian_tiny_rootfs         session  33-package bookworm rootfs (cached)
    debian_minbase_rootfs      session  mmdebstrap --variant=minbase (cached)
    handmade_tree              function every entry type, xattrs, odd names

Modules:
    registry    start_registry(), RunningRegistry.access_entries(), parse_access_log()
    blobserver  start_blob_server(root, multirange=...): static files with Range
    tools       run(), skopeo_copy(), skopeo_inspect(), umoci_*(), mmdebstrap()
    debian      build_rootfs(TINY | MINBASE | LARGE), copy_tree(), file_lock()
    handmade    make_handmade_tree(path) -> HandmadeTree
    treediff    diff_trees(a, b, ...) -> list[str], assert_trees_equal(), dropped_xattrs()
"""
