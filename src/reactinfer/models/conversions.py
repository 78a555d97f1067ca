"""Conversions kept in ReAct's cache (core/cache.py): what is slow to derive from a model
file (a GGUF's tokenizer, its de-quantized torch weights) is derived once and kept under
REACT_CACHE_DIR/<kind>/<key>/ (the key: the file's sha256 and what else decides the
conversion), with the sha256 of every file of the entry in `hashes.json`, verified on
every load: a damaged or partial entry is derived again and replaced. An entry is written
whole or not at all (a directory renamed into place), and a cache that cannot be written
only costs the next load its seconds."""
from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..core.cache import cache_dir
from ..core.files import sha256_file

T = TypeVar("T")
HASHES = "hashes.json"
log = logging.getLogger(__name__)


def verified(entry: Path) -> bool:
    """The entry is there, and every file it lists has the bytes it had when written."""
    try:
        want = json.loads((entry / HASHES).read_text())
        return bool(want) and all(sha256_file(entry / f, cached=False) == h
                                  for f, h in want.items())
    except (OSError, ValueError, AttributeError):
        return False


def converted(kind: str, key: str, derive: Callable[[], T], save: Callable[[T, Path], None],
              read: Callable[[Path], T]) -> T:
    """`read` of the verified entry `key` (the file's sha256, and what else decides the
    conversion), else `derive()`, kept by `save` (into an empty directory) for the next
    time. An entry that verifies but does not read (written by another version) is
    derived again."""
    entry = cache_dir() / kind / key
    if verified(entry):
        try:
            return read(entry)
        except (OSError, ValueError) as e:
            log.info("cache entry %s does not read (%s): converted again", entry, e)
    value = derive()
    tmp = entry.with_name(f"{key}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save(value, tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        (tmp / HASHES).write_text(json.dumps({f: sha256_file(tmp / f, cached=False)
                                              for f in files}))
        if entry.exists():  # stale or damaged: replaced
            shutil.rmtree(entry)
        os.replace(tmp, entry)
    except (OSError, ValueError, RuntimeError, NotImplementedError) as e:
        log.info("not kept in the cache (%s): %s", entry, e)
        shutil.rmtree(tmp, ignore_errors=True)
    return value
