"""The run's models on disk: the best and the variant ladder, saved as artifacts tagged
with the trial they came from, so that a resumed run reuses what a finished run saved
instead of rebuilding it (a rebuild can mean minutes of recovery distillation)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from ..core.artifact import read_manifest
from ..core.errors import ArtifactError

TRIAL_KEY = "planner_trial"  # in the manifest's metrics: the key of the trial it holds


def tagged_metrics(trial: dict[str, Any]) -> dict[str, Any]:
    """The metrics an artifact of `trial` carries: its measurements and its trial key."""
    return {**trial["observation"], TRIAL_KEY: trial["key"]}


def saved_key(path: Path) -> str | None:
    """The trial a saved artifact holds, or None (not an artifact, not from a run)."""
    if not (path / "manifest.json").is_file():
        return None
    try:
        metrics = read_manifest(path).get("metrics") or {}
    except ArtifactError:
        return None
    key = metrics.get(TRIAL_KEY)
    return key if isinstance(key, str) else None


def saved_artifacts(*paths: Path) -> dict[str, Path]:
    """Trial key → the first of `paths` that holds it."""
    found: dict[str, Path] = {}
    for p in paths:
        key = saved_key(p)
        if key is not None and key not in found:
            found[key] = p
    return found


def link_copy(src: Path, dst: Path) -> None:
    """Copy an artifact by hard links where the file system allows: the variant that is
    also the best costs no second write. Artifacts are never changed in place (a save
    writes a new directory and renames it), so sharing the files is safe."""
    if dst.exists():
        shutil.rmtree(dst)
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
