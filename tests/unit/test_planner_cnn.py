"""The planner on an image model: a tiny CNN built in-process, the default catalogue, the
same loop, report and artifacts as for text."""
import dataclasses
import json

import pytest

import reactinfer as ri
from reactinfer.models import vision, zoo
from reactinfer.planner import optimize
from reactinfer.planner.catalogue import catalogue, default_actions
from reactinfer.planner.cnn import conv_facts, fold_expect, int8_weigh
from reactinfer.planner.record import Decision, Trial
from reactinfer.testing import tiny_cnn_builtin

IMAGE = "image-classification"


def test_the_catalogue_offers_image_models_only_what_knows_convolutions():
    image = {a.name for a in catalogue() if IMAGE in a.tasks}
    assert "fold BatchNorm" in image
    assert {"onnxruntime fp32", "openvino fp32", "onnxruntime int8 static (per-channel)",
            "openvino int8"} <= image
    for text_only in ("prune FFN 25% + distil", "prune heads 25% + distil",
                      "drop 1/6 layers + distil", "int8 dynamic (per-channel)",
                      "onnxruntime int8 dynamic", "2:4 sparsity", "torch.compile"):
        assert text_only not in image
    fold = next(a for a in catalogue() if a.name == "fold BatchNorm")
    assert fold.free and fold.tasks == (IMAGE,)  # and never offered to a text model


def test_thoughts_know_depthwise_convolutions_and_free_folding(tiny_cnn_model):
    facts = conv_facts(ri.load(tiny_cnn_model))
    assert facts["convs"] >= 3 and facts["foldable"] == facts["batchnorms"] > 0
    assert facts["depthwise"] == 0 and facts["depthwise_share"] == 0
    g, why = fold_expect(facts, "torch")
    assert g > 1 and "exact" in why and "free" in why and "recovery" in why
    assert fold_expect(facts, "onnxruntime")[0] == 1.0  # the engine folds it itself
    # depthwise convolutions gain little from int8: the more of them, the less expected
    dense, _ = int8_weigh({**facts, "depthwise_share": 0.0}, 2.4)
    half, note = int8_weigh({**facts, "depthwise_share": 0.5}, 2.4)
    assert dense == pytest.approx(2.4) and 1 < half < dense and "depthwise" in note


def test_optimize_a_cnn_folds_first_and_tries_only_image_actions(tiny_cnn_model, tmp_path):
    out = tmp_path / "run"
    actions = default_actions()
    r = optimize(tiny_cnn_model, out=out, budget_s=120, n_eval=40, batch_size=16,
                 latency_runs=3, confirm_n_eval=40, max_trials=4, progress=False,
                 actions=actions)
    trials = r["trials"]
    assert trials[0]["action"] == "baseline" and trials[0]["decision"] == "baseline"
    assert trials[1]["action"] == "fold BatchNorm"  # free, so first
    assert [c["type"] for c in trials[1]["candidate"]["transforms"]] == ["fold_bn"]
    assert trials[1]["decision"] in ("kept", "rolled back")
    assert trials[1]["observation"]["quality_drop"] <= 0.01  # exact: no top-1 changes
    assert "depthwise" in trials[1]["thought"] and "BatchNorm" in trials[1]["thought"]
    image = {a.name for a in actions if IMAGE in a.tasks}
    tried = [t for t in trials[1:] if t["decision"] != "skipped"]
    assert 2 <= len(tried) <= 4 and {t["action"] for t in tried} <= image
    for t in tried:  # an engine that cannot take it yet is a failed trial, not a crash
        assert t["observation"] is not None or (t["decision"] == "failed" and t["reason"])
    for f in ("report.md", "report.json", "pareto.png", "trace.png"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "fold BatchNorm" in md and "Thought:" in md
    assert len(json.loads((out / "report.json").read_text())["trials"]) == len(trials)
    best = ri.load(out / "best")  # the artifact reloads (folded or not), as `serve` does
    assert best.task == IMAGE


def test_a_repair_that_could_not_rank_its_layers_does_not_stop_the_run():
    """repair.py records a ranking that failed as a failed entry with no measurement (and no
    `over_bound`); the next Thought about the same action reads it without crashing."""
    from reactinfer.planner.actions import Candidate
    from reactinfer.planner.history import earlier
    from reactinfer.tasks import get_task

    action = next(a for a in catalogue() if a.name == "onnxruntime int8 static (per-channel)")
    cand = Candidate(backend="onnxruntime", options=json.dumps({"precision": "int8-static"}))
    entry = Trial(key="f", step=5, action=action.name, thought="", decision=Decision.FAILED,
                  parent="k", reason="ranking the layers failed: ValueError",
                  candidate=cand.to_json(), observation=None)
    g, note = earlier([entry], action, cand, 2.0, get_task(IMAGE), 0.01)
    assert g == pytest.approx(1.25) and "comes last" in note


def test_a_step_that_broke_the_model_is_not_retried_in_the_same_form():
    """An unrecovered pruning (top-1 agreement 0) is not worth a trial on the next best
    engine; a step just over the bound is retried last, as before."""
    from reactinfer.planner.actions import Candidate
    from reactinfer.planner.history import earlier
    from reactinfer.tasks import get_task

    action = next(a for a in catalogue() if "prune channels" in a.name)
    cand = Candidate(backend="openvino", options=json.dumps({"precision": "fp32"}))

    def log(agreement: float) -> list[Trial]:
        return [Trial(key="p", step=4, action=action.name, thought="",
                      decision=Decision.ROLLED_BACK, parent="k",
                      over_bound=True, reason="quality drop > bound 0.01",
                      candidate=Candidate(backend="torch").to_json(),
                      observation={"quality": {"top1_agreement": agreement}})]

    assert earlier(log(0.0), action, cand, 1.5, get_task(IMAGE), 0.01) is None
    g, note = earlier(log(0.98), action, cand, 1.5, get_task(IMAGE), 0.01)
    assert g == pytest.approx(1.125) and "comes last" in note


def test_a_new_precision_step_starts_without_the_options_of_the_old_one():
    """On a kept `int8 (bf16 rest) + fp32_layers` candidate, the OpenVINO bf16 and fp32
    actions lead to plain bf16 / fp32: the float rest and the layer fallback belonged to
    int8 (carried over, they made every such trial fail); session options carry over."""
    from reactinfer.planner.actions import Candidate

    cand = Candidate(backend="openvino", options=json.dumps(
        {"precision": "int8", "rest": "bf16", "fp32_layers": ["/a/MatMul"], "hint": "latency"}))
    for name, precision in (("openvino bf16", "bf16"), ("openvino fp32", "fp32")):
        action = next(a for a in catalogue() if a.name == name)
        new = action.apply(cand, set())
        assert new is not None and new.backend_options() == \
            {"precision": precision, "hint": "latency"}, name


def test_optimize_keeps_the_class_names_in_its_artifacts(tiny_cnn_model, tmp_path):
    from reactinfer.core.errors import UserError
    from reactinfer.models.vision import model_labels

    names = [f"digit {i}" for i in range(10)]
    optimize(tiny_cnn_model, out=tmp_path / "run", budget_s=60, n_eval=20, batch_size=16,
             latency_runs=2, confirm_n_eval=0, max_trials=1, progress=False, labels=names)
    assert model_labels(ri.load(tmp_path / "run" / "best")) == names
    with pytest.raises(UserError, match="3 class names for a model with 10"):
        optimize(tiny_cnn_model, out=tmp_path / "bad", budget_s=60, n_eval=20,
                 max_trials=1, progress=False, labels=names[:3])


OUTLIER_CNN = "tiny-outlier-cnn-digits"


def _outlier_cnn():
    """conv → depthwise conv → 1×1 conv → classifier on the 8×8 digits, whose 1×1 conv
    breaks int8 on every CPU while the float model does not notice: it reads a channel that
    is always 0 with weights of 1000, so the int8 step of each of its output channels
    rounds the other weights to nothing."""
    import torch

    torch.manual_seed(0)
    conv, dw, pw = (torch.nn.Conv2d(1, 8, 3, padding=1),
                    torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Conv2d(8, 8, 1))
    head = torch.nn.Linear(8, 10)
    with torch.no_grad():
        dw.weight[0].zero_()
        dw.bias[0] = 0.0
        pw.weight[:, 0] = 1000.0
        pw.bias.zero_()  # int8 then gives every image the same class
        torch.manual_seed(0)
        head.weight.normal_(0, 1)  # the float model gives about half the images another
        head.bias.zero_()
    return torch.nn.Sequential(conv, torch.nn.ReLU(), dw, torch.nn.ReLU(), pw, torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), head).eval()


@pytest.fixture
def outlier_cnn_model(monkeypatch):
    entry, cnn = tiny_cnn_builtin()
    state = _outlier_cnn().state_dict()
    monkeypatch.setitem(zoo.BUILTINS, OUTLIER_CNN, dataclasses.replace(entry, name=OUTLIER_CNN))
    monkeypatch.setitem(vision.CNN_BUILTINS, OUTLIER_CNN, dataclasses.replace(
        cnn, arch=_outlier_cnn, weights=lambda _: state))
    return OUTLIER_CNN


def test_the_repair_keeps_the_convolution_that_breaks_int8_float(outlier_cnn_model, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    from reactinfer.planner import Action
    from reactinfer.tasks import within_bound

    action = Action("onnxruntime int8 static (per-channel)", "ort-int8",
                    lambda ctx: (2.0, "test: int8"),
                    backend=("onnxruntime", {"precision": "int8-static"}), tasks=(IMAGE,),
                    fallback="fp32_layers")
    # min_gain -1: every candidate within the bound "pays", so the test decides on quality
    # alone and never on a timing
    r = optimize(outlier_cnn_model, out=tmp_path / "run", objective="throughput",
                 max_drop=0.2, budget_s=300, n_eval=40, batch_size=16, latency_runs=3,
                 confirm_n_eval=0, progress=False, actions=[action], min_gain=-1.0)
    trials = r["trials"]
    full = trials[1]
    assert full["decision"] == "rolled back"
    assert not within_bound(IMAGE, full["observation"]["quality"], 0.2)[0]
    fallbacks = [t for t in trials[2:] if t.get("observation")]
    assert fallbacks, [(t["action"], t["decision"], t["reason"]) for t in trials]
    first = fallbacks[0]
    assert first["candidate"]["backend_options"]["fp32_layers"] == ["/model/model.4/Conv"]
    assert within_bound(IMAGE, first["observation"]["quality"], 0.2)[0], \
        first["observation"]["quality"]
    assert first["decision"] == "kept" and r["best"]["key"] == first["key"]
    assert "the most sensitive is model.4 → keep it" in first["thought"]
