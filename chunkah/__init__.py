"""chunkah: incremental image updates by package-based layers and content-defined chunks."""

__version__ = "0.1.0"
