"""The reference model's outputs on the eval texts, measured once and kept on disk.

Every trial's quality is a comparison with the same reference outputs, so they are measured
once per run and saved in the run directory: `reference_outputs.npz` (numpy arrays only,
read back with `allow_pickle=False`) and `reference_outputs.json` (what they are for, and
the npz file's sha256). They are reused only when the key matches (model, its source and
transforms, backend, max length, eval batch size, sha256 of the texts) and the file's hash
verifies; otherwise they are measured again and the cache rewritten.
"""
from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..core.handle import ModelHandle
from ..data import items_sha256
from ..tasks.base import Results

RESULTS_FILE = "reference_outputs.npz"
META_FILE = "reference_outputs.json"


def reference_key(handle: ModelHandle, texts: Sequence[str], batch_size: int) -> dict[str, Any]:
    """What the reference outputs depend on."""
    texts_sha = items_sha256(texts)
    return json.loads(json.dumps({
        "model": handle.name, "task": handle.task, "source": handle.source,
        "transforms": list(handle.transforms), "backend": handle.backend,
        "backend_options": handle.backend_options, "max_length": handle.max_length,
        "batch_size": batch_size, "n_texts": len(texts), "texts_sha256": texts_sha,
    }, default=str, sort_keys=True))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()  # fresh: a rewrite must show


def save_reference(directory: Path, key: dict[str, Any], results: Results,
                   seconds: float) -> dict[str, Any]:
    """Write the outputs and their record; returns the record (what the report says)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RESULTS_FILE
    with open(path, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in results.items()})  # type: ignore[arg-type]
    meta = {"key": key, "sha256": _sha256(path), "seconds": seconds, "file": RESULTS_FILE}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1))
    return {"cache": "measured", "seconds": seconds, "file": str(path)}


def load_reference(directory: Path, key: dict[str, Any]) -> tuple[Results | None, str]:
    """The cached outputs for `key`, or None and why not: 'miss' (none, or for another
    key) or 'corrupt' (the hash does not verify, or the file does not read)."""
    path, meta_path = directory / RESULTS_FILE, directory / META_FILE
    if not path.exists() or not meta_path.exists():
        return None, "miss"
    try:
        meta = json.loads(meta_path.read_text())
    except ValueError:
        return None, "corrupt"
    if meta.get("key") != key:
        return None, "miss"
    if meta.get("sha256") != _sha256(path):
        return None, "corrupt"
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}, f"hit (measured once in {meta['seconds']:.1f} s)"
    except (ValueError, OSError) as e:
        return None, f"corrupt ({type(e).__name__})"


def cached_reference(directory: Path, key: dict[str, Any], compute: Callable[[], Results]
                     ) -> tuple[Results, dict[str, Any]]:
    """The outputs for `key` from the cache, or from `compute()` (then saved). The record
    says which, and how long measuring took."""
    results, status = load_reference(directory, key)
    if results is not None:
        meta = json.loads((directory / META_FILE).read_text())
        return results, {"cache": "reused", "seconds": meta["seconds"],
                         "file": str(directory / RESULTS_FILE)}
    t0 = time.perf_counter()
    results = compute()
    info = save_reference(directory, key, results, time.perf_counter() - t0)
    if status != "miss":
        info["note"] = f"the cached reference outputs were {status}: measured again"
    return results, info


def describe(info: dict[str, Any] | None) -> str:
    """One line for a report."""
    if not info:
        return "reference outputs: not cached"
    how = "reused from the run directory" if info["cache"] == "reused" else "cached"
    return (f"reference outputs: {how}, measured once in {info['seconds']:.1f} s"
            + (f" ({info['note']})" if info.get("note") else ""))
