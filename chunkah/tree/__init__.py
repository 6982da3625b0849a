"""The filesystem tree model, its readers, the canonical tar writer and safe extraction.

See docs/tree.md for the model, the xattr policy, prune rules and the tar format.
"""

from chunkah.tree.dir_reader import parse_prune, read_dir
from chunkah.tree.errors import SpecialFileError, TarFormatError, TreeError, UnsafeEntryError
from chunkah.tree.extract import ExtractResult, extract_tar
from chunkah.tree.model import (
    Content,
    EmptyContent,
    Entry,
    EntryType,
    FileContent,
    MemoryContent,
    RangeContent,
    SpooledContent,
    Tree,
    filter_xattrs,
    keep_xattr,
    normalize_path,
    path_sort_key,
)
from chunkah.tree.tar_reader import TarMember, flatten_layers, iter_tar_members, read_tar
from chunkah.tree.tar_writer import WrittenTar, tar_header, write_tar

__all__ = [
    "Content",
    "EmptyContent",
    "Entry",
    "EntryType",
    "ExtractResult",
    "FileContent",
    "MemoryContent",
    "RangeContent",
    "SpecialFileError",
    "SpooledContent",
    "TarFormatError",
    "TarMember",
    "Tree",
    "TreeError",
    "UnsafeEntryError",
    "WrittenTar",
    "extract_tar",
    "filter_xattrs",
    "flatten_layers",
    "iter_tar_members",
    "keep_xattr",
    "normalize_path",
    "parse_prune",
    "path_sort_key",
    "read_dir",
    "read_tar",
    "tar_header",
    "write_tar",
]
