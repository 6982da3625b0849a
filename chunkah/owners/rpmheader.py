"""Parse one RPM header blob as stored in ``rpmdb.sqlite`` (no lead, no magic).

Layout (big-endian): ``il`` (uint32 entry count), ``dl`` (uint32 data length),
``il`` index entries of 16 bytes each (int32 tag, uint32 type, int32 offset,
uint32 count), then ``dl`` bytes of data that the offsets point into. Only the
tags a caller asks for are decoded; every offset and count is bounds-checked.
"""

from __future__ import annotations

import struct
from collections.abc import Collection

__all__ = [
    "HeaderError",
    "HeaderValue",
    "parse_header",
]

# Tag numbers (rpmtag.h).
NAME, VERSION, RELEASE, EPOCH, BUILDTIME, ARCH = 1000, 1001, 1002, 1003, 1006, 1022
OLDFILENAMES, FILESIZES, FILEMODES, FILEDIGESTS, FILEFLAGS = 1027, 1028, 1030, 1035, 1037
SOURCERPM, CHANGELOGTIME = 1044, 1080
DIRINDEXES, BASENAMES, DIRNAMES = 1116, 1117, 1118
LONGFILESIZES, FILEDIGESTALGO = 5008, 5011

# Types.
_NULL, _CHAR, _INT8, _INT16, _INT32, _INT64 = 0, 1, 2, 3, 4, 5
_STRING, _BIN, _STRING_ARRAY, _I18NSTRING = 6, 7, 8, 9
_INT_FORMATS = {_CHAR: "B", _INT8: "B", _INT16: "H", _INT32: "I", _INT64: "Q"}

MAX_ENTRIES = 1 << 16
MAX_DATA = 256 << 20

HeaderValue = tuple[int, ...] | list[bytes] | bytes


class HeaderError(ValueError):
    """The blob is not a well-formed RPM header; the message says where it breaks."""


def parse_header(blob: bytes, wanted: Collection[int]) -> dict[int, HeaderValue]:
    """Decode the ``wanted`` tags of a header blob.

    Integers come back as tuples, STRING and BIN as bytes, STRING_ARRAY and
    I18NSTRING as lists of bytes.
    """
    n = len(blob)
    if n < 8:
        raise HeaderError(f"header of {n} bytes is shorter than its 8-byte preamble")
    il, dl = struct.unpack_from(">II", blob, 0)
    if il == 0 or il > MAX_ENTRIES or dl > MAX_DATA:
        raise HeaderError(f"implausible header sizes: {il} entries, {dl} data bytes")
    start = 8 + 16 * il
    if start + dl > n:
        raise HeaderError(f"header claims {start + dl} bytes but the blob has {n}")
    out: dict[int, HeaderValue] = {}
    for i in range(il):
        tag, typ, off, cnt = struct.unpack_from(">iIiI", blob, 8 + 16 * i)
        if tag not in wanted:
            continue
        if off < 0 or off > dl:
            raise HeaderError(f"tag {tag}: offset {off} outside the data ({dl} bytes)")
        pos = start + off
        end = start + dl
        if typ in _INT_FORMATS:
            size = struct.calcsize(_INT_FORMATS[typ])
            if cnt > (end - pos) // size:
                raise HeaderError(f"tag {tag}: {cnt} values overrun the data")
            out[tag] = struct.unpack_from(f">{cnt}{_INT_FORMATS[typ]}", blob, pos)
        elif typ == _BIN:
            if cnt > end - pos:
                raise HeaderError(f"tag {tag}: {cnt} bytes overrun the data")
            out[tag] = blob[pos : pos + cnt]
        elif typ in (_STRING, _STRING_ARRAY, _I18NSTRING):
            if typ == _STRING:
                cnt = 1
            if cnt > end - pos:
                raise HeaderError(f"tag {tag}: {cnt} strings overrun the data")
            strings = []
            for _ in range(cnt):
                nul = blob.find(b"\0", pos, end)
                if nul < 0:
                    raise HeaderError(f"tag {tag}: unterminated string")
                strings.append(blob[pos:nul])
                pos = nul + 1
            out[tag] = strings[0] if typ == _STRING else strings
        elif typ == _NULL:
            continue
        else:
            raise HeaderError(f"tag {tag}: unknown type {typ}")
    return out
