"""Helpers for tests that drive real components.

Real registry (``registry``), real image tools (``tools``), real Debian root
filesystems (``debian``), a hand-made tree with every entry type (``handmade``)
and the tree comparison that judges round trips (``treediff``).  The pytest
fixtures that wrap them live in ``tests/conftest.py``.
"""
