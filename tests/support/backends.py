"""Run a snippet in a fresh interpreter with a chosen CHUNKAH_BACKEND, optionally with
one of the C core's extension modules made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap


def block_module(name: str) -> str:
    """Code that makes ``import name`` fail, to prepend to a snippet."""
    return textwrap.dedent(
        f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == {name!r}:
                    raise ImportError("blocked for the test")
        sys.meta_path.insert(0, Block())
        """
    )


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "CHUNKAH_BACKEND"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-W", "always", "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )
