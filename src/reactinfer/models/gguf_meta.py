"""The scalar metadata of a GGUF file's header, read without gguf-py.

gguf-py's GGUFReader parses every array of the header (a 49k-token vocabulary and its
merges: seconds on a small CPU) to answer one key; this walks the header once, skipping
arrays by their lengths, and keeps the scalar values only."""
from __future__ import annotations

import mmap
import struct
from pathlib import Path
from typing import Any

from ..core.errors import UserError

# GGUF value types → struct format (little-endian); 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def gguf_scalars(path: str | Path) -> dict[str, Any]:
    """{key: value} for every number, bool and string of the file's metadata."""
    path = Path(path)
    if path.stat().st_size < 24:  # shorter than the fixed part of the header
        raise UserError(f"{path} is not a GGUF file (too short for a GGUF header)")
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        if buf[:4] != b"GGUF":
            raise UserError(f"{path} is not a GGUF file (no GGUF magic at its start)")
        try:
            return _walk(buf)
        except (struct.error, IndexError, UnicodeDecodeError):
            raise UserError(f"{path} has a damaged GGUF header") from None


def _walk(buf: mmap.mmap) -> dict[str, Any]:
    pos = 24  # magic, version (u32), tensor count (u64), metadata count (u64)
    (n_kv,) = struct.unpack_from("<Q", buf, 16)
    out: dict[str, Any] = {}

    def string(at: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", buf, at)
        return bytes(buf[at + 8:at + 8 + n]).decode("utf-8"), at + 8 + n

    def skip(vtype: int, at: int, count: int) -> int:
        if vtype in _SCALARS:
            return at + count * struct.calcsize(_SCALARS[vtype])
        if vtype not in (_STRING, _ARRAY):
            raise struct.error(f"unknown GGUF value type {vtype}")
        for _ in range(count):  # strings or nested arrays: each carries its length
            if vtype == _STRING:
                at += 8 + struct.unpack_from("<Q", buf, at)[0]
            else:
                sub, n = struct.unpack_from("<IQ", buf, at)
                at = skip(sub, at + 12, n)
        return at

    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        if vtype in _SCALARS:
            (out[key],) = struct.unpack_from(_SCALARS[vtype], buf, pos)
            pos += struct.calcsize(_SCALARS[vtype])
        elif vtype == _STRING:
            out[key], pos = string(pos)
        elif vtype == _ARRAY:
            sub, n = struct.unpack_from("<IQ", buf, pos)
            pos = skip(sub, pos + 12, n)
        else:
            raise struct.error(f"unknown GGUF value type {vtype}")
    return out
