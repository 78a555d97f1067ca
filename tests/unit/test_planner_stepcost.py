"""A step's cost predicted before it starts (planner/stepcost.py), builds that stop at their
deadline (core/deadline.py), and the refusal of a budget from the sizing probe, before the
original is measured. Costs and clocks are injected."""
import dataclasses
import types

import numpy as np
import pytest
from test_planner import _actions, _patch_planner, _run, model_and_data  # noqa: F401
from test_planner_end import _planner, _trial

from reactinfer.backends import openvino_int8
from reactinfer.core import deadline as deadline_mod
from reactinfer.core.backend import Backend, register_backend
from reactinfer.core.deadline import DeadlinePassed, check, deadline, seconds_left
from reactinfer.core.errors import UserError
from reactinfer.planner import Action, endplan, stepcost
from reactinfer.planner.actions import Candidate
from reactinfer.planner.builder import Builder
from reactinfer.testing import tiny_handle


class _Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = _Clock()
    monkeypatch.setattr(deadline_mod, "time", types.SimpleNamespace(time=c))
    return c


# -- the deadline -------------------------------------------------------------------------

def test_a_deadline_is_checked_between_phases_and_nested_ones_keep_the_earlier(clock):
    assert seconds_left() is None
    check("anything")  # no deadline: nothing to check
    with deadline(clock.t + 10):
        assert seconds_left() == 10
        with deadline(clock.t + 50):  # an inner, later deadline does not extend it
            assert seconds_left() == 10
        with deadline(None):
            assert seconds_left() == 10
        check("the first phase")
        clock.t += 11
        with pytest.raises(DeadlinePassed, match="would not finish in time.*before the export"):
            check("the export")
    assert seconds_left() is None


def test_smooth_quant_tuning_tries_fewer_alphas_as_its_deadline_nears(clock, monkeypatch):
    monkeypatch.setattr(openvino_int8, "time", types.SimpleNamespace(perf_counter=clock))
    monkeypatch.setattr(openvino_int8, "float_outputs", lambda model, feeds: model)
    tried = []

    def quantize(alpha):  # each alpha takes 10 s; the output error is least at 0.8
        tried.append(alpha)
        clock.t += 10.0
        return np.array([1.0 + abs(alpha - 0.8)])

    ref = np.array([1.0])
    alpha, errors, _ = openvino_int8.tune_smooth_quant(ref, [], quantize)
    assert len(tried) == 5 and alpha == 0.8  # no deadline: every alpha
    tried.clear()
    with deadline(clock.t + 25):  # room for two: the third would end past it
        alpha, errors, _ = openvino_int8.tune_smooth_quant(ref, [], quantize)
    assert tried == list(openvino_int8.SMOOTH_QUANT_ALPHAS[:2]) and set(errors) == set(tried)
    assert alpha == tried[-1]  # the better of those tried
    tried.clear()
    with deadline(clock.t - 1), pytest.raises(DeadlinePassed, match="SmoothQuant"):
        openvino_int8.tune_smooth_quant(ref, [], quantize)
    assert not tried


def test_a_build_stops_at_its_deadline_before_converting(clock):
    builder = Builder(tiny_handle("embedding", layers=1, seed=0))
    cand = Candidate((), "test-slow", "{}")
    with deadline(clock.t - 1), pytest.raises(DeadlinePassed, match="test-slow conversion"):
        builder.build(cand)
    assert builder.build(cand).backend == "test-slow"  # no deadline: built


def test_a_build_past_its_deadline_is_a_step_skipped_for_time_not_a_failure(
        model_and_data, tmp_path, monkeypatch):  # noqa: F811
    real = Builder.build

    def build(self, cand):
        if cand.backend == "test-slow":
            raise DeadlinePassed("would not finish in time: the step's deadline passed 3s "
                                 "before int8 calibration")
        return real(self, cand)

    _patch_planner(monkeypatch, "Builder", type("B", (Builder,), {"build": build}))
    model, data = model_and_data
    r = _run(model, data, tmp_path / "run", max_drop=0.5)
    slow = [t for t in r["trials"] if t["action"] == "slow engine"]
    assert slow and slow[0]["decision"] == "skipped"
    assert slow[0]["reason"].startswith("time budget: would not finish in time")
    assert slow[0]["observation"] is None


# -- the prediction -----------------------------------------------------------------------

class TunedEngine(Backend):
    """An engine whose int8 build costs 3 float conversions at least, 11 in full."""

    name = "test-tuned"
    description = "an engine with a tuned int8 build (planning only)"

    def build_cost(self, **opts):
        return (3.0, 11.0) if opts.get("precision") == "int8" else (1.0, 1.0)


register_backend(TunedEngine())
INT8 = Action("tuned int8", "tuned-int8", lambda ctx: (2.0, "test"),
              backend=("test-tuned", {"precision": "int8"}))


def _built(backend, precision, build, decision="kept", seconds=None):
    t = _trial(f"{backend}-{precision}-{build}", "base", 50.0, 0.0, 20.0)
    t.candidate = {"transforms": [], "backend": backend,
                   "backend_options": {"precision": precision}}
    t.observation["timing"]["build_s"] = build
    t = dataclasses.replace(t, decision=decision, family=f"{backend}-{precision}")
    if seconds is not None:  # cut on the clock: no observation, the time it ran
        t = dataclasses.replace(t, observation=None, seconds=seconds)
    return t


def _fitting(log, left, measure=10.0):
    p = types.SimpleNamespace(log=log, _stored=lambda cand: None, _measure_s=lambda: measure,
                              runtime_kinds=set())
    return stepcost.fit_action(p, INT8, INT8.apply(Candidate(), set()), Candidate(), left)


def test_a_build_is_predicted_from_this_runs_conversions_on_the_same_engine():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    int8 = INT8.apply(Candidate(), set())
    fp32 = _built("test-tuned", "fp32", 20.0)
    cost = stepcost.predict_build([base, fp32], int8, 10.0)
    assert (cost.least, cost.full) == (60.0, 220.0) and "11× a test-tuned" in cost.why
    # the longest build seen on the same engine and format counts when it was longer,
    # one cut on the clock with the time it ran (at least that long)
    cut = _built("test-tuned", "int8", 0.0, decision="skipped", seconds=300.0)
    cost = stepcost.predict_build([base, fp32, cut], int8, 10.0)
    assert cost.full == 300.0 and "longest test-tuned int8 build here took 300s" in cost.why
    # no conversion on this engine yet: another engine's float conversion (the export is
    # most of it), and never less than a quarter of a measurement
    other = _built("test-slow", "fp32", 8.0)
    assert stepcost.predict_build([base, other], int8, 10.0).full == 88.0
    assert stepcost.predict_build([base], int8, 10.0).full == pytest.approx(11 * 2.5)
    # a torch-only step converts nothing
    assert stepcost.predict_build([base, fp32], Candidate(), 10.0).full == 0.0


def test_the_step_start_check_counts_build_and_measurement():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    log = [base, _built("test-tuned", "fp32", 20.0)]
    measure = 10.0 * 1.25
    _, fit = _fitting(log, left=1000.0)
    assert fit.steps is not None and fit.predicted_s == pytest.approx(measure + 220.0)
    # the full build does not fit, its least does: it starts and does less
    _, fit = _fitting(log, left=100.0)
    assert fit.steps is not None and fit.predicted_s == pytest.approx(measure + 60.0)
    assert "does less" in fit.note and "~220s" in fit.note
    # not even the least fits: skipped, and the reason names the build
    _, fit = _fitting(log, left=50.0)
    assert fit.steps is None and "its build is predicted at ~220s" in fit.note
    assert "predicted to take ~23" in fit.note


# -- refused from the sizing probe ----------------------------------------------------------

PROBE = {"batch_size": 8, "n_eval": 4, "prepare_s": 0.5, "size_mb": 100.0,
         "throughput": {"seconds": 0.4}, "latency_ms": {"mean": 50.0}}


def test_a_budget_that_obviously_cannot_hold_a_whole_output_is_refused_from_the_probe():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    ref = endplan.predicted_ref(PROBE, 100, 10)
    m = endplan.measure_s(ref)
    assert m == pytest.approx(0.5 + 0.1 * 8 + 0.15 + 0.1 * 100 + 0.05 * 10)
    p = _planner([base], total_s=20.0, left_s=19.0, per_mb=0.1)
    with pytest.raises(UserError, match=r"--budget-s 20 is too small") as e:
        endplan.check_probe(p, PROBE)
    msg = str(e.value)
    assert "\n" not in msg and f"would take ~{m:.0f}s" in msg
    smallest = int(msg.split("give --budget-s ")[1].split()[0])
    end = endplan.minimal_end(p, ref).total_s
    assert smallest >= 1 + m + 1.25 * m + end  # the measurement, a step and the end
    endplan.check_probe(_planner([base], total_s=smallest, left_s=smallest - 1.0, per_mb=0.1),
                        PROBE)
    # only an obvious shortfall is refused before the original is measured: a budget
    # that half the predicted costs fit in goes on, and is judged on the measurement
    need = m + 1.25 * m + end
    short = _planner([base], total_s=0.7 * need + 1, left_s=0.7 * need, per_mb=0.1)
    endplan.check_probe(short, PROBE)


def test_a_run_too_small_for_the_probe_refuses_before_measuring_the_original(
        model_and_data, tmp_path, monkeypatch):  # noqa: F811
    model, data = model_and_data
    measured = []
    real = endplan.check_whole

    def check_whole(planner, *a, **kw):
        measured.append(kw.get("ref") is None)
        return real(planner, *a, **kw)

    monkeypatch.setattr(endplan, "check_whole", check_whole)
    with pytest.raises(UserError, match=r"as a probe predicts\).*give --budget-s \d+ or more"):
        _run(model, data, tmp_path / "run", budget_s=0.5, actions=_actions())
    assert measured == [False]  # refused from the probe, before the original's trial
