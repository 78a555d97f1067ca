"""The run's models on disk: the best and the variant ladder, saved as artifacts tagged
with the trial they came from, so that a resumed run reuses what a finished run saved
instead of rebuilding it (a rebuild can mean minutes of recovery distillation)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.artifact import read_manifest, save_artifact
from ..core.errors import ArtifactError
from ..core.handle import ModelHandle
from .record import Trial

TRIAL_KEY = "planner_trial"  # in the manifest's metrics: the key of the trial it holds


def tagged_metrics(trial: Trial) -> dict[str, Any]:
    """The metrics an artifact of `trial` carries: its measurements and its trial key."""
    return {**(trial.observation or {}), TRIAL_KEY: trial.key}


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


def save_trial(handle: ModelHandle, path: Path, trial: Trial,
               items: Sequence[Any]) -> str | None:
    """Save a trial's model as an artifact tagged with its trial; a user's plain torch
    module also gets its ONNX graph, checked on `items` (with_graph), so the artifact runs
    without the user's class. Returns what with_graph says, for the report's notes."""
    handle, note = with_graph(handle, items)
    save_artifact(handle, path, metrics=tagged_metrics(trial), overwrite=True)
    return note


# -- a plain torch module's graph ------------------------------------------------------------
GRAPH_ITEMS = 16  # held-out items the graph is checked on against the module
GRAPH_RTOL = 1e-3  # largest |graph − module| allowed, relative to the module's largest |output|


def with_graph(handle: ModelHandle, items: Sequence[Any]) -> tuple[ModelHandle, str | None]:
    """A handle of a user's plain torch module (no `save_pretrained`, so an artifact holds
    only its weights and loading needs the user's class) with its ONNX graph added, checked
    equal to the module on `items`: `react serve` and `react batch` then run the artifact
    without the class. Any other handle comes back as it is. The text says what was done,
    or why no graph was added (the artifact is still saved, torch-only)."""
    if not needs_graph(handle):
        return handle, None
    from ..backends import to_backend
    from ..backends.onnxruntime import MODEL_FILE

    try:
        graph = to_backend(handle, "onnxruntime", precision="fp32")
        diff = _max_rel_diff(handle, graph, list(items)[:GRAPH_ITEMS])
    except (RuntimeError, ValueError, TypeError, OSError) as e:
        return handle, f"no ONNX graph saved beside the torch weights: {type(e).__name__}: {e}"
    if diff > GRAPH_RTOL:
        return handle, (f"no ONNX graph saved beside the torch weights: it differs from the "
                        f"module by {diff:.2g} (relative) on held-out items")
    return handle.derive(files={**handle.files, MODEL_FILE: graph.files[MODEL_FILE]}), \
        f"ONNX graph saved beside the torch weights (max relative difference {diff:.1e})"


def needs_graph(handle: ModelHandle) -> bool:
    """A torch-run plain module whose artifact would hold weights only."""
    return (handle.model is not None and handle.backend.startswith("torch")
            and not hasattr(handle.model, "save_pretrained") and handle.replay_from is None
            and not handle.files)


def _max_rel_diff(a: ModelHandle, b: ModelHandle, items: list[Any]) -> float:
    import numpy as np

    from ..tasks import get_task

    task = get_task(a.task)
    ra, rb = (task.evaluate(h.runner(), h.tokenizer, items, 8, h.max_length) for h in (a, b))
    worst = 0.0
    for key, x in ra.items():
        if key in rb and np.issubdtype(np.asarray(x).dtype, np.floating):
            scale = float(np.max(np.abs(x))) or 1.0
            worst = max(worst, float(np.max(np.abs(np.asarray(rb[key]) - x))) / scale)
    return worst
