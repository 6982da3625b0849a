"""Build shim: setuptools metadata lives in pyproject.toml; this file only adds the CFFI extensions."""

from setuptools import setup

setup(
    cffi_modules=[
        "chunkah/_native/build_ffi.py:ffibuilder",
        "chunkah/_native/build_ffi.py:delta_ffibuilder",
    ]
)
