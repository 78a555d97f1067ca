"""Precision per layer under the bound: `fp32_layers` on ONNX Runtime, the layer
sensitivity ranking, and the planner's search for the smallest fallback set.

The tiny model is made so that one layer is extremely sensitive to int8 on every CPU: one
FFN neuron of the last layer always outputs 1000 (and its output weights are zero, so the
float model does not see it), which makes the per-tensor int8 step of that layer's input so
coarse that its other activations round to nothing, and that layer's output carries most
of the embedding. Every other layer quantizes well."""
import json

import numpy as np
import pytest

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.backends.onnx_layers import (
    calibration_feeds,
    layer_sensitivity,
    quantizable_layers,
)
from reactinfer.core.errors import UserError
from reactinfer.planner import Action, optimize
from reactinfer.planner.repair import _schedule, short
from reactinfer.tasks import tokenize, within_bound
from reactinfer.testing import save_outlier_hf, tiny_texts

pytest.importorskip("onnxruntime")
SENSITIVE = "/model/encoder/layer.1/output/dense/MatMul"


def _outlier_dir(path, layers=2, outliers=(1,)):
    return save_outlier_hf(path, layers, outliers)


@pytest.fixture
def outlier_dir(tmp_path):
    return _outlier_dir(tmp_path / "outlier")


@pytest.fixture
def data(tmp_path):
    words = " ".join(tiny_texts(10)).split()
    lines = [" ".join(np.random.default_rng(i).choice(words, 6 + i % 9)) for i in range(300)]
    path = tmp_path / "data.txt"
    path.write_text("\n".join(lines))
    return str(path)


def _int8_action():
    return Action("onnxruntime int8 dynamic", "ort-int8", lambda ctx: (2.0, "test: int8"),
                  backend=("onnxruntime", {"precision": "int8-dynamic"}),
                  fallback="fp32_layers")


def test_sensitivity_ranks_the_outlier_layer_first(outlier_dir):
    h = to_backend(ri.load(str(outlier_dir)), "onnxruntime", precision="fp32")
    path = h.files["model.onnx"]
    errors = layer_sensitivity(path, calibration_feeds(h, tiny_texts(12)))
    assert sorted(errors) == sorted(quantizable_layers(path))
    assert len(errors) == 12  # 2 layers × (q, k, v, attention out, FFN in, FFN out)
    ranked = sorted(errors, key=errors.__getitem__, reverse=True)
    assert ranked[0] == SENSITIVE
    assert errors[SENSITIVE] > 0.1 > max(errors[n] for n in ranked[1:])


def _optimize(model_dir, data, out):
    # min_gain -1: every candidate within the bound "pays", so the test decides on quality
    # alone and never on a timing
    return optimize(str(model_dir), data=data, out=out, objective="throughput",
                    max_drop=0.05, budget_s=300, n_eval=40, batch_size=8, latency_runs=3,
                    confirm_n_eval=0, progress=False, actions=[_int8_action()], min_gain=-1.0)


def test_fallback_search_finds_a_set_within_the_bound(outlier_dir, data, tmp_path):
    out = tmp_path / "run"
    r = _optimize(outlier_dir, data, out)
    trials = r["trials"]
    full = trials[1]
    assert full["action"] == "onnxruntime int8 dynamic" and full["decision"] == "rolled back"
    assert not within_bound("embedding", full["observation"]["quality"], 0.05)[0]
    fallbacks = [t for t in trials[2:] if t.get("observation")]
    assert fallbacks, [(t["action"], t["decision"], t["reason"]) for t in trials]
    first = fallbacks[0]
    layers = first["candidate"]["backend_options"]["fp32_layers"]
    assert layers == [SENSITIVE]  # the growing search starts with the most sensitive one
    assert within_bound("embedding", first["observation"]["quality"], 0.05)[0]
    assert first["decision"] == "kept" and r["best"]["key"] == first["key"]
    # checked on the held-out texts after the search's 40 as well (the data has 20 more)
    assert "on the held-out items the search never judged on: quality drop" in first["reason"]
    assert "overshot" in first["thought"] and short(SENSITIVE) in first["thought"]
    md = (out / "report.md").read_text()
    assert f"`{SENSITIVE}`" in md
    assert "Kept in higher precision (fp32_layers, 1 of the layers)" in md
    best = ri.load(out / "best")
    assert best.backend_options["fp32_layers"] == [SENSITIVE]
    stored = json.loads((out / "report.json").read_text())
    assert stored["trials"][2]["candidate"]["backend_options"]["fp32_layers"] == [SENSITIVE]


def test_the_search_grows_bisects_and_keeps_the_smallest_set(data, tmp_path):
    # three layers that each alone break the bound: 1 and 2 miss, 4 meets, then 3 meets
    model = _outlier_dir(tmp_path / "three", layers=3, outliers=(0, 1, 2))
    r = _optimize(model, data, tmp_path / "run")
    fallbacks = [t for t in r["trials"][2:] if t.get("observation")]
    ks = [len(t["candidate"]["backend_options"]["fp32_layers"]) for t in fallbacks]
    assert ks == [1, 2, 4, 3], [(t["action"], t["decision"], t["reason"]) for t in fallbacks]
    met = [within_bound("embedding", t["observation"]["quality"], 0.05)[0] for t in fallbacks]
    assert met == [False, False, True, True]
    assert [t["decision"] for t in fallbacks] == ["rolled back"] * 2 + ["rolled back", "kept"]
    assert "the set of 3 layers meets the bound" in fallbacks[2]["reason"]
    chosen = fallbacks[3]["candidate"]["backend_options"]["fp32_layers"]
    assert sorted(chosen) == [f"/model/encoder/layer.{i}/output/dense/MatMul" for i in range(3)]
    assert r["best"]["key"] == fallbacks[3]["key"]
    assert "bisecting between 2 (missed) and 4 (met)" in fallbacks[3]["thought"]


def test_fp32_layers_stay_float_and_survive_save_and_reload(outlier_dir, tmp_path):
    import onnx

    handle = ri.load(str(outlier_dir))
    texts = tiny_texts(8)
    batch = tokenize(handle.tokenizer, texts, handle.max_length)
    ref = handle.runner()(batch)
    full = to_backend(handle, "onnxruntime", precision="int8-dynamic")
    kept = to_backend(handle, "onnxruntime", precision="int8-dynamic", fp32_layers=(SENSITIVE,))
    graph = onnx.load(str(kept.files["model.onnx"])).graph
    ops = {n.name: n.op_type for n in graph.node}
    assert ops[SENSITIVE] == "MatMul"  # still the float node
    assert sum(op == "MatMulInteger" for op in ops.values()) == 11  # the rest are int8

    def cos(a, b):
        return float((a * b).sum(-1).mean() / np.sqrt((a * a).sum(-1).mean()
                                                      * (b * b).sum(-1).mean()))

    out_kept, out_full = kept.runner()(batch), full.runner()(batch)
    assert cos(out_kept, ref) > cos(out_full, ref)
    ri.Artifact.save(kept, tmp_path / "art")
    back = ri.load(tmp_path / "art")
    assert back.backend_options["fp32_layers"] == [SENSITIVE]
    np.testing.assert_allclose(back.runner()(batch), out_kept, atol=1e-6)


def test_unknown_fp32_layer_is_a_user_error(outlier_dir):
    handle = ri.load(str(outlier_dir))
    with pytest.raises(UserError, match="'/nope/MatMul' is not a MatMul/Gemm/Conv layer"):
        to_backend(handle, "onnxruntime", precision="int8-dynamic", fp32_layers=["/nope/MatMul"])
    with pytest.raises(UserError, match="list of ONNX node names"):
        to_backend(handle, "onnxruntime", precision="int8-dynamic", fp32_layers=SENSITIVE)


def test_search_schedule_grows_then_bisects():
    ks, lo, hi, k = [], 0, None, 0
    meets_from = 5  # pretend 5 or more layers in fp32 meet the bound
    while (k := _schedule(36, lo, hi, k)) is not None:
        ks.append(k)
        if k >= meets_from:
            hi = k
        else:
            lo = k
    assert ks == [1, 2, 4, 8, 6, 5] and hi == meets_from
    assert _schedule(3, 0, None, 2) is None  # never all layers: that is the fp32 model


def test_a_new_precision_step_drops_the_layer_fallback():
    from reactinfer.planner.actions import Candidate

    repaired = Candidate.from_json({"transforms": [], "backend": "onnxruntime",
                                    "backend_options": {"precision": "int8-dynamic",
                                                        "threads": 2,
                                                        "fp32_layers": [SENSITIVE]}})
    fp32 = Action("onnxruntime fp32", "ort", lambda ctx: (1.0, ""),
                  backend=("onnxruntime", {"precision": "fp32"}))
    assert fp32.apply(repaired, set()).backend_options() == {"precision": "fp32", "threads": 2}


def test_a_step_that_keeps_the_precision_keeps_the_layer_fallback():
    from reactinfer.planner.actions import Candidate

    repaired = Candidate.from_json({"transforms": [], "backend": "openvino",
                                    "backend_options": {"precision": "int8",
                                                        "fp32_layers": [SENSITIVE]}})
    rest = Action("openvino int8 (bf16 rest)", "openvino-int8", lambda ctx: (1.0, ""),
                  backend=("openvino", {"precision": "int8", "rest": "bf16"}))
    assert rest.apply(repaired, set()).backend_options() == {
        "precision": "int8", "rest": "bf16", "fp32_layers": [SENSITIVE]}
    again = Action("openvino int8", "openvino-int8", lambda ctx: (1.0, ""),
                   backend=("openvino", {"precision": "int8"}))
    assert again.apply(repaired, set()) is None  # nothing new to try


def test_bound_decided_needs_every_interval_on_the_right_side():
    from reactinfer.tasks import bound_decided

    def q(cos, recall, cos_ci, recall_ci):
        return {"mean_cosine": cos, "top10_recall": recall,
                "ci95": {"mean_cosine": cos_ci, "top10_recall": recall_ci}}

    sure = q(0.998, 0.97, [0.997, 0.999], [0.962, 0.978])
    edge = q(0.998, 0.955, [0.997, 0.999], [0.946, 0.963])  # point within, interval not
    assert within_bound("embedding", sure, 0.01)[0] and bound_decided("embedding", sure, 0.01)
    assert within_bound("embedding", edge, 0.01)[0]
    assert not bound_decided("embedding", edge, 0.01)
    wide = q(0.992, 0.99, [0.985, 0.999], [0.98, 1.0])  # the drop's interval crosses 0.01
    assert not bound_decided("embedding", wide, 0.01)
    no_ci = {"mean_cosine": 0.995, "top10_recall": 0.96}  # the point estimates decide
    assert bound_decided("embedding", no_ci, 0.01)
    assert not bound_decided("embedding", {**no_ci, "top10_recall": 0.94}, 0.01)


def test_embeddings_are_judged_on_the_re_measure_corpus_by_default():
    from reactinfer.planner.settings import DEFAULT_N_EVAL, PlanSettings, default_n_eval

    s = PlanSettings(model="minilm")
    assert default_n_eval("embedding", s) == s.confirm_n_eval == 1000
    assert default_n_eval("causal-lm", s) == DEFAULT_N_EVAL == 400
    no_confirm = PlanSettings(model="minilm", confirm_n_eval=0)
    assert default_n_eval("embedding", no_confirm) == DEFAULT_N_EVAL


def test_the_re_measure_takes_texts_the_search_never_judged_on(tmp_path):
    from types import SimpleNamespace

    from reactinfer.data import texts_for
    from reactinfer.planner.heldout import confirm_items

    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"text number {i} with a few more words" for i in range(500)))
    ev = texts_for("eval", str(data))
    planner = SimpleNamespace(s=SimpleNamespace(data=str(data)), texts=ev[:20],
                              base=SimpleNamespace(tokenizer=None))
    items, unseen = confirm_items(planner, 30)
    assert unseen and len(items) == 30 and not set(items) & set(ev[:20])
    planner.texts = ev[:len(ev) - 5]  # too few left after the search's: its own
    items, unseen = confirm_items(planner, 30)
    assert not unseen and items == ev[:30]


def test_a_resumed_repair_checks_the_same_models_on_unseen_texts(outlier_dir, data, tmp_path):
    import sqlite3

    out = tmp_path / "run"
    first = _optimize(outlier_dir, data, out)
    # the overshooting int8 trial is built again on resume, its fallbacks come from the
    # store: each fallback's check must measure the fallback, not the model built last
    with sqlite3.connect(out / "trials.sqlite") as db:
        db.execute("DELETE FROM trials WHERE step = 1")
    again = optimize(str(outlier_dir), data=data, out=out, objective="throughput",
                     max_drop=0.05, budget_s=300, n_eval=40, batch_size=8, latency_runs=3,
                     confirm_n_eval=0, progress=False, actions=[_int8_action()],
                     min_gain=-1.0, resume=True)
    fallbacks = [[(t["key"], t["decision"], t["reason"].split("; on the ")[1:])
                  for t in r["trials"][2:] if t.get("observation")] for r in (first, again)]
    assert fallbacks[0] and fallbacks[0] == fallbacks[1]
    assert all(len(note) == 1 for _, _, note in fallbacks[1])  # one note each, not repeated
