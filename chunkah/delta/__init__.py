"""Per-file deltas for chosen upgrade paths (docs/delta.md).

``pairing`` (pure: which old file each changed file is a delta against), ``encode``
(the encodings), ``index`` (the delta index format), ``source`` (reading an image's
files through its TOCs), ``make`` (computing a delta set on a process pool),
``artifact`` (the OCI artifact: publish, discover) and ``apply`` (the host side:
fetch by range, rebuild, verify).
"""
