"""`optimize()`: run the ReAct loop, save the best model and the Pareto set as artifacts,
re-measure baseline vs best side by side, and write the report, all within the budget."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from .actions import Action
from .budget import Budget
from .catalogue import default_actions, unavailable_actions
from .finish import finish
from .loop import Planner, PlanSettings


def optimize(model: str = "minilm", objective: str = "throughput", max_drop: float = 0.01,
             budget_s: float = 900.0, data: str | None = None, out: str | Path | None = None,
             resume: bool = False, actions: Sequence[Action] | None = None,
             progress: bool = True, confirm_n_eval: int | None = 1000,
             started: float | None = None, **settings: Any) -> dict[str, Any]:
    """Find the fastest (or smallest) model within `max_drop` of the original's quality on
    this machine. Returns the report data; artifacts and report files go to `out`.

    `budget_s` covers the whole call, loading and report included (from `started`, a
    `time.time()` stamp, if given); it ends within `budget.margin_s(budget_s)` of it."""
    budget = Budget(budget_s, started)  # first: loading the model is part of the run
    if not isinstance(model, str):
        raise UserError("optimize() takes a model name or path (the store must be able to "
                        "reload it on --resume)")
    out = Path(out or f"react-out/{Path(model).name}")
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; give a directory for the run's output")
    s = PlanSettings(model=model, objective=objective, max_drop=max_drop, budget_s=budget_s,
                     data=data, confirm_n_eval=confirm_n_eval, **settings)
    if out.exists() and not resume and any(p.name != "trials.sqlite" for p in out.iterdir()) \
            and not (out / "trials.sqlite").exists():
        raise UserError(f"{out} exists and is not a ReAct run; choose another directory")
    planner = Planner(s, out, actions if actions is not None else default_actions(),
                      resume=resume, progress=progress, budget=budget)
    if actions is None:  # and the catalogue's actions this installation cannot run
        planner.left_out = {**unavailable_actions(task=planner.base.task), **planner.left_out}
    try:
        result = planner.run()
    except BaseException:
        planner.store.close()
        raise
    return finish(planner, result)
