"""What a trial of a model that generates costs: only what decides something is measured
(no batch-1 latency runs; a quality pass of a fixed amount of held-out text, in tokens),
a llama.cpp quantizer build is priced per GB of the model until one is timed, and the
refusal's smallest budget counts a first step's build. Costs are injected; no timing is
asserted."""
import dataclasses

import pytest
from test_planner_end import _planner, _trial

from reactinfer.backends.llamacpp import QUANT_S_PER_GB
from reactinfer.core.errors import UserError
from reactinfer.measure.harness import measure
from reactinfer.planner import endplan, lmquality, stepcost
from reactinfer.planner.actions import Candidate
from reactinfer.planner.record import Decision
from reactinfer.planner.report import _sizing_line
from reactinfer.testing import tiny_handle, tiny_texts


class _Words:
    """A tokenizer stand-in: one token per word."""

    def __call__(self, text):
        return {"input_ids": list(range(len(text.split())))}


def test_the_quality_pass_takes_the_first_texts_that_hold_the_tokens_asked():
    texts = [" ".join(["w"] * 30) for _ in range(200)]
    picked, tokens = lmquality.quality_texts(texts, _Words(), 512, tokens=300)
    assert len(picked) == 10 and tokens == 300 and picked == texts[:10]
    # long texts: never fewer than MIN_TEXTS; texts are cut at max_length as scored
    picked, tokens = lmquality.quality_texts(texts, _Words(), 20, tokens=50)
    assert len(picked) == lmquality.MIN_TEXTS and tokens == 20 * lmquality.MIN_TEXTS
    # fewer tokens than asked: all of them
    picked, tokens = lmquality.quality_texts(texts[:12], _Words(), 512, tokens=10_000)
    assert len(picked) == 12 and tokens == 12 * 30


def test_only_a_model_that_generates_is_judged_as_served():
    from reactinfer.tasks import get_task

    assert lmquality.judged_as_served(get_task("causal-lm"))
    assert not lmquality.judged_as_served(get_task("embedding"))


def test_a_measurement_without_latency_runs_has_no_latency_figures():
    handle = tiny_handle("causal-lm")
    report, results = measure(handle, tiny_texts(12), 4, 0, gen_tokens=0, progress=False)
    assert "latency_ms" not in report and report["throughput"]["items_per_s"] > 0
    assert len(results["nll"]) == 12


def _gguf_trial(key, parent, outtype, build_s, size_mb=94.0):
    t = _trial(key, parent, size_mb, 0.0, 10.0)
    t.candidate = {"transforms": [], "backend": "llama.cpp",
                   "backend_options": {"outtype": outtype}}
    t.observation["timing"]["build_s"] = build_s
    return t


def test_a_llama_cpp_quantizer_build_is_priced_per_gb_until_one_is_timed():
    base = _gguf_trial("base", None, "source", 0.0)
    q4 = Candidate(backend="llama.cpp", options='{"outtype": "q4_k_m"}')
    cost = stepcost.predict_build([base], q4, 300.0)
    # the prior, per GB of the original: not a share of the (much longer) measurement
    assert cost.full == pytest.approx(QUANT_S_PER_GB * 94.0 / 1024)
    assert cost.least == cost.full and "per GB of the original" in cost.why
    # once one type was made here, the longest such build is the prediction
    q8 = _gguf_trial("q8", "base", "q8_0", 15.0, size_mb=138.0)
    cost = stepcost.predict_build([base, q8], q4, 300.0)
    assert cost.full == 15.0 and "the longest llama.cpp build of its kind" in cost.why
    # a build cut at its deadline counts with the time it ran
    cut = dataclasses.replace(_gguf_trial("q6", "base", "q6_k", 0.0), observation=None,
                              decision=Decision.SKIPPED, seconds=40.0)
    assert stepcost.predict_build([base, q8, cut], q4, 300.0).full == 40.0
    # the packaged file itself is no quantizer build: the float-conversion path
    src = Candidate(backend="llama.cpp", options='{"outtype": "source"}')
    assert "per GB" not in stepcost.predict_build([base], src, 300.0).why


def test_the_smallest_budget_named_counts_a_first_steps_build():
    base = _trial("base", None, 100.0, 0.0, 10.0, action="baseline")
    p = _planner([base], total_s=60.0, left_s=40.0, per_mb=0.1)
    with pytest.raises(UserError, match="too small") as e:
        endplan.check_whole(p)
    without = int(str(e.value).split("give --budget-s ")[1].split()[0])
    p = _planner([base], total_s=60.0, left_s=40.0, per_mb=0.1)
    p.first_build_s = lambda: 200.0
    with pytest.raises(UserError, match=r"a step would take ~\d+s") as e:
        endplan.check_whole(p)
    named = int(str(e.value).split("give --budget-s ")[1].split()[0])
    assert named >= without + 200
    # with the budget named, the same costs pass
    ok = _planner([base], total_s=named, left_s=named - 20.0, per_mb=0.1)
    ok.first_build_s = lambda: 200.0
    endplan.check_whole(ok)


def test_the_report_says_the_quality_pass_is_sized_in_tokens():
    data = {"task": "causal-lm", "settings": {"n_eval": 400, "latency_runs": 30},
            "search": {"n_texts": 71, "latency_runs": 0, "quality_tokens": 2051}}
    line = _sizing_line(data)[0]
    assert "71 held-out texts, 2051 tokens" in line and "no batch-1 latency runs" in line
    data["search"]["quality_tokens"] = None  # --n-eval given: as asked
    assert "(as asked)" in _sizing_line(data)[0]



def test_scoring_takes_one_thread_on_an_oversubscribed_machine(monkeypatch):
    from reactinfer.backends import llamacpp

    monkeypatch.setattr(llamacpp.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(llamacpp.os, "getloadavg", lambda: (7.5, 7.0, 6.0))
    assert llamacpp.scoring_threads(2) == 1
    monkeypatch.setattr(llamacpp.os, "getloadavg", lambda: (2.0, 2.0, 2.0))
    assert llamacpp.scoring_threads(2) == 2


def test_scores_are_the_same_on_one_thread_and_the_threads_are_given_back(
        monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    import llama_cpp
    import numpy as np

    from reactinfer.backends import llamacpp, to_backend
    from reactinfer.tasks import get_task

    h = to_backend(tiny_handle("causal-lm", hidden=64, intermediate=128), "llama.cpp",
                   outtype="q8_0", threads=2, workdir=tmp_path)
    runner, texts, task = h.runner(), tiny_texts(6), get_task("causal-lm")
    out = {}
    for load in (0.0, 99.0):
        monkeypatch.setattr(llamacpp.os, "getloadavg", lambda load=load: (load, load, load))
        out[load] = task.evaluate(runner, h.tokenizer, texts, 4, h.max_length)
        assert llama_cpp.llama_n_threads(runner.llm._ctx.ctx) == 2  # as served again
    assert np.array_equal(out[0.0]["nll"], out[99.0]["nll"])
    assert np.array_equal(out[0.0]["argmax"], out[99.0]["argmax"])


def test_a_gguf_run_scores_a_fixed_amount_of_text_and_runs_no_latency_runs(
        monkeypatch, tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from test_planner_gguf import _gguf_actions

    from reactinfer.backends.gguf_convert import convert_to_gguf
    from reactinfer.models import load
    from reactinfer.planner import optimize

    path = convert_to_gguf(tiny_handle("causal-lm", hidden=64, intermediate=128),
                           tmp_path / "tiny-q8.gguf", "q8_0")
    data = tmp_path / "data.txt"
    data.write_text("\n".join(f"{t} {i}" for i, t in enumerate(tiny_texts(10) * 30)))
    monkeypatch.setattr(lmquality, "QUALITY_TOKENS", 150)
    out = tmp_path / "run"
    rep = optimize(load(path), data=str(data), out=out, batch_size=4, confirm_n_eval=0,
                   progress=False, budget_s=300, streams=2, gen_tokens=4,
                   actions=_gguf_actions()[:2])
    search = rep["search"]
    assert search["latency_runs"] == 0 and search["quality_tokens"] >= 150
    assert lmquality.MIN_TEXTS <= search["n_texts"] < 300  # not the 400 texts asked
    measured = [t for t in rep["trials"] if t.get("observation")]
    assert len(measured) >= 2 and not any("latency_ms" in t["observation"] for t in measured)
    md = (out / "report.md").read_text()
    assert f"quality pass scored {search['n_texts']} held-out texts" in md
    assert "perplexity ratio with its 95% interval" in md


def test_the_docs_give_the_figures_the_code_uses():
    from pathlib import Path

    doc = " ".join((Path(__file__).parents[2] / "docs" / "planner.md").read_text().split())
    assert f"hold {lmquality.QUALITY_TOKENS:,} tokens" in doc
    assert f"at {QUANT_S_PER_GB:g} s per GB of the original" in doc
