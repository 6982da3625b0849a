"""The C core (CFFI extensions built by setup.py) and the rule for choosing it.

``CHUNKAH_BACKEND``: unset (the C core when it loads), ``native`` (the C core or an
ImportError) or ``python`` (the pure-Python twins).
"""

from __future__ import annotations

import importlib
import os
from typing import Any


def wanted_backend() -> str:
    wanted = os.environ.get("CHUNKAH_BACKEND", "").strip().lower()
    if wanted not in ("", "native", "python"):
        raise ImportError(f"CHUNKAH_BACKEND={wanted!r} is not valid: use 'native' or 'python'")
    return wanted


def load_delta_kernels() -> tuple[Any, Any] | None:
    """(ffi, lib) of ``chunkah._native._delta``; None when the twins are wanted or the
    extension is missing (unless ``CHUNKAH_BACKEND=native``: then ImportError)."""
    wanted = wanted_backend()
    if wanted == "python":
        return None
    try:
        module = importlib.import_module("chunkah._native._delta")
    except ImportError as exc:
        if wanted == "native":
            raise ImportError(
                f"CHUNKAH_BACKEND=native but the C extension chunkah._native._delta "
                f"could not be loaded ({exc}); reinstall with a C compiler available"
            ) from exc
        return None
    return module.ffi, module.lib
