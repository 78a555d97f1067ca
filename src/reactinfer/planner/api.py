"""`optimize()`: run the ReAct loop, save the best model and the Pareto set as artifacts,
re-measure baseline vs best side by side, and write the report."""
from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..core.artifact import save_artifact
from ..core.errors import UserError
from ..core.hardware import hardware_profile
from ..data import texts_for
from ..measure.harness import measure
from ..tasks import get_task
from .actions import Action, Candidate
from .catalogue import default_actions
from .loop import Planner, PlanSettings, gain, within_bound
from .report import pareto_front, write_report

MAX_VARIANTS = 4


def optimize(model: str = "minilm", objective: str = "throughput", max_drop: float = 0.01,
             budget_s: float = 900.0, data: str | None = None, out: str | Path | None = None,
             resume: bool = False, actions: Sequence[Action] | None = None,
             progress: bool = True, confirm_n_eval: int | None = 1000,
             **settings: Any) -> dict[str, Any]:
    """Find the fastest (or smallest) model within `max_drop` of the original's quality on
    this machine. Returns the report data; artifacts and report files go to `out`."""
    if not isinstance(model, str):
        raise UserError("optimize() takes a model name or path (the store must be able to "
                        "reload it on --resume)")
    out = Path(out or f"react-out/{Path(model).name}")
    s = PlanSettings(model=model, objective=objective, max_drop=max_drop, budget_s=budget_s,
                     data=data, **settings)
    if out.exists() and not resume and any(p.name != "trials.sqlite" for p in out.iterdir()) \
            and not (out / "trials.sqlite").exists():
        raise UserError(f"{out} exists and is not a ReAct run; choose another directory")
    planner = Planner(s, out, actions if actions is not None else default_actions(),
                      resume=resume, progress=progress)
    result = planner.run()

    base_obs = result["baseline"]["observation"]
    best_trial = result["best"]
    front = pareto_front(result["trials"], objective)
    in_bound = [t for t in front if within_bound(planner.base.task, t["observation"]["quality"],
                                                 max_drop)[0]]
    # Variants for the serving ladder: best quality first; the chosen best is always one.
    variants = in_bound[:MAX_VARIANTS - 1]
    if all(t["key"] != best_trial["key"] for t in variants):
        variants.append(best_trial)
    vdir = out / "variants"
    if vdir.exists():
        shutil.rmtree(vdir)
    handles = {}
    for i, t in enumerate(variants):
        handle = planner.builder.build(Candidate.from_json(t["candidate"])) if t["parent"] \
            else planner.base
        handles[t["key"]] = handle
        path = vdir / f"{i:02d}-{t['action'].replace(' ', '_').replace('/', '-')}"
        save_artifact(handle, path, metrics=t["observation"], overwrite=True)
        t["artifact"] = str(path.relative_to(out))
    best_handle = handles[best_trial["key"]]
    save_artifact(best_handle, out / "best", metrics=best_trial["observation"], overwrite=True)

    confirm = None
    if confirm_n_eval:  # the loop used a subset; re-measure the pair on the full held-out set
        texts = texts_for("eval", data, confirm_n_eval)
        task = get_task(planner.base.task)
        b, b_res = measure(planner.base, texts, s.batch_size, s.latency_runs * 2, progress=False)
        o, o_res = measure(best_handle, texts, s.batch_size, s.latency_runs * 2, progress=False)
        b["quality"], o["quality"] = task.compare(b_res, b_res), task.compare(b_res, o_res)
        confirm = {"n_eval": len(texts), "baseline": b, "best": o,
                   "gain": gain(o, b, objective)}

    g = gain(best_trial["observation"], base_obs, objective)
    if best_trial["key"] == result["baseline"]["key"]:
        verdict = "no step paid on this machine: the original model is the best (best effort)"
    elif s.target and g < s.target:
        verdict = f"best effort: ×{g:.2f} on {objective}, short of the ×{s.target} target"
    else:
        verdict = f"×{g:.2f} on {objective} within the quality bound"
    data_out = {
        "model": model, "task": planner.base.task, "objective": objective, "max_drop": max_drop,
        "quality_score": get_task(planner.base.task).quality_name,
        "hardware": hardware_profile().to_dict(), "hardware_summary": hardware_profile().summary(),
        "settings": s.__dict__, "stop": result["stop"], "seconds": result["seconds"],
        "reused": result["reused"], "verdict": verdict,
        "best_recipe": Candidate.from_json(best_trial["candidate"]).describe(),
        "baseline": result["baseline"], "best": best_trial, "trials": result["trials"],
        "pareto": front, "variants": [t["artifact"] for t in variants],
        "best_artifact": "best", "confirm": confirm,
    }
    write_report(out, data_out)
    planner.store.close()
    return data_out
