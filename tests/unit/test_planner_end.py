"""The end of a run planned from its start (planner/endplan.py), measurements that cannot
overrun, and rebuilds that repeat what was measured. Costs and clocks are injected."""
import json
import types

import numpy as np
import pytest
import torch
from test_planner import _actions, _run, model_and_data  # noqa: F401  (a fixture)

from reactinfer import compress
from reactinfer.compression import Distill
from reactinfer.core.errors import UserError
from reactinfer.core.transform import config_from_dict
from reactinfer.measure.harness import MeasurementCut, measure
from reactinfer.planner import endplan
from reactinfer.planner.budget import REPORT_S, SAVE_S, Budget
from reactinfer.planner.record import Decision, Trial
from reactinfer.testing import save_tiny_hf, tiny_handle, tiny_texts


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("d") / "texts.txt"
    words = " ".join(tiny_texts(10)).split()
    rng = np.random.default_rng(0)
    p.write_text("\n".join(" ".join(rng.choice(words, rng.integers(4, 20)))
                           for _ in range(300)))
    return str(p)


# -- a Distill cut by its clock is rebuilt exactly ------------------------------------------

def test_a_time_budgeted_distill_rebuilt_from_its_recipe_is_bit_identical(
        tmp_path, texts_file, monkeypatch):
    import reactinfer.compression.distill as distill_mod

    ticks = {"t": 0.0}

    def perf_counter():  # every reading of the clock is one second later
        ticks["t"] += 1.0
        return ticks["t"]

    teacher = tiny_handle("embedding", layers=2, seed=0)
    student = str(save_tiny_hf(tmp_path / "student", layers=1, seed=5))
    cfg = Distill(student_model=student, steps=40, eval_every=4, lr=3e-3, data=texts_file,
                  progress=False, patience=100, time_budget_s=9.5)
    monkeypatch.setattr(distill_mod, "time", types.SimpleNamespace(perf_counter=perf_counter))
    first = compress(teacher, [cfg])
    monkeypatch.undo()
    ran = first.metrics["distill"]["steps"]
    assert 0 < ran < cfg.steps and first.metrics["distill"]["stopped"] == "time budget"
    recorded = first.transforms[-1]  # the recipe records the steps run, not the clock
    assert recorded["run_steps"] == ran and recorded["time_budget_s"] is None
    for _ in range(2):  # rebuilt on the real clock: the same weights, bit for bit
        again = compress(teacher, [config_from_dict(json.loads(json.dumps(recorded)))])
        assert again.metrics["distill"]["steps"] == ran
        a, b = first.model.state_dict(), again.model.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_steps_must_be_within_steps():
    with pytest.raises(UserError, match="run_steps"):
        Distill(steps=10, run_steps=11)


# -- a measurement that cannot finish in time is cut ----------------------------------------

def test_a_measurement_that_cannot_finish_in_time_is_cut_after_its_first_batch():
    handle = tiny_handle("embedding", layers=1, seed=0)
    texts = tiny_texts(40)
    with pytest.raises(MeasurementCut, match="first batch"):
        measure(handle, texts, 4, 3, gen_tokens=0, progress=False, max_s=0.0)
    # worth: the whole measurement in first batches, as the original's measurement showed
    with pytest.raises(MeasurementCut):
        measure(handle, texts, 4, 3, gen_tokens=0, progress=False, max_s=1e-6, worth=1e9)
    report, _ = measure(handle, texts, 4, 3, gen_tokens=0, progress=False, max_s=1e6)
    assert report["n_eval"] == 40 and report["throughput"]["first_batch_s"] > 0


# -- the plan: injected costs ----------------------------------------------------------------

def _trial(key, parent, size, drop, speed, action=None, backend="torch"):
    return Trial(key=key, step=0, thought="", parent=parent, action=action or key, seconds=4.0,
                 decision=Decision.KEPT if parent else Decision.BASELINE, reason="",
                 candidate={"transforms": [], "backend": backend, "backend_options": {}},
                 observation={"size_mb": size, "quality_drop": drop,
                              "quality": {"mean_cosine": 1 - drop, "top10_recall": 1.0},
                              "throughput": {"items_per_s": speed, "seconds": 100 / speed},
                              "latency_ms": {"mean": 1000.0 / speed, "n": 10},
                              "timing": {"build_s": 3.0, "measure_s": 100 / speed + 1.0}})


def _planner(trials, total_s=600.0, left_s=None, saved=(), built=(), per_mb=None):
    budget = Budget(total_s)
    if left_s is not None:
        budget.left = lambda: left_s  # an injected clock
    settings = types.SimpleNamespace(confirm_n_eval=1000, max_drop=0.01, objective="throughput",
                                     model="m", n_eval=None)
    return types.SimpleNamespace(
        ref_trial=trials[0], log=list(trials), s=settings, budget=budget,
        base=types.SimpleNamespace(task="embedding"), texts=list(range(100)), n_asked=1000,
        latency_runs=10, saved={k: None for k in saved},
        builder=types.SimpleNamespace(built={k: None for k in built}),
        end_costs={} if per_mb is None else {"save_s_per_mb": per_mb, "plot_import_s": 1.0})


def test_the_end_is_planned_from_measured_costs_for_the_whole_ladder():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    mid = _trial("mid", "base", 50.0, 0.001, 20.0)
    best = _trial("best", "mid", 25.0, 0.005, 40.0, backend="openvino")
    worse = _trial("worse", "base", 80.0, 0.002, 12.0)  # dominated by mid: no variant
    p = _planner([base, mid, best, worse], saved=("base",), built=("best",), per_mb=0.1)
    plan = endplan.plan_end(p, best)
    items = dict(plan.items)
    # the original was saved early; another engine's artifact holds the torch weights too
    assert "save baseline" not in items and "save worse" not in items
    assert items["save best"] == pytest.approx(SAVE_S + (25 + 100) * 0.1)
    # a variant no longer at hand is rebuilt before it is saved
    assert items["save mid"] == pytest.approx(SAVE_S + 50 * 0.1 + 3.0)
    confirm = next(s for w, s in plan.items if w.startswith("side-by-side"))
    assert confirm > 1000 / 40 + 1000 / 10 - 1  # both models on 1,000 texts
    assert items["report and plots"] == REPORT_S
    assert plan.total_s == pytest.approx(sum(items.values()))
    assert "kept for the end" in plan.describe() and "save mid" in plan.describe()
    # while the original is the only model there is nothing to save or re-measure
    only = endplan.plan_end(_planner([base], saved=("base",), per_mb=0.1), base)
    assert [w for w, _ in only.items] == ["report and plots"]


def test_the_re_measure_is_planned_on_fewer_texts_when_the_budget_is_short():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    best = _trial("best", "base", 25.0, 0.005, 40.0)
    seconds, n = endplan.confirm_s(_planner([base, best], total_s=200.0), best)
    assert 100 <= n < 1000 and seconds <= 0.25 * 200 + 1e-6


def test_a_budget_too_small_for_a_whole_output_is_refused_naming_one_that_works():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    p = _planner([base], total_s=60.0, left_s=40.0, per_mb=0.1)
    with pytest.raises(UserError, match=r"--budget-s 60 is too small") as e:
        endplan.check_whole(p)
    smallest = int(str(e.value).split("give --budget-s ")[1].split()[0])
    assert smallest > 60 and "\n" not in str(e.value)
    end = endplan.minimal_end(p).total_s
    assert smallest >= 60 - 40 + 1.25 * endplan.measure_s(base) + end  # pays for it all
    # with the budget named, the same costs pass
    spent = 60 - 40
    endplan.check_whole(_planner([base], total_s=smallest, left_s=smallest - spent, per_mb=0.1))


# -- a whole run --------------------------------------------------------------------------

def test_a_run_plans_its_end_saves_the_original_early_and_times_the_plots(
        model_and_data, tmp_path, monkeypatch):  # noqa: F811
    import reactinfer.planner.report as report_mod

    order = []
    real = report_mod.write_plots

    def write_plots(out, data):
        order.append("plots")
        return real(out, data)

    monkeypatch.setattr(report_mod, "write_plots", write_plots)
    model, data = model_and_data
    out = tmp_path / "run"
    r = _run(model, data, out, max_drop=0.5)
    assert r["end_plan"]["total_s"] > 0 and r["end_plan"]["items"]
    steps = [t for t in r["trials"] if t["decision"] not in ("baseline", "skipped")]
    assert steps and all(t["reserve_s"] > 0 for t in steps)
    md = (out / "report.md").read_text()
    assert "planned from the start: ~" in md and "not saved" not in md
    names = sorted(p.name for p in (out / "variants").iterdir())
    # the original, and the best beside it when a step paid (which depends on the
    # measured speed here): every variant the report lists is on disk
    assert names[0] == "00-baseline", names
    assert len(names) == len(r["variants"]) >= (1 if r["best"]["key"] == r["baseline"]["key"]
                                                else 2), names
    stated = json.loads((out / "report.json").read_text())["seconds"]
    assert order == ["plots"] and stated == pytest.approx(r["seconds"])
    # --resume plans its end against the time it is given: too little is refused
    with pytest.raises(UserError, match="too small for a whole output"):
        _run(model, data, out, max_drop=0.5, resume=True, budget_s=3)


def test_a_fresh_run_with_too_small_a_budget_is_refused(model_and_data, tmp_path):  # noqa: F811
    model, data = model_and_data
    with pytest.raises(UserError, match=r"give --budget-s \d+ or more"):
        _run(model, data, tmp_path / "run", budget_s=3, actions=_actions())
