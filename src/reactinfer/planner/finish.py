"""The end of a run: save the best model and the variant ladder, re-measure baseline vs
best side by side, and write the report, within what is left of the time budget.

Whatever goes wrong here, the report is still written from what was measured (the trials
are in the store already), and then the error is raised."""
from __future__ import annotations

import shutil
import sys
from typing import Any

from ..core.errors import UserError
from ..core.handle import ModelHandle
from ..core.hardware import hardware_profile
from ..measure.harness import measure
from ..models import load
from ..tasks import get_task, within_bound
from ..tasks.metrics import METRIC_KEY, metric_name
from .actions import Candidate
from .artifacts import link_copy, save_trial, saved_artifacts, saved_key
from .budget import CONFIRM_FILL, REPORT_S, build_s, confirm_cost, margin_s
from .endplan import ladder, save_s
from .genspeed import generation_figures
from .heldout import confirm_items
from .loop import STORE_NAME, Planner, default_n_eval
from .objective import gain
from .record import Decision, Trial
from .report import item_noun, pareto_table, write_report

# what saving or re-measuring a model may raise; the run's report is written regardless
_SAVE_ERRORS = (OSError, RuntimeError, ValueError, TypeError, NotImplementedError)


def _pareto(planner: Planner, result: dict[str, Any]) -> list[Trial]:
    for t in result["trials"]:  # the bound the loop decided with, for the table and plots
        if t.observation:
            t.within_bound, t.bound = within_bound(
                planner.base.task, t.observation["quality"], planner.s.max_drop)
    return pareto_table(result["trials"], planner.s.objective)


def finish(planner: Planner, result: dict[str, Any]) -> dict[str, Any]:
    """Save, re-measure and report; returns the report data."""
    pareto = _pareto(planner, result)
    best = result["best"]
    state: dict[str, Any] = {"best_artifact": None, "variants": [], "confirm": None,
                             "notes": list(planner.save_notes), "errors": []}
    try:
        handle = _best_handle(planner, best)
        _save_best(planner, best, handle, state)
        _save_variants(planner, ladder(pareto, best), best, state)
        state["confirm"] = _confirm(planner, best, handle, state)
        best = _step_back_while_outside(planner, result, best, state)
    except BaseException as e:  # noted in the report, which is written below; then raised
        state["errors"].append(f"{type(e).__name__}: {e}")
        e.add_note(f"the report of the measured trials is in {planner.out / 'report.md'}, "
                   f"the trials in {planner.out / STORE_NAME}")
        raise
    finally:
        data = _write_report_keeping_the_error(planner, result, pareto, state)
    return data


def report_stopped(planner: Planner, error: BaseException) -> None:
    """A run that a bug of ours stopped after the baseline: the report of the trials
    measured so far is written (nothing is saved: the state the bug left is not trusted),
    and the error, raised by the caller, says where it is."""
    kept = [t for t in planner.log if t.decision is Decision.KEPT]
    best = kept[-1] if kept else planner.ref_trial
    assert best is not None, "report_stopped is for a run whose baseline was measured"
    result = {"stop": f"stopped by an error in ReAct itself: {type(error).__name__}: {error}",
              "end_plan": None, "baseline": planner.ref_trial, "best": best,
              "trials": planner.log, "reused": planner.reused,
              "reference_outputs": planner.ref_info, "seconds": planner.budget.elapsed()}
    state: dict[str, Any] = {"best_artifact": None, "variants": [], "confirm": None,
                             "notes": list(planner.save_notes),
                             "errors": [f"{type(error).__name__}: {error}"]}
    # called while `error` is in flight: a report that fails too is noted on it
    _write_report_keeping_the_error(planner, result, _pareto(planner, result), state)
    error.add_note(f"the report of the measured trials is in {planner.out / 'report.md'}, "
                   f"the trials in {planner.out / STORE_NAME}")


def _write_report_keeping_the_error(planner: Planner, result: dict[str, Any],
                                    pareto: list[Trial], state: dict[str, Any]
                                    ) -> dict[str, Any]:
    """Write the report and close the store, whatever happened. A report that fails while
    another error is on its way out is noted on that error rather than replacing it."""
    in_flight = sys.exc_info()[1]
    try:
        data = report_data(planner, result, pareto, state)
        write_report(planner.out, data, clock=planner.budget.elapsed)
    except Exception as e:
        if in_flight is None:
            raise
        in_flight.add_note(f"writing the report failed too: {type(e).__name__}: {e}")
        data = {}
    finally:
        planner.store.close()
    return data


# -- saving ----------------------------------------------------------------------------------

def _at_hand(planner: Planner, trial: Trial) -> ModelHandle | None:
    """The trial's model if it needs no rebuild: the original, or still in the cache."""
    if not trial.parent:
        return planner.base
    if trial.key in planner.builder.built:
        return planner.builder.build(Candidate.from_json(trial.candidate))
    return None


def _best_handle(planner: Planner, best: Trial) -> ModelHandle:
    handle = _at_hand(planner, best)
    if handle is not None:
        return handle
    if best.key in planner.saved:  # saved by an earlier run: load, do not rebuild
        return load(planner.saved[best.key])
    return planner.builder.build(Candidate.from_json(best.candidate))


def _save_best(planner: Planner, best: Trial, handle: ModelHandle,
               state: dict[str, Any]) -> None:
    path = planner.out / "best"
    if saved_key(path) == best.key:
        pass
    elif best.key in planner.saved and planner.saved[best.key].exists():
        link_copy(planner.saved[best.key], path)  # saved while the run went on
    else:
        _save(planner, handle, path, best, state)
    state["best_artifact"] = "best"


def _save_variants(planner: Planner, variants: list[Trial], best: Trial,
                   state: dict[str, Any]) -> None:
    out = planner.out
    vdir, old = out / "variants", out / ".variants.old"
    if old.exists():
        shutil.rmtree(old)
    if vdir.exists():  # kept aside: a variant saved by an earlier run is moved, not rebuilt
        vdir.rename(old)
    on_disk = saved_artifacts(*sorted(old.glob("*")))
    vdir.mkdir(parents=True)
    try:
        for t in variants:
            path = vdir / _variant_name(len(state["variants"]), t)
            try:
                saved = _save_variant(planner, t, best, path, on_disk, state)
            except _SAVE_ERRORS as e:
                shutil.rmtree(path, ignore_errors=True)
                state["notes"].append(f"variant {t.action} not saved: {type(e).__name__}: {e}")
                continue
            if saved:
                t.artifact = str(path.relative_to(out))
                state["variants"].append(t.artifact)
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _variant_name(i: int, t: Trial) -> str:
    return f"{i:02d}-" + t.action.replace(" ", "_").replace("/", "-")


def _save_variant(planner: Planner, t: Trial, best: Trial, path: Any,
                  on_disk: dict[str, Any], state: dict[str, Any]) -> bool:
    if t.key == best.key and state["best_artifact"]:
        link_copy(planner.out / "best", path)
        return True
    if t.key in on_disk:
        on_disk.pop(t.key).rename(path)
        return True
    handle = _at_hand(planner, t)
    need = save_s(planner, t) + (build_s(t) if handle is None else 0.0)
    left = planner.budget.left_for_end() - planner.confirm_reserve(best) - REPORT_S
    if need > left:
        state["notes"].append(f"variant {t.action} not saved: it needs ~{need:.0f}s, "
                              f"{max(left, 0):.0f}s of the time budget are left")
        return False
    if handle is None:
        handle = planner.builder.build(Candidate.from_json(t.candidate))
    _save(planner, handle, path, t, state)
    return True


def _save(planner: Planner, handle: ModelHandle, path: Any, trial: Trial,
          state: dict[str, Any]) -> None:
    note = save_trial(handle, path, trial, planner.texts)
    if note:
        state["notes"].append(f"{trial.action}: {note}")


# -- the side-by-side re-measure -------------------------------------------------------------

def _confirm(planner: Planner, best: Trial, handle: ModelHandle,
             state: dict[str, Any]) -> dict[str, Any] | None:
    """Baseline and best re-measured one after the other on the held-out texts (up to
    `confirm_n_eval`, fewer when the budget is short): the figures the headline uses."""
    s = planner.s
    if not s.confirm_n_eval or not best.parent:  # the original is the best: nothing to do
        return None
    assert planner.ref_trial is not None
    runs = 2 * planner.latency_runs
    fixed, per_text = confirm_cost([planner.ref_trial, best], len(planner.texts), runs)
    left = planner.budget.left_for_end() - REPORT_S
    # it fills the time left, so aim short of it: a prediction is never exact
    n = s.confirm_n_eval if per_text <= 0 else min(s.confirm_n_eval,
                                                    int(CONFIRM_FILL * (left - fixed) / per_text))
    floor = min(len(planner.texts), s.confirm_n_eval)  # fewer than the search's: no better
    if n < floor:
        state["notes"].append(
            f"no side-by-side re-measure: on {floor} "
            f"{item_noun(planner.base.task)} it would take "
            f"~{fixed + per_text * floor:.0f}s, and {max(left, 0):.0f}s of the time budget "
            "are left; the figures are the search's")
        return None
    texts, fresh = confirm_items(planner, n)
    try:
        b, b_res = measure(planner.base, texts, s.batch_size, runs, gen_tokens=0,
                           progress=planner.progress)
        o, o_res = measure(handle, texts, s.batch_size, runs, gen_tokens=0,
                           progress=planner.progress)
    except (UserError, *_SAVE_ERRORS) as e:
        state["notes"].append(f"the side-by-side re-measure failed ({type(e).__name__}: {e}); "
                              "the figures are the search's")
        return None
    b["quality"], o["quality"] = (planner.compare(b_res, b_res, texts),
                                  planner.compare(b_res, o_res, texts))
    for report, h in ((b, planner.base), (o, handle)):  # an LM's speed: as served
        gen = generation_figures(planner, h)
        if gen is not None:
            report["generation"] = gen
    ok, why = within_bound(planner.base.task, o["quality"], s.max_drop)
    return {"n_eval": len(texts), "unseen": fresh, "baseline": b, "best": o,
            "gain": gain(o, b, s.objective), "within_bound": ok, "bound": why}


def _step_back_while_outside(planner: Planner, result: dict[str, Any], best: Trial,
                             state: dict[str, Any]) -> Trial:
    """The bound must hold on the larger re-measure too: a best that falls outside it there
    (a search decision near the limit, on fewer texts) gives way to the kept step it was
    built on, saved and re-measured in its place, down to the original if need be."""
    while state["confirm"] is not None and not state["confirm"]["within_bound"]:
        prev = next((t for t in result["trials"] if t.key == best.parent), None)
        if prev is None or not prev.parent:
            break  # the step before is the original: the report says the bound failed
        state["notes"].append(
            f"{best.action} was outside the bound on the {state['confirm']['n_eval']} "
            f"re-measured {item_noun(planner.base.task)}"
            + (" the search never judged on " if state["confirm"].get("unseen") else " ")
            + f"({state['confirm']['bound']}): the best is the step it was built on, "
            f"{prev.action}")
        best.within_bound, best.bound = False, state["confirm"]["bound"]
        if best.artifact and best.artifact in state["variants"]:  # nor a variant to serve
            shutil.rmtree(planner.out / best.artifact, ignore_errors=True)
            state["variants"].remove(best.artifact)
            best.artifact = None
        best = result["best"] = prev
        handle = _best_handle(planner, best)
        _save_best(planner, best, handle, state)
        if not best.artifact:  # the ladder serves it too (`react serve OUT`)
            path = planner.out / "variants" / _variant_name(len(state["variants"]), best)
            link_copy(planner.out / "best", path)
            best.artifact = str(path.relative_to(planner.out))
            state["variants"].append(best.artifact)
            state["notes"] = [n for n in state["notes"]
                              if not n.startswith(f"variant {best.action} not saved")]
        state["confirm"] = _confirm(planner, best, handle, state)
    return best


# -- the report's data -----------------------------------------------------------------------

def verdict(data: dict[str, Any]) -> str:
    """The headline. Its figure is `data['gain']`: the side-by-side re-measure's when there
    is one (the table below shows the same numbers), else the search's."""
    obj, g, confirm = data["objective"], data["gain"], data.get("confirm")
    target = data["settings"].get("target")
    if data["best"]["key"] == data["baseline"]["key"]:
        return "no step paid on this machine: the original model is the best (best effort)"
    if confirm and g < 1:
        return (f"best effort: ×{g:.2f} on {obj} in the side-by-side re-measure; the gain "
                "seen during the search did not hold up")
    if target and g < target:
        return f"best effort: ×{g:.2f} on {obj}, short of the ×{target} target"
    if confirm and not confirm["within_bound"]:
        return (f"×{g:.2f} on {obj}, but outside the quality bound on the "
                f"{confirm['n_eval']} re-measured texts ({confirm['bound']})")
    return f"×{g:.2f} on {obj} within the quality bound"


def metric_summary(best: Trial, confirm: dict[str, Any] | None, agreement: str
                   ) -> dict[str, Any] | None:
    """The user's metric of the best (from the side-by-side re-measure when there is one)
    beside its agreement with the original; None when the run bounds agreement."""
    obs = confirm["best"] if confirm else best.observation
    quality = (obs or {}).get("quality") or {}
    if METRIC_KEY not in quality:
        return None
    return {**quality[METRIC_KEY], "agreement": {agreement: quality.get(agreement)}}


def report_data(planner: Planner, result: dict[str, Any], pareto: list[Trial],
                state: dict[str, Any]) -> dict[str, Any]:
    """The report's data, in JSON form (trials as `Trial.to_json` gives them)."""
    s, budget = planner.s, planner.budget
    best, base = result["best"], result["baseline"]
    confirm = state["confirm"]
    hw = hardware_profile()
    items = item_noun(planner.base.task)
    data = {
        "model": s.model, "task": planner.base.task, "objective": s.objective,
        "max_drop": s.max_drop, "quality_score": get_task(planner.base.task).quality_name,
        "metric": metric_summary(best, confirm, planner.task.quality_name),
        "hardware": hw.to_dict(), "hardware_summary": hw.summary(),
        # n_eval as resolved for the task (None asks for its default)
        "settings": {**s.__dict__, "n_eval": s.n_eval or default_n_eval(planner.base.task, s),
                     "metric": metric_name(s.metric)},
        "stop": result["stop"], "end_plan": result.get("end_plan"),
        "seconds": budget.elapsed(), "search_seconds": result["seconds"],
        "budget_s": budget.total_s, "margin_s": margin_s(budget.total_s),
        "reused": result["reused"], "reference_outputs": result.get("reference_outputs"),
        "search": {**planner.sizing, "n_texts": len(planner.texts),
                   "latency_runs": planner.latency_runs},
        "gain": confirm["gain"] if confirm else gain(best.observation, base.observation,
                                                     s.objective),
        "gain_from": f"side-by-side re-measure on {confirm['n_eval']} {items}"
        + (" the search never judged on" if confirm.get("unseen") else "") if confirm
        else f"the search's measurements on {len(planner.texts)} {items}",
        "best_recipe": Candidate.from_json(best.candidate).describe(),
        "baseline": base.to_json(), "best": best.to_json(),
        "trials": [t.to_json() for t in result["trials"]],
        "pareto": [t.to_json() for t in pareto],
        "variants": state["variants"], "best_artifact": state["best_artifact"],
        "confirm": confirm, "notes": state["notes"], "errors": state["errors"],
        "left_out": planner.left_out,  # actions not offered to this model, and why
    }
    data["verdict"] = verdict(data)
    return data
