"""ReAct's own cache directory: what is slow to derive and the same every time (the corpus,
a checkpoint converted to safetensors, a GGUF's tokenizer and its de-quantized weights, a
SmoothQuant tuning) is derived once on this machine and kept.

An entry is a directory, REACT_CACHE_DIR/<kind>/<key>/ (the key: a hash of what decides
the result, e.g. the source file's sha256 and the versions that derive it), holding the
files `save` wrote and `hashes.json`, the sha256 of each. It is verified on every read: a
damaged or partial entry is derived again and replaced. It is written whole or not at all
(a directory renamed into place), and a cache that cannot be written only costs the next
use its seconds."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .files import sha256_file

CACHE_ENV = "REACT_CACHE_DIR"
HASHES = "hashes.json"
T = TypeVar("T")
log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """$REACT_CACHE_DIR, else ~/.cache/reactinfer (not created here: writers create what
    they write, and a read-only home only costs the rebuild)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reactinfer")


def entry_dir(kind: str, key: str) -> Path:
    return cache_dir() / kind / key


def verified(entry: Path) -> bool:
    """The entry is there, and every file it lists has the bytes it had when written."""
    try:
        want = json.loads((entry / HASHES).read_text())
        return bool(want) and all(sha256_file(entry / f, cached=False) == h
                                  for f, h in want.items())
    except (OSError, ValueError, AttributeError):
        return False


def read_kept(kind: str, key: str, read: Callable[[Path], T]) -> T | None:
    """`read` of the verified entry, else None (none, damaged, or one that does not read:
    written by another version)."""
    entry = entry_dir(kind, key)
    if not verified(entry):
        return None
    try:
        return read(entry)
    except Exception as e:  # noqa: BLE001  (whatever a reader raises: derived again)
        log.info("cache entry %s does not read (%s): derived again", entry, e)
        return None


def keep(kind: str, key: str, save: Callable[[Path], object]) -> None:
    """A new entry: `save` writes its files into an empty directory, which replaces the
    entry whole once their hashes are recorded; nothing is kept where that fails."""
    entry = entry_dir(kind, key)
    tmp: Path | None = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp", dir=entry.parent))  # one per writer
        save(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        (tmp / HASHES).write_text(json.dumps({f: sha256_file(tmp / f, cached=False)
                                              for f in files}))
        if entry.exists():  # stale, damaged, or unreadable here: replaced
            shutil.rmtree(entry)
        os.replace(tmp, entry)
        tmp = None
    except OSError as e:  # a read-only or full disk
        log.info("not kept in the cache (%s): %s", entry, e)
    except Exception:  # noqa: BLE001  (a writer's failure costs the next use, not this one)
        log.warning("not kept in the cache (%s)", entry, exc_info=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def kept(kind: str, key: str, derive: Callable[[], T], save: Callable[[T, Path], object],
         read: Callable[[Path], T]) -> T:
    """The verified entry `key` of `kind` as `read` reads it, else `derive()`, kept by
    `save` (into an empty directory) for the next time."""
    value = read_kept(kind, key, read)
    if value is not None:
        return value
    value = derive()
    keep(kind, key, lambda d: save(value, d))
    return value
