"""The ReAct loop on tiny models, with injected actions whose effect is known."""
import copy
import dataclasses
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import reactinfer as ri
from reactinfer.backends.torch_eager import TorchRunner
from reactinfer.core.backend import Backend, register_backend
from reactinfer.core.errors import UserError
from reactinfer.core.transform import TransformConfig, register_transform
from reactinfer.planner import Action, optimize
from reactinfer.planner.record import Decision, Trial
from reactinfer.planner.store import TrialStore
from reactinfer.tasks import within_bound
from reactinfer.testing import save_tiny_hf, tiny_texts


@dataclasses.dataclass(frozen=True)
class DropLastLayer(TransformConfig):
    kind = "test.DropLastLayer"


@register_transform(DropLastLayer)
def _drop(handle, cfg):
    model = copy.deepcopy(handle.model)
    model.encoder.layer = model.encoder.layer[:-1]
    model.config.num_hidden_layers -= 1
    return handle.derive(model=model)


@dataclasses.dataclass(frozen=True)
class Noise(TransformConfig):
    kind = "test.Noise"
    scale: float = 1.0


@register_transform(Noise)
def _noise(handle, cfg):
    model = copy.deepcopy(handle.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * cfg.scale)
    return handle.derive(model=model)


@dataclasses.dataclass(frozen=True)
class Sleep(TransformConfig):
    """A step with a time budget of its own, like recovery distillation."""
    kind = "test.Sleep"
    time_budget_s: float = 1.0


SLEPT: list[float] = []


@register_transform(Sleep)
def _sleep(handle, cfg):
    SLEPT.append(cfg.time_budget_s)
    time.sleep(min(cfg.time_budget_s, 2.0))  # a real one would use all of it
    return handle.derive(model=copy.deepcopy(handle.model))


class _SlowRunner(TorchRunner):
    def __call__(self, batch):
        time.sleep(0.02)  # an engine that is worse here: same outputs, slower
        return super().__call__(batch)


class SlowBackend(Backend):  # a whole backend: the base class gives the rest
    name = "test-slow"
    description = "torch with an injected 20 ms delay per call"

    def prepare(self, handle, **opts):
        return _SlowRunner(handle)


register_backend(SlowBackend())

INTERRUPTS = {"left": 0}


def _expect(gain):
    return lambda ctx: (gain, f"test action expected ×{gain}")


def _actions(interrupt=False):
    noise = Action("noise", "noise", _expect(3.0), steps=({"type": "test.Noise", "scale": 1.0},))
    slow = Action("slow engine", "slow", _expect(2.0), backend=("test-slow", {}))
    drop = Action("drop last layer", "drop", _expect(1.5), steps=({"type": "test.DropLastLayer"},))
    return [noise, slow, drop]


@pytest.fixture
def model_and_data(tmp_path):
    d = save_tiny_hf(tmp_path / "tiny", "embedding")
    data = tmp_path / "data.txt"
    texts = tiny_texts(10)
    words = " ".join(texts).split()
    lines = [" ".join(np.random.default_rng(i).choice(words, 6 + i % 9)) for i in range(300)]
    data.write_text("\n".join(lines))
    return str(d), str(data)


def _run(model, data, out, **kw):
    kw.setdefault("actions", _actions())
    kw.setdefault("budget_s", 120)
    return optimize(model, data=data, out=out, n_eval=20, batch_size=8,
                    latency_runs=3, confirm_n_eval=30, progress=False, **kw)


def _patch_planner(monkeypatch, name, value):
    """Replace `name` wherever a planner module imported it (modules move; tests stay)."""
    mods = [m for n, m in list(sys.modules.items())
            if n.startswith("reactinfer.planner") and hasattr(m, name)]
    assert mods, name
    for m in mods:
        monkeypatch.setattr(m, name, value)


def test_optimize_keeps_what_pays_and_rolls_back_what_hurts(model_and_data, tmp_path):
    model, data = model_and_data
    out = tmp_path / "run"
    r = _run(model, data, out, objective="size", max_drop=0.5)
    by_action = {t["action"]: t for t in r["trials"]}
    assert by_action["baseline"]["decision"] == "baseline"
    assert by_action["noise"]["decision"] == "rolled back"
    assert "quality drop" in by_action["noise"]["reason"]
    assert by_action["slow engine"]["decision"] == "rolled back"
    assert "does not pay" in by_action["slow engine"]["reason"]
    assert by_action["drop last layer"]["decision"] == "kept"
    for t in r["trials"]:
        assert t["thought"] and t["action"] and (t["observation"] or t["decision"] == "failed")
    for f in ("report.md", "report.json", "pareto.png", "trace.png", "trials.sqlite"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "rolled back" in md and "Thought:" in md and "Pareto" in md
    best = ri.load(out / "best")
    assert best.model.config.num_hidden_layers == 1
    assert r["best"]["action"] == "drop last layer"
    assert r["confirm"]["best"]["size_mb"] < r["confirm"]["baseline"]["size_mb"]
    for v in r["variants"]:
        ri.load(out / v)  # every ladder variant is a valid artifact
    stored = json.loads((out / "report.json").read_text())
    assert len(stored["trials"]) == len(r["trials"])


def test_throughput_objective_rolls_back_a_slower_engine(model_and_data, tmp_path):
    model, data = model_and_data
    slow = [a for a in _actions() if a.name == "slow engine"]
    r = _run(model, data, tmp_path / "run", objective="throughput", max_drop=0.01, actions=slow)
    t = r["trials"][1]
    assert t["action"] == "slow engine" and t["decision"] == "rolled back"
    assert "does not pay" in t["reason"]
    assert "replacing the backend of [torch] with test-slow" in t["thought"]
    assert "no step paid" in r["verdict"]


def test_interrupted_run_resumes_without_redoing_trials(model_and_data, tmp_path):
    model, data = model_and_data
    out = tmp_path / "run"
    first = _run(model, data, out, objective="size", max_drop=0.5, max_trials=1)
    assert first["reference_outputs"]["cache"] == "measured"
    with pytest.raises(UserError, match="--resume"):
        _run(model, data, out, objective="size", max_drop=0.5)
    with pytest.raises(UserError, match="different settings"):
        _run(model, data, out, objective="latency", max_drop=0.5, resume=True)
    r = _run(model, data, out, objective="size", max_drop=0.5, resume=True)
    assert r["reused"] == 2  # the baseline and the first trial came from the store
    assert r["reference_outputs"]["cache"] == "reused"  # not measured again
    assert "reference outputs: reused" in (out / "report.md").read_text()
    assert [t["reused"] for t in r["trials"][:2]] == [True, True]
    assert not any(t["reused"] for t in r["trials"][2:])
    assert len(TrialStore(out / "trials.sqlite").all()) == len(r["trials"])


def test_bad_settings_fail_before_work(model_and_data, tmp_path):
    model, data = model_and_data
    with pytest.raises(UserError, match="objective"):
        _run(model, data, tmp_path / "a", objective="speed")
    with pytest.raises(UserError, match="max-drop"):
        _run(model, data, tmp_path / "b", max_drop=2)
    with pytest.raises(UserError, match="unknown transform"):
        _run(model, data, tmp_path / "c",
             actions=[Action("x", "x", _expect(1.0), steps=({"type": "Nope"},))])


def test_thoughts_learn_from_observations():
    from reactinfer.core.hardware import hardware_profile
    from reactinfer.planner.actions import Context, _expect_prune

    facts = {"layers": 6, "ffn_share": 0.66}
    fresh = Context(hardware_profile(), "embedding", "throughput", facts, [])
    g0, why0 = _expect_prune("layers", 1 / 3)(fresh)
    assert g0 > 1.2 and "FLOPs" in why0
    overshoot = Trial(key="k", step=1, action="prune FFN 25% + distil", thought="",
                      parent="b", candidate={}, family="prune-ffn",
                      decision=Decision.ROLLED_BACK, reason="quality drop 0.0607 > bound 0.01",
                      observation={"quality_drop": 0.0607})
    seen = Context(hardware_profile(), "embedding", "throughput", facts, [overshoot])
    g1, why1 = _expect_prune("layers", 1 / 3)(seen)
    assert g1 < g0 and "0.061" in why1 and "unlikely" in why1


def test_headline_ratio_is_the_tables(model_and_data, tmp_path, monkeypatch):
    """The search (20 texts) and the side-by-side re-measure (30 texts) see different
    speeds, as real runs do; the headline must quote the table, not the search."""
    from reactinfer.measure.harness import measure as real

    def measure(handle, texts, *a, **kw):
        report, results = real(handle, texts, *a, **kw)
        dropped = any(t.get("type") == "test.DropLastLayer" for t in handle.transforms)
        speed = (200.0 if len(texts) == 20 else 150.0) if dropped else 100.0
        report["throughput"]["items_per_s"] = speed
        return report, results

    _patch_planner(monkeypatch, "measure", measure)
    model, data = model_and_data
    out = tmp_path / "run"
    drop = [a for a in _actions() if a.name == "drop last layer"]
    r = _run(model, data, out, objective="throughput", max_drop=0.5, actions=drop)
    assert r["best"]["action"] == "drop last layer"
    md = (out / "report.md").read_text()
    headline = re.search(r"- result: \*\*.*?×([\d.]+) on throughput", md)
    row = re.search(r"\| throughput @ batch \d+ \(items/s\) \|[^|]*\|[^|]*\| ×([\d.]+) ", md)
    assert headline and row, md
    assert headline.group(1) == row.group(1) == "1.50"


def test_pareto_within_bound_is_the_loops_bound(model_and_data, tmp_path):
    """A trial inside the cosine bound but under the recall floor: the loop rolls it back,
    so the Pareto table must not call it within the bound."""
    model, data = model_and_data
    out = tmp_path / "run"
    lossy = Action("lossy shrink", "lossy", _expect(2.0),
                   steps=({"type": "test.DropLastLayer"}, {"type": "test.Noise", "scale": 0.002}))
    r = _run(model, data, out, objective="size", max_drop=0.008, actions=[lossy])
    t = r["trials"][1]
    ok, why = within_bound(r["task"], t["observation"]["quality"], 0.008)
    # the case this test is about: the cosine drop passes, top-10 recall does not
    assert t["observation"]["quality_drop"] <= 0.008 and not ok and "recall" in why
    assert t["decision"] == "rolled back"
    rows = {}
    for line in (out / "report.md").read_text().split("## Pareto set")[1].splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("variant", "---"):
            rows[cells[0]] = cells[3]
    assert set(rows) == {p["action"] for p in r["pareto"]} and "lossy shrink" in rows
    for p in r["pareto"]:
        expected = within_bound(r["task"], p["observation"]["quality"], 0.008)[0]
        assert rows[p["action"]].startswith("yes" if expected else "no"), (p["action"], rows)
    for p in r["pareto"]:
        assert p["within_bound"] == within_bound(r["task"], p["observation"]["quality"], 0.008)[0]
    assert all(v.split("/")[-1] != "lossy_shrink" for v in r["variants"])


def test_a_step_longer_than_the_time_left_is_skipped(model_and_data, tmp_path):
    model, data = model_and_data
    SLEPT.clear()
    long = Action("long training", "long", _expect(5.0),
                  steps=({"type": "test.Sleep", "time_budget_s": 10_000.0},))
    drop = [a for a in _actions() if a.name == "drop last layer"]
    budget = 30.0
    r = _run(model, data, tmp_path / "run", objective="size", max_drop=0.5,
             actions=[long, *drop], budget_s=budget)
    by_action = {t["action"]: t for t in r["trials"]}
    skipped = by_action["long training"]
    assert skipped["decision"] == "skipped" and "time budget" in skipped["reason"], skipped
    assert SLEPT == []  # never started
    assert by_action["drop last layer"]["decision"] == "kept"  # a step that fits still runs
    assert "skipped" in (tmp_path / "run" / "report.md").read_text()


def test_a_timed_step_is_cut_to_the_time_left_or_skipped():
    from reactinfer.planner.budget import fit_steps

    steps = ({"type": "Distill", "steps": 300, "time_budget_s": 150.0},)
    assert fit_steps(steps, fixed_s=10, expected_s=160, left_s=200).steps == steps
    cut = fit_steps(steps, fixed_s=10, expected_s=160, left_s=100)
    assert cut.steps is not None and cut.steps[0]["time_budget_s"] == 90.0
    assert cut.steps[0]["steps"] == 300 and "cut from 150s to 90s" in cut.note
    assert fit_steps(steps, fixed_s=10, expected_s=160, left_s=50).steps is None  # < half
    # its family finished early here: a shorter cut is still worth it
    assert fit_steps(steps, fixed_s=10, expected_s=40, left_s=50).steps is not None
    assert fit_steps((), fixed_s=10, expected_s=30, left_s=20).steps is None
    # an earlier trial of the family cost 175 s in all (25 s besides its 150 s of training):
    # more time left never turns a run into a skip, and a cut counts that overhead
    whole = fit_steps(steps, fixed_s=10, expected_s=175, left_s=200)
    assert whole.steps == steps and whole.predicted_s == 175
    for left in (150, 165, 174):
        fit = fit_steps(steps, fixed_s=10, expected_s=175, left_s=left)
        assert fit.steps is not None and fit.predicted_s == left, left


def test_measurements_are_sized_to_the_budget():
    from reactinfer.planner.budget import size_search

    # an LM on a slow machine: 0.8 s per text, 0.5 s per batch-1 run, batches of 8
    probe = {"batch_size": 8, "n_eval": 8, "prepare_s": 0.0,
             "throughput": {"seconds": 6.4}, "latency_ms": {"mean": 500.0}}
    assert size_search(probe, 400, 30, room_s=1000) == (400, 30)  # fits: as asked
    n, runs = size_search(probe, 400, 30, room_s=60)
    assert 16 <= n < 400 and n % 8 == 0 and 5 <= runs < 30
    assert 6.4 + 0.8 * n + 0.5 * (runs + 3) <= 60 + 0.8 * 8  # about the room, to a batch
    assert size_search(probe, 400, 30, room_s=1) == (16, 5)  # never below two batches


def test_a_failed_save_still_reports_what_was_measured(model_and_data, tmp_path, monkeypatch):
    def save_artifact(*a, **kw):
        raise ValueError("The model is quantized with gguf and is not serializable")

    _patch_planner(monkeypatch, "save_artifact", save_artifact)
    model, data = model_and_data
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="not serializable"):
        _run(model, data, out, objective="size", max_drop=0.5)
    stored = TrialStore(out / "trials.sqlite").all()
    # the baseline, the three actions, then the two rolled back retried on the kept one
    assert len(stored) == 6
    report = json.loads((out / "report.json").read_text())
    assert [t["key"] for t in report["trials"]] == [t.key for t in stored]
    assert report["best"]["action"] == "drop last layer" and report["best_artifact"] is None
    md = (out / "report.md").read_text()
    assert "not finished" in md and "not serializable" in md and "drop last layer" in md


def test_the_stated_margin_is_the_one_the_code_uses():
    from reactinfer.cli.main import build_parser
    from reactinfer.planner.budget import MARGIN_MIN_S, MARGIN_SHARE, margin_s

    assert margin_s(60) == MARGIN_MIN_S and margin_s(900) == MARGIN_SHARE * 900
    help_text = " ".join(build_parser()._subparsers._group_actions[0]  # type: ignore
                         .choices["optimize"].format_help().split())
    assert f"margin of {MARGIN_SHARE:.0%} (at least {MARGIN_MIN_S:.0f} s)" in help_text
    doc = " ".join((Path(__file__).parents[2] / "docs" / "planner.md").read_text().split())
    assert f"margin of {MARGIN_SHARE:.0%}, at least {MARGIN_MIN_S:.0f} s" in doc


def test_the_end_of_the_run_may_use_half_the_margin():
    from reactinfer.planner.budget import END_MARGIN_SHARE, Budget, margin_s

    b = Budget(900, start=time.time() - 895)  # 5 s left of the budget
    assert END_MARGIN_SHARE == 0.5
    extra = b.left_for_end() - b.left()
    assert abs(extra - 0.5 * margin_s(900)) < 0.5 and b.left() < 6  # two clock readings


@pytest.mark.parametrize("flags,expect_native", [
    ({"avx2", "fma", "f16c"}, False),                                     # Zen 1 / Haswell
    ({"avx2", "avx512f", "avx512_vnni"}, False),                          # Cascade Lake: no bf16
    ({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, True),            # Zen 4 / Cooper Lake
    ({"avx2", "avx512f", "amx_tile", "amx_bf16", "amx_int8"}, True),      # Sapphire Rapids
])
def test_bf16_is_expected_to_pay_only_with_native_bf16(flags, expect_native):
    # synthetic CPUs: the reasoning must not depend on the CPU running the test
    from reactinfer.core.hardware import isa_from_flags
    from reactinfer.planner.actions import Candidate, _expect_engine_format

    bf16 = Candidate(transforms=(json.dumps({"type": "CastHalf", "dtype": "bf16"}),))
    gain, why = _expect_engine_format(_ctx(flags, Candidate(), bf16))
    assert (gain > 1) == expect_native, why
    assert isa_from_flags(flags)["avx512_bf16"] == ("avx512_bf16" in flags)


def _ctx(flags, base, cand, objective="throughput"):
    import dataclasses as dc

    from reactinfer.core.hardware import hardware_profile, isa_from_flags
    from reactinfer.planner.actions import Context

    hw = dc.replace(hardware_profile(), isa=isa_from_flags(flags), gpu=False)
    return Context(hardware=hw, task="embedding", objective=objective, model_facts={}, log=[],
                   base=base, cand=cand)


# -- a search that composes: deterministic speeds, so no test depends on this CPU ----------

@dataclasses.dataclass(frozen=True)
class Tag(TransformConfig):
    """A step that leaves the model as it is: its speed is set by the fake measurement."""
    kind = "test.Tag"


@register_transform(Tag)
def _tag(handle, cfg):
    return handle.derive(model=copy.deepcopy(handle.model))


class FormatBackend(Backend):
    """torch, with a `precision` option the fake measurement reads (outputs unchanged)."""
    name = "test-format"
    description = "torch with a precision option"

    def capabilities(self):
        return {**super().capabilities(), "options": {"precision": ["fp32", "half"]}}

    def prepare(self, handle, **opts):
        return TorchRunner(handle)


register_backend(FormatBackend())


def _speed(handle):
    """Throughput by recipe: the tag alone does not pay (×1.01), on a dropped layer it does
    (×1.4); the test engine ×2, its half precision ×1.5 more."""
    kinds = [t.get("type") for t in handle.transforms]
    speed = 100.0
    if "test.DropLastLayer" in kinds:
        speed *= 1.5
    if "test.Tag" in kinds:
        speed *= 1.4 if "test.DropLastLayer" in kinds else 1.01
    if handle.backend == "test-format":
        speed *= 2.0 * (1.5 if handle.backend_options.get("precision") == "half" else 1.0)
    return speed


def _fake_speed(monkeypatch, each=None):
    from reactinfer.measure.harness import measure as real

    def measure(handle, texts, *a, **kw):
        report, results = real(handle, texts, *a, **kw)
        report["throughput"]["items_per_s"] = _speed(handle)
        if each is not None:
            each()
        return report, results

    _patch_planner(monkeypatch, "measure", measure)


def _compose_actions():
    tag = Action("tag", "tag", _expect(3.0), steps=({"type": "test.Tag"},))
    drop = Action("drop last layer", "drop", _expect(1.5), steps=({"type": "test.DropLastLayer"},))
    return [tag, drop]


def test_a_step_rolled_back_on_one_base_is_retried_and_kept_on_another(
        model_and_data, tmp_path, monkeypatch):
    _fake_speed(monkeypatch)
    model, data = model_and_data
    out = tmp_path / "run"
    r = _run(model, data, out, objective="throughput", max_drop=0.5, actions=_compose_actions())
    keys = {t["key"]: t for t in r["trials"]}
    tags = [t for t in r["trials"] if t["action"] == "tag"]
    assert [t["decision"] for t in tags] == ["rolled back", "kept"], r["trials"]
    first, retry = tags
    assert "does not pay" in first["reason"] and keys[first["parent"]]["action"] == "baseline"
    assert keys[retry["parent"]]["action"] == "drop last layer"
    assert f"Tried at step {first['step']}" in retry["thought"]
    assert "retried on this base" in retry["thought"]
    assert r["best"]["key"] == retry["key"]
    md = (out / "report.md").read_text()
    assert f"**{retry['step']}. tag** — on step {keys[retry['parent']]['step']} " \
           "(drop last layer) — kept" in md


def test_a_number_format_applies_to_the_engine_kept(model_and_data, tmp_path, monkeypatch):
    _fake_speed(monkeypatch)
    model, data = model_and_data
    engine = Action("test engine", "engine", _expect(2.0),
                    backend=("test-format", {"precision": "fp32"}))
    half = Action("half", "half", _expect(1.5), steps=({"type": "test.Tag"},), runtime=True,
                  formats={"test-format": {"precision": "half"}})
    # leads to the same candidate as `half` on the engine, but is expected to pay less
    engine_half = Action("test engine half", "engine-half", _expect(1.2),
                         backend=("test-format", {"precision": "half"}))
    r = _run(model, data, tmp_path / "run", objective="throughput", max_drop=0.5,
             actions=[engine_half, engine, half])
    halves = [t for t in r["trials"] if t["candidate"]["backend_options"].get("precision")
              == "half"]
    assert [t["action"] for t in halves] == ["half"], r["trials"]  # one trial, the likelier
    by_action = {t["action"]: t for t in r["trials"]}
    assert by_action["test engine"]["decision"] == "kept"
    t = by_action["half"]
    # the torch form (a runtime step) no longer applies; the engine's own form does
    assert t["candidate"]["backend"] == "test-format" and t["candidate"]["transforms"] == []
    assert t["candidate"]["backend_options"] == {"precision": "half"}
    assert t["parent"] == by_action["test engine"]["key"] and t["decision"] == "kept"
    assert "on test-format this is precision=half" in t["thought"]


def test_retries_stay_within_the_time_budget(model_and_data, tmp_path, monkeypatch):
    """Each measurement is made to cost 30 s of the budget: the search must stop for time
    before it has tried every candidate, and say so."""
    from reactinfer.planner import budget as budget_mod

    spent = {"s": 0.0}

    class Clock(budget_mod.Budget):
        def left(self):
            return super().left() - spent["s"]

    _patch_planner(monkeypatch, "Budget", Clock)
    _fake_speed(monkeypatch, each=lambda: spent.__setitem__("s", spent["s"] + 30.0))
    model, data = model_and_data
    r = _run(model, data, tmp_path / "run", objective="throughput", max_drop=0.5,
             actions=_compose_actions(), budget_s=120)
    fresh = [t for t in r["trials"] if t["decision"] not in ("baseline", "skipped")]
    assert r["stop"].startswith("time budget"), r["stop"]
    assert len(fresh) < 3  # unbounded, the run makes three trials (the test above)


def test_resume_reuses_stored_trials_and_goes_on_retrying(model_and_data, tmp_path,
                                                          monkeypatch):
    _fake_speed(monkeypatch)
    model, data = model_and_data
    out = tmp_path / "run"
    _run(model, data, out, objective="throughput", max_drop=0.5, actions=_compose_actions(),
         max_trials=2)
    r = _run(model, data, out, objective="throughput", max_drop=0.5, actions=_compose_actions(),
             resume=True)
    assert r["reused"] == 3  # the baseline, the tag rolled back, the drop kept
    assert [(t["action"], t["reused"]) for t in r["trials"]] == [
        ("baseline", True), ("tag", True), ("drop last layer", True), ("tag", False)]
    assert r["trials"][-1]["decision"] == "kept"


def _catalogue_forms():
    from reactinfer.planner.catalogue import catalogue

    acts = {a.name: a for a in catalogue()}
    kinds = {s["type"] for a in acts.values() if a.runtime for s in a.steps}
    return acts, kinds


def test_number_formats_take_the_form_of_the_engine_at_hand():
    # recipes only: nothing is built, so OpenVINO need not be installed
    from reactinfer.planner.actions import Candidate

    acts, kinds = _catalogue_forms()
    torch_ = Candidate()
    ort = acts["onnxruntime fp32"].apply(torch_, kinds)
    ov = acts["openvino fp32"].apply(torch_, kinds)
    int8, bf16 = acts["int8 dynamic (per-channel)"], acts["bf16"]
    assert int8.apply(ort, kinds) == acts["onnxruntime int8 dynamic"].apply(ort, kinds)
    assert int8.apply(ort, kinds).backend_options() == {"precision": "int8-dynamic"}
    assert (int8.apply(ov, kinds).backend, int8.apply(ov, kinds).backend_options()) == \
        ("openvino", {"precision": "int8"})
    assert bf16.apply(ov, kinds).backend_options() == {"precision": "bf16"}
    assert bf16.apply(ort, kinds) is None  # no bf16 form on ONNX Runtime
    on_torch = bf16.apply(torch_, kinds)
    assert on_torch.backend == "torch" and on_torch.configs() == [{"type": "CastHalf",
                                                                   "dtype": "bf16"}]
    # torch-format numbers are not exported to another engine
    assert acts["openvino fp32"].apply(on_torch, kinds) is None
    # a structural step keeps the engine; another engine takes the pruned recipe as it is
    prune = acts["prune FFN 25% + distil"]
    pruned = prune.apply(ort, kinds)
    assert pruned.backend == "onnxruntime" and pruned.configs()[0]["type"] == "PruneFFN"
    assert prune.apply(pruned, kinds) is None  # a step is applied once per recipe
    ov_pruned = acts["openvino bf16"].apply(pruned, kinds)
    assert ov_pruned.backend == "openvino" and ov_pruned.configs() == pruned.configs()
    assert int8.apply(ov_pruned, kinds).backend_options() == {"precision": "int8"}


CPUS = {  # synthetic profiles: the reasoning must not depend on the CPU running the test
    "avx2": {"avx2", "fma", "f16c"},                                           # Zen 1
    "vnni": {"avx2", "avx512f", "avx512_vnni"},                                # Cascade Lake
    "vnni+bf16": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"},            # Zen 4
    "amx": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
            "amx_int8"},                                                       # Sapphire Rapids
}


def _expected(cpu, base, action, objective="throughput"):
    from reactinfer.planner.actions import _expect_engine_format

    acts, kinds = _catalogue_forms()
    cand = acts[action].apply(base, kinds)
    return _expect_engine_format(_ctx(CPUS[cpu], base, cand, objective))


def test_expectations_follow_the_hardware():
    from reactinfer.planner.actions import Candidate

    acts, kinds = _catalogue_forms()
    torch_ = Candidate()
    ort = acts["onnxruntime fp32"].apply(torch_, kinds)
    ov = acts["openvino fp32"].apply(torch_, kinds)
    int8 = "int8 dynamic (per-channel)"
    # AVX2 only: int8 gains little, bf16 loses
    g, why = _expected("avx2", ort, int8)
    assert 1 < g < 1.3 and "No VNNI" in why, why
    assert _expected("avx2", torch_, "bf16")[0] < 1
    # VNNI: int8 pays, more on OpenVINO than on ONNX Runtime (weighed by its quality risk);
    # no bf16 yet
    g_ort, g_ov = _expected("vnni", ort, int8)[0], _expected("vnni", ov, int8)[0]
    assert 1.3 < g_ort < g_ov, (g_ort, g_ov)
    assert "weighed" in _expected("vnni", ort, int8)[1]
    # with native bf16, near-lossless OpenVINO bf16 comes before OpenVINO int8 from torch
    assert _expected("vnni+bf16", torch_, "openvino bf16")[0] > \
        _expected("vnni+bf16", torch_, "openvino int8")[0]
    assert _expected("vnni", torch_, "bf16")[0] < 1
    # native bf16: OpenVINO bf16 pays over OpenVINO fp32, and the Thought names the flag
    g, why = _expected("vnni+bf16", ov, "bf16")
    assert g > 1.5 and "avx512_bf16" in why, why
    # AMX: both formats pay more than with AVX-512 alone
    assert _expected("amx", ov, "bf16")[0] > g
    g, why = _expected("amx", ov, int8)
    assert g > _expected("vnni", ov, int8)[0] and "amx_int8" in why
    for cpu in CPUS:
        # lossless engines first from eager torch; leaving a faster base is expected to lose
        assert _expected(cpu, torch_, "openvino fp32")[0] > 1
        assert _expected(cpu, torch_, "onnxruntime fp32")[0] > 1
        assert _expected(cpu, ov, "onnxruntime fp32")[0] < 1
    # size: int8 stores fewer bytes; OpenVINO's bf16 is an inference precision
    assert _expected("avx2", ort, int8, "size")[0] > 3
    assert _expected("amx", ov, "bf16", "size")[0] == 1.0


def test_openvino_bf16_and_int8_with_bf16_rest_are_offered_only_with_native_bf16():
    from reactinfer.core.backend import list_backends
    from reactinfer.core.hardware import hardware_profile, isa_from_flags
    from reactinfer.planner.catalogue import default_actions, unavailable_actions

    def hw(cpu):
        return dataclasses.replace(hardware_profile(), isa=isa_from_flags(CPUS[cpu]), gpu=False)

    ov = list_backends().get("openvino")
    ov_here = ov is not None and ov.available()
    for cpu in CPUS:
        actions = {a.name: a for a in default_actions(hw(cpu))}
        native = cpu in ("vnni+bf16", "amx")
        assert ("openvino bf16" in actions) == (native and ov_here), cpu
        assert ("openvino int8 (bf16 rest)" in actions) == (native and ov_here), cpu
        assert ("openvino" in actions["bf16"].formats) == native, cpu
        assert ("openvino int8" in actions) == ov_here
        if not ov_here:
            assert "openvino" in unavailable_actions(hw(cpu))["openvino fp32"]
        elif not native:
            assert "no native bf16" in unavailable_actions(hw(cpu))["openvino bf16"]
            assert "no native bf16" in unavailable_actions(hw(cpu))["openvino int8 (bf16 rest)"]


def test_the_hardware_summary_names_bf16_amx_and_vnni():
    from reactinfer.core.hardware import hardware_profile, isa_from_flags, isa_text

    isa = isa_from_flags(CPUS["amx"] | {"avx_vnni"})
    text = isa_text(isa).split(",")
    for flag in ("avx512_bf16", "amx_bf16", "amx_int8", "avx_vnni", "vnni"):
        assert flag in text, text
    assert "amx_bf16" not in isa_text(isa_from_flags(CPUS["vnni+bf16"])).split(",")
    hw = dataclasses.replace(hardware_profile(), isa=isa)
    assert f"ISA: {isa_text(isa)}" in hw.summary()
    # `react bench` prints the same flags, from the report's recorded profile
    from reactinfer.measure import format_report
    from reactinfer.testing import tiny_handle

    r = ri.bench(tiny_handle("embedding"), n_eval=10, latency_runs=2, batch_size=4,
                 progress=False)
    r["hardware"] = {**r["hardware"], "isa": isa}
    line = next(ln for ln in format_report(r).splitlines() if ln.startswith("hardware"))
    assert line.endswith(isa_text(isa)), line


def test_a_rollback_over_the_bound_goes_through_one_hook(model_and_data, tmp_path,
                                                         monkeypatch):
    """`Planner._over_bound` sees every trial rolled back for quality, and only those; what
    it returns is the trial the loop goes on with (where a repair fits in)."""
    from reactinfer.planner.loop import Planner

    seen = []

    def over_bound(self, step, action, trial, cand, best_trial):
        seen.append((action.name, trial.decision))
        return dataclasses.replace(trial, reason=trial.reason + " [hook]"), step

    monkeypatch.setattr(Planner, "_over_bound", over_bound)
    model, data = model_and_data
    noise, slow, _ = _actions()
    r = _run(model, data, tmp_path / "run", objective="throughput", max_drop=0.01,
             actions=[noise, slow])
    assert seen == [("noise", "rolled back")]
    assert "does not pay" in next(t for t in r["trials"] if t["action"] == "slow engine")["reason"]


def test_a_format_over_the_bound_on_one_engine_puts_lossless_steps_first():
    from reactinfer.planner.actions import Candidate, _expect_engine_format

    acts, kinds = _catalogue_forms()
    torch_ = Candidate()
    ort_int8 = acts["onnxruntime int8 dynamic"].apply(torch_, kinds)
    torch_int8 = acts["int8 dynamic (per-channel)"].apply(torch_, kinds)
    ort = acts["onnxruntime fp32"].apply(torch_, kinds)
    over = Trial(key="k", step=1, action="onnxruntime int8 dynamic", thought="", parent="b",
                 candidate=ort_int8.to_json(), observation=None,
                 decision=Decision.ROLLED_BACK, reason="top-10 recall 0.911 < 0.950",
                 over_bound=True)
    for cpu in CPUS:
        ctx = dataclasses.replace(_ctx(CPUS[cpu], torch_, torch_int8), log=[over])
        g_int8, why = _expect_engine_format(ctx)
        g_fresh = _expect_engine_format(_ctx(CPUS[cpu], torch_, torch_int8))[0]
        g_ort = _expect_engine_format(_ctx(CPUS[cpu], torch_, ort))[0]
        assert g_int8 < g_fresh and g_int8 < g_ort, (cpu, g_int8, g_ort)
        assert "0.911" in why and "lossless steps come first" in why


def test_a_near_miss_is_measured_again_and_the_faster_measurement_counts(
        model_and_data, tmp_path, monkeypatch):
    """One measurement on a busy CPU can swing: a trial within the bound at ×0.9 of the best
    is measured a second time (here ×1.2, as a quiet run would give) and then kept; a trial
    far slower than the best (×0.5) is rolled back on its one measurement."""
    from reactinfer.measure.harness import measure as real

    tagged = []

    def measure(handle, texts, *a, **kw):
        report, results = real(handle, texts, *a, **kw)
        kinds = [t.get("type") for t in handle.transforms]
        if kinds == ["test.Tag"]:
            tagged.append(handle.name)
            report["throughput"]["items_per_s"] = 90.0 if len(tagged) == 1 else 120.0
        elif "test.DropLastLayer" in kinds:
            report["throughput"]["items_per_s"] = 50.0
        else:
            report["throughput"]["items_per_s"] = 100.0
        return report, results

    _patch_planner(monkeypatch, "measure", measure)
    model, data = model_and_data
    r = _run(model, data, tmp_path / "run", objective="throughput", max_drop=0.5,
             actions=_compose_actions())
    by = {t["action"]: t for t in r["trials"]}
    assert len(tagged) >= 2  # measured twice in its trial (then again in the final re-measure)
    assert by["tag"]["decision"] == "kept"
    assert "measured twice, ×0.90 then ×1.20" in by["tag"]["reason"]
    assert by["tag"]["observation"]["throughput"]["items_per_s"] == 120.0
    drop = by["drop last layer"]
    assert drop["decision"] == "rolled back" and "measured twice" not in drop["reason"]


def test_a_best_outside_the_bound_on_the_re_measure_gives_way_to_the_step_before(
        model_and_data, tmp_path, monkeypatch):
    """The search kept `tag` on the dropped layer, but on the larger side-by-side re-measure
    its outputs fall outside the bound: the step it was built on becomes the best, saved and
    re-measured in its place, and `tag` is no variant to serve."""
    import reactinfer.planner.finish as finish_mod

    _fake_speed(monkeypatch)
    real = finish_mod.measure

    def measure(handle, texts, *a, **kw):
        report, results = real(handle, texts, *a, **kw)
        if any(t.get("type") == "test.Tag" for t in handle.transforms):
            rng = np.random.default_rng(0)
            results = {k: v + rng.normal(0, 10.0, v.shape).astype(v.dtype)
                       if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v
                       for k, v in results.items()}
        return report, results

    monkeypatch.setattr(finish_mod, "measure", measure)
    model, data = model_and_data
    out = tmp_path / "run"
    r = _run(model, data, out, objective="throughput", max_drop=0.5, actions=_compose_actions())
    kept = [t["action"] for t in r["trials"] if t["decision"] == "kept"]
    assert kept == ["drop last layer", "tag"]  # the search kept both
    assert r["best"]["action"] == "drop last layer"
    assert r["confirm"]["within_bound"] and r["gain"] == r["confirm"]["gain"]
    tag = next(t for t in r["trials"] if t["action"] == "tag" and t["decision"] == "kept")
    assert not tag["within_bound"] and "artifact" not in tag
    assert any("was outside the bound" in n for n in r["notes"])
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert [t["type"] for t in manifest["transforms"]] == ["test.DropLastLayer"]
    recipes = [[t["type"] for t in json.loads((v / "manifest.json").read_text())["transforms"]]
               for v in (out / "variants").iterdir()]
    assert ["test.DropLastLayer", "test.Tag"] not in recipes  # no variant holds the dropped
    assert ["test.DropLastLayer"] in recipes  # and the new best is served by the ladder
