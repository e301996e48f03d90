"""Reading the files a configuration names, with one plain sentence per way a file can be unusable.

``read_text`` refuses anything that is not a readable regular UTF-8 text file (missing, a directory, a device
or FIFO, permission denied, too large, binary, not UTF-8) with a ConfigError naming the file; it never lets an
OSError or UnicodeDecodeError (and its traceback) through. ``toml_problems`` lists values TOML allows but no
key of an asset file accepts (dates and times, nan and inf).
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import errno
import math
import os
import stat
from pathlib import Path
from typing import Any

from agent.core.errors import ConfigError

MAX_BYTES = 4 << 20  # an asset file is a few KiB; anything this big is the wrong file


def describe_read_error(exc: BaseException, path: Path | str | None = None) -> str:
    """A sentence for why ``path`` could not be read (no errno numbers, no Python wording)."""
    where = f"{path}: " if path is not None else ""
    if isinstance(exc, UnicodeDecodeError):
        return (f"{where}not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); allowed: "
                "a UTF-8 text file")
    if isinstance(exc, csv.Error):
        return f"{where}not a readable CSV file ({exc}); allowed: UTF-8 CSV text"
    if isinstance(exc, FileNotFoundError):
        return f"no such file {path or exc.filename}"
    if isinstance(exc, IsADirectoryError):
        return f"{where}is a directory, not a file"
    if isinstance(exc, PermissionError):
        return f"{where}permission denied (the agent's user cannot read it)"
    if isinstance(exc, OSError):
        reason = exc.strerror or os.strerror(exc.errno or errno.EIO)
        return f"{where}cannot read: {reason}"
    return f"{where}{exc}"


def read_text(path: Path, *, what: str = "file") -> str:
    """The UTF-8 text of the regular file ``path`` (a leading BOM is dropped). Raises ConfigError."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"{what} not found", file=str(path)) from None
    except OSError as exc:
        raise ConfigError(describe_read_error(exc), file=str(path)) from None
    if stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"is a directory, not an {what}", file=str(path))
    if not stat.S_ISREG(info.st_mode):
        raise ConfigError(f"not a regular file (a device, FIFO or socket); allowed: an {what} (TOML text)",
                          file=str(path))
    if info.st_size > MAX_BYTES:
        raise ConfigError(f"{info.st_size} bytes: too large for an {what} (at most {MAX_BYTES} bytes)",
                          file=str(path))
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(describe_read_error(exc), file=str(path)) from None
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise ConfigError(f"a binary file (NUL byte at offset {nul}), not an {what}; allowed: "
                          "UTF-8 TOML text", file=str(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(describe_read_error(exc), file=str(path)) from None


def check_text_file(path: Path, head_bytes: int = 64 << 10) -> None:
    """Refuse a data file (a historian CSV) that is binary or not UTF-8, judged by its first ``head_bytes``.
    Raises OSError for an unreadable file, UnicodeDecodeError, or csv.Error for a NUL byte."""
    with open(path, "rb") as fh:
        head = fh.read(head_bytes)
    nul = head.find(b"\x00")
    if nul >= 0:
        raise csv.Error(f"a binary file: NUL byte at offset {nul}")
    codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < head_bytes)


def toml_problems(data: Any, loc: str = "") -> list[str]:
    """Values no asset-file key accepts: TOML dates/times (quote them) and nan/inf."""
    out: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            out += toml_problems(value, f"{loc}.{key}" if loc else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            out += toml_problems(value, f"{loc}[{i}]")
    elif isinstance(data, dt.date | dt.time):
        out.append(f"{loc}: got a TOML date/time ({data.isoformat()}); allowed: a quoted ISO 8601 string")
    elif isinstance(data, float) and not math.isfinite(data):
        out.append(f"{loc}: got {data!r} (a float); allowed: a finite number")
    return out
