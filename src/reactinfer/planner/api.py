"""`optimize()`: run the ReAct loop, save the best model and the Pareto set as artifacts,
re-measure baseline vs best side by side, and write the report, all within the budget."""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import UserError, is_our_bug
from ..core.handle import ModelHandle
from ..models import DEFAULT_MODEL, LOAD_KEYS, load
from .actions import Action
from .budget import Budget
from .catalogue import default_actions, unavailable_actions
from .finish import finish, report_stopped
from .loop import Planner, PlanSettings


def optimize(model: Any = DEFAULT_MODEL, objective: str = "throughput", max_drop: float = 0.01,
             budget_s: float = 900.0, data: str | None = None, out: str | Path | None = None,
             resume: bool = False, actions: Sequence[Action] | None = None,
             progress: bool = True, confirm_n_eval: int | None = 1000,
             started: float | None = None, **settings: Any) -> dict[str, Any]:
    """Find the fastest (or smallest) model within `max_drop` of the original's quality on
    this machine. Returns the report data; artifacts and report files go to `out`.

    `model` is anything `load` takes: a name or path, a Hugging Face model id in the local
    cache, a `ModelHandle`, or a `torch.nn.Module` with `task=` and `tokenizer=` /
    `preprocess=` (load()'s keyword arguments are passed to it). A run on an in-memory
    model resumes (`resume=True`) when the same weights are passed again: the trial store
    keys on their fingerprint.

    `budget_s` covers the whole call, loading and report included (from `started`, a
    `time.time()` stamp, if given); it ends within `budget.margin_s(budget_s)` of it.

    `metric=` ("accuracy", "f1", or a callable(outputs, items) -> float, higher is better;
    tasks/metrics.py) bounds the relative drop of that metric against the original's on
    the held-out items instead of agreement with the original; the report shows both.
    Other keyword arguments are `PlanSettings` fields."""
    budget = Budget(budget_s, started)  # first: loading the model is part of the run
    load_kw = {k: settings.pop(k) for k in LOAD_KEYS if k in settings}
    if not isinstance(model, (str, os.PathLike)) and not hasattr(model, "state_dict") \
            and not isinstance(model, ModelHandle):
        raise TypeError(f"optimize() takes a model name or path, a ModelHandle or a "
                        f"torch.nn.Module, not {type(model).__name__}")
    s = PlanSettings(model="", objective=objective, max_drop=max_drop, budget_s=budget_s,
                     data=data, confirm_n_eval=confirm_n_eval, **settings)
    s.validate()  # before the model loads: a typo costs no minutes
    named = isinstance(model, (str, os.PathLike))
    if out is None and named:
        out = f"react-out/{Path(model).name}"
    if out is not None:
        _check_out(Path(out))
    base = named_classes(load(model, **load_kw), data)
    label, fingerprint = run_identity(model, base)
    s = dataclasses.replace(s, model=label, fingerprint=fingerprint)
    if out is None:  # an in-memory model: named after its handle
        _check_out(Path(f"react-out/{base.name}"))
    out = Path(out or f"react-out/{base.name}")
    if out.exists() and not resume and any(p.name != "trials.sqlite" for p in out.iterdir()) \
            and not (out / "trials.sqlite").exists():
        raise UserError(f"{out} exists and is not a ReAct run; choose another directory")
    planner = Planner(s, out, actions if actions is not None else default_actions(),
                      resume=resume, progress=progress, budget=budget, base=base)
    if actions is None:  # and the catalogue's actions this installation cannot run
        planner.left_out = {**unavailable_actions(task=planner.base.task), **planner.left_out}
    try:
        result = planner.run()
    except Exception as e:  # a bug of ours after the baseline: report what was measured
        if is_our_bug(e) and planner.ref_trial is not None \
                and planner.ref_trial["observation"] is not None:
            report_stopped(planner, e)
        planner.store.close()
        raise
    except BaseException:
        planner.store.close()
        raise
    return finish(planner, result)


def run_identity(model: Any, base: ModelHandle) -> tuple[str, str | None]:
    """What the report calls the model, and the fingerprint of its weights when the run
    cannot reload it by name (an in-memory module or handle): a resumed run must be given
    the same weights again, and the trial store refuses others."""
    if isinstance(model, (str, os.PathLike)):
        return str(model), None
    fingerprint = base.source.get("sha256")
    if not fingerprint:
        raise UserError("this model has no fingerprint of its weights (source sha256); load "
                        "it with reactinfer.load() first")
    return f"{base.name} ({base.source.get('kind', 'module')} {base.source.get('ref', '')})", \
        str(fingerprint)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; give a directory for the run's output")


def named_classes(base: ModelHandle, data: str | None) -> ModelHandle:
    """An image model without class names takes its --data folder's class subfolders as
    names when there is one per class the model gives (a folder of some classes only names
    nothing: ids are not names); they are kept in every artifact the run saves."""
    from ..core.handle import takes_images
    from ..data import image_classes
    from ..models.image_checks import model_classes, with_labels

    if not takes_images(base.task) or data is None or getattr(base.tokenizer, "labels", None):
        return base
    names = image_classes(data)
    return with_labels(base, names) if names and len(names) == model_classes(base) else base
