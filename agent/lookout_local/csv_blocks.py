"""A CSV stream cut into blocks of whole records, so a big file is parsed a block at a time.

Why not pandas' own ``chunksize``: its C parser does not check the field count of the first row of a chunk
(pandas 2.3: ``a,b\\n1,2\\n5,6,7\\n`` read two rows at a time yields ``[5, 6]`` and drops the 7 silently),
and one ``read_csv`` of a whole file was seen doing the same at an internal ``low_memory`` boundary (row
262,144 of a two-column file). Here every block is parsed by its own ``read_csv(low_memory=False)`` of the
header, one record already parsed (the last of the block before, so that the block's own first record is
checked like any other, and a file whose rows carry an index column keeps that layout) and the block; the
caller drops that first record.

Records end at a newline outside quotes: a newline is a record boundary when the quotes before it are even in
number (RFC 4180 quoting, which pandas reads by default: ``""`` inside a quoted field keeps the parity).
A newline byte never occurs inside a UTF-8 multi-byte character, so a block never splits one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

BLOCK_BYTES = 1024 * 1024  # the C parser takes about 5 times a block's bytes while parsing it


def record_ends(buf: bytes) -> np.ndarray:
    """Offsets just after each record-ending newline of ``buf`` (which starts at a record boundary)."""
    data = np.frombuffer(buf, dtype=np.uint8)
    newline = data == 10
    if b'"' in buf:
        # uint8 wraps at 256, an even number: the parity survives
        newline &= (np.cumsum(data == 34, dtype=np.uint8) & 1) == 0
    return np.flatnonzero(newline) + 1


def _last_end(buf: bytes) -> int:
    if b'"' not in buf:
        return buf.rfind(b"\n") + 1
    ends = record_ends(buf)
    return int(ends[-1]) if len(ends) else 0


def blocks(stream: BinaryIO, block_bytes: int = BLOCK_BYTES) -> Iterator[bytes]:
    """``stream``'s bytes in blocks of whole records (about ``block_bytes`` each; one record longer than that
    is one block); the last block may lack its final newline."""
    rest = b""
    while True:
        data = stream.read(block_bytes)
        if not data:
            if rest:
                yield rest
            return
        buf = rest + data if rest else data
        cut = _last_end(buf)
        if cut:
            yield buf[:cut]
            rest = buf[cut:]
        else:
            rest = buf


def split_header(block: bytes) -> tuple[bytes, bytes]:
    """The first record of a file's first block (newline-terminated) and the records after it."""
    ends = record_ends(block) if b'"' in block else None
    cut = (int(ends[0]) if len(ends) else 0) if ends is not None else block.find(b"\n") + 1
    if not cut:
        return block + b"\n", b""
    return block[:cut], block[cut:]


def last_record(block: bytes) -> bytes:
    """The last record of ``block`` holding a field delimiter (a data row, never a blank line: pandas skips
    those), newline-terminated; b"" when there is none."""
    if b'"' in block:
        ends = [0, *record_ends(block).tolist()]
        if ends[-1] != len(block):
            ends.append(len(block))
        for start, end in zip(reversed(ends[:-1]), reversed(ends[1:]), strict=True):
            if b"," in block[start:end]:
                return block[start:end].rstrip(b"\r\n") + b"\n"
        return b""
    end = len(block)
    while end > 0:
        start = block.rfind(b"\n", 0, end - 1) + 1 if end > 1 else 0
        line = block[start:end]
        if b"," in line:
            return line.rstrip(b"\r\n") + b"\n"
        end = start
    return b""
