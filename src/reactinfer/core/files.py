"""Files on disk: content hashes, and which formats are safe to load (no pickle)."""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

# Formats that can carry pickled code: never loaded, never stored in an artifact.
UNSAFE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy")



def is_unsafe(path: Path) -> bool:
    """Whether a file may carry pickled code. One `.bin` is safe: OpenVINO IR weights, raw
    tensor bytes beside the same-named `.xml` that describes them (OpenVINO reads them as
    bytes; nothing unpickles them)."""
    if path.suffix == ".bin" and path.with_suffix(".xml").is_file():
        return False
    return path.suffix in UNSAFE_SUFFIXES


_HASH_CACHE: dict[tuple[str, int, float], str] = {}


def sha256_file(path: str | Path) -> str:
    """The file's sha256, cached by (path, size, mtime) so re-verifying is free."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def sha256_files(files: Sequence[Path]) -> str:
    """One digest for a set of files (sharded weights): the file's own for one file."""
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
