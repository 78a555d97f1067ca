"""ReAct's own cache directory: things built once on this machine and reused (the corpus,
converted weights, tokenizers read out of GGUF files), each verified where it is read."""
from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "REACT_CACHE_DIR"


def cache_dir() -> Path:
    """$REACT_CACHE_DIR, else ~/.cache/reactinfer (not created here: writers create what
    they write, and a read-only home only costs the rebuild)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "reactinfer")
