"""Files on disk: content hashes, and which formats are safe to load (no pickle)."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
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


# Hashes of files already read in this process, so naming a large source model again (a
# built-in's weights, a GGUF file) does not read it again. The key is the file's identity
# and every timestamp the kernel keeps: a rewrite in place changes ctime even when size and
# mtime are put back (os.utime cannot set ctime). Bounded: a long-lived server that loads
# many files keeps only the most recent.
_HASH_CACHE: OrderedDict[tuple[int, int, int, int, int], str] = OrderedDict()
HASH_CACHE_SIZE = 256
_HASH_LOCK = threading.Lock()  # server threads load variants side by side


def _hash(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: str | Path, cached: bool = True) -> str:
    """The file's sha256. `cached=False` reads the bytes whatever the cache holds: what
    verifies a file (an artifact, a cached conversion) hashes what it verifies."""
    p = Path(path)
    if not cached:
        return _hash(p)
    st = p.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    with _HASH_LOCK:
        digest = _HASH_CACHE.get(key)
        if digest is not None:
            _HASH_CACHE.move_to_end(key)
            return digest
    digest = _hash(p)  # outside the lock: hashing a large file must not hold other loads
    with _HASH_LOCK:
        _HASH_CACHE[key] = digest
        if len(_HASH_CACHE) > HASH_CACHE_SIZE:
            _HASH_CACHE.popitem(last=False)
    return digest


def sha256_files(files: Sequence[Path]) -> str:
    """One digest for a set of files (sharded weights): the file's own for one file."""
    if len(files) == 1:
        return sha256_file(files[0])
    return hashlib.sha256("".join(sha256_file(f) for f in files).encode()).hexdigest()
