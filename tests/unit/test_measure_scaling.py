"""Measurement that scales: perplexity scored by blocks, confidence intervals, a sample
sized to a time budget, reference outputs cached on disk."""
import json
import math
import time

import numpy as np
import pytest
import torch

import reactinfer as ri
from reactinfer.core.errors import UserError
from reactinfer.measure.refcache import (
    META_FILE,
    RESULTS_FILE,
    cached_reference,
    load_reference,
    reference_key,
)
from reactinfer.tasks import get_task, tokenize, within_bound
from reactinfer.tasks.causal_lm import (
    next_token_stats,
    score_rows,
    scores_from_logits,
    torch_next_token_scores,
)
from reactinfer.tasks.stats import Z95, bootstrap_ci, mean_ci, proportion_ci, ratio_ci
from reactinfer.testing import tiny_handle, tiny_texts
from reactinfer.testing.tiny import tiny_model, tiny_tokenizer


def _lm_batch(handle, texts):
    b = tokenize(handle.tokenizer, texts, handle.max_length)
    return {k: b[k] for k in ("input_ids", "attention_mask")}


# -- perplexity by blocks ---------------------------------------------------------------------

def test_score_rows_by_blocks_equals_one_block():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(37, 50)).astype(np.float32) * 5
    target = rng.integers(0, 50, 37)
    whole = score_rows(x, target, block=1000)
    for block in (1, 4, 36):
        nll, argmax = score_rows(x, target, block=block)
        np.testing.assert_allclose(nll, whole[0], rtol=1e-6)
        assert (argmax == whole[1]).all() and (argmax == x.argmax(-1)).all()
    ce = torch.nn.functional.cross_entropy(torch.tensor(x), torch.tensor(target), reduction="none")
    np.testing.assert_allclose(whole[0], ce.numpy(), rtol=1e-5, atol=1e-5)


def test_torch_scoring_by_blocks_equals_full_logits():
    handle = tiny_handle("causal-lm")
    batch = _lm_batch(handle, tiny_texts(6))
    logits = handle.runner()(batch)  # (B, T, V): what the task used to reduce
    ref_nll, ref_argmax = scores_from_logits(logits, batch["input_ids"])
    ids, mask = (torch.from_numpy(batch[k]) for k in ("input_ids", "attention_mask"))
    for block in (1, 3, 1000):
        with torch.inference_mode():
            nll, argmax = torch_next_token_scores(handle.model, ids, mask, block=block)
        valid = (batch["attention_mask"][:, 1:] * batch["attention_mask"][:, :-1]).astype(bool)
        np.testing.assert_allclose(nll[valid], ref_nll[valid], rtol=1e-4, atol=1e-4)
        assert (argmax[valid] == ref_argmax[valid]).all()


def test_causal_lm_evaluate_matches_the_full_logits_statistics():
    handle = tiny_handle("causal-lm")
    texts = tiny_texts(10)
    runner = handle.runner()
    assert runner.score is not None  # the torch runner scores in the engine
    got = get_task("causal-lm").evaluate(runner, handle.tokenizer, texts, 4, handle.max_length)
    batch = _lm_batch(handle, texts)  # one batch: same padding-free statistics per text
    nll, count, argmax = next_token_stats(runner(batch), batch["input_ids"],
                                          batch["attention_mask"])
    np.testing.assert_allclose(got["nll"], nll, rtol=1e-4)
    assert (got["tokens"] == count).all()
    assert (got["argmax"] == np.concatenate(argmax)).all()


def test_a_runner_without_score_is_scored_from_its_logits():
    handle = tiny_handle("causal-lm")
    runner = handle.runner()
    texts = tiny_texts(5)
    task = get_task("causal-lm")
    a = task.evaluate(runner, handle.tokenizer, texts, 2, handle.max_length)
    b = task.evaluate(lambda batch: runner(batch), handle.tokenizer, texts, 2, handle.max_length)
    np.testing.assert_allclose(a["nll"], b["nll"], rtol=1e-4)
    assert (a["argmax"] == b["argmax"]).all()


# -- confidence intervals ---------------------------------------------------------------------

def test_mean_ci_is_the_standard_error_interval():
    x = np.array([0.0, 1.0] * 50)
    lo, hi = mean_ci(x)
    se = math.sqrt(0.25 * 100 / 99) / 10  # sample std (ddof=1) / sqrt(n)
    assert (lo, hi) == pytest.approx((0.5 - Z95 * se, 0.5 + Z95 * se))
    assert mean_ci(np.ones(30)) == [1.0, 1.0]


def test_proportion_ci_is_wilsons_and_never_zero_width():
    lo, hi = proportion_ci(np.ones(100))
    assert hi == 1.0 and lo == pytest.approx(0.963, abs=1e-3)  # 100 of 100
    lo, hi = proportion_ci(np.r_[np.ones(5), np.zeros(5)])  # 5 of 10: Wilson's [0.237, 0.763]
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)


def test_ratio_ci_with_equal_weights_is_the_mean_ci():
    x = np.random.default_rng(1).normal(size=40)
    assert ratio_ci(x, np.ones(40)) == pytest.approx(mean_ci(x))
    # weights scale the ratio, not its relative width
    lo, hi = ratio_ci(2 * x + 2, np.full(40, 2.0))
    assert (lo, hi) == pytest.approx(mean_ci(x + 1))


def test_bootstrap_ci_is_seeded_and_near_the_normal_interval():
    x = np.random.default_rng(2).uniform(size=400)
    a, b = bootstrap_ci(x), bootstrap_ci(x)
    assert a == b  # the same results, the same interval
    lo, hi = mean_ci(x)
    assert a[0] == pytest.approx(lo, abs=0.01) and a[1] == pytest.approx(hi, abs=0.01)


@pytest.mark.parametrize("task", ["embedding", "classification", "causal-lm"])
def test_every_quality_figure_has_an_interval_around_it(task, texts):
    t = get_task(task)
    a, b = tiny_handle(task, seed=0), tiny_handle(task, seed=1)
    q = t.compare(t.evaluate(a.runner(), a.tokenizer, texts, 4, 64),
                  t.evaluate(b.runner(), b.tokenizer, texts, 4, 64))
    assert t.quality_name in q["ci95"]
    for name, (lo, hi) in q["ci95"].items():
        assert lo <= q[name] <= hi and lo < hi, name  # different models: a real spread


def _quality(cosine, ci, recall=1.0, recall_ci=(1.0, 1.0)):
    return {"mean_cosine": cosine, "top10_recall": recall,
            "ci95": {"mean_cosine": list(ci), "top10_recall": list(recall_ci)}}


def test_within_bound_decides_on_the_point_estimate_and_states_its_confidence():
    # drop 0.005 ≤ 0.01, and its interval [0.003, 0.007] is below the bound: confident
    ok, why = within_bound("embedding", _quality(0.995, (0.993, 0.997)), 0.01)
    assert ok and "decided at 95% confidence" in why and "straddles" not in why
    # drop 0.008 ≤ 0.01, but the interval [0.004, 0.012] straddles it: kept, and said so
    ok, why = within_bound("embedding", _quality(0.992, (0.988, 0.996)), 0.01)
    assert ok and "straddles the limit" in why
    # drop 0.012 > 0.01 with a straddling interval: rolled back, and said so
    ok, why = within_bound("embedding", _quality(0.988, (0.985, 0.991)), 0.01)
    assert not ok and "straddles the limit" in why
    # over the bound with confidence
    ok, why = within_bound("embedding", _quality(0.95, (0.94, 0.96)), 0.01)
    assert not ok and "decided at 95% confidence" in why
    # recall below its floor (0.95 for 0.01) while the interval reaches above it
    ok, why = within_bound("embedding", _quality(0.999, (0.998, 1.0), 0.94, (0.92, 0.96)), 0.01)
    assert not ok and "top-10 recall" in why and "straddles" in why
    # a quality without intervals (older stores) is decided as before
    ok, why = within_bound("classification", {"top1_agreement": 0.995}, 0.01)
    assert ok and "95%" not in why


def test_perplexity_ratio_interval_is_in_ratio_space():
    t = get_task("causal-lm")
    tokens = np.array([10, 20, 30, 40])
    ref = {"nll": np.array([10.0, 20.0, 30.0, 40.0]), "tokens": tokens,
           "argmax": np.zeros(100, np.int32)}
    cand = {"nll": ref["nll"] + np.array([1.0, 1.5, 3.5, 4.0]), "tokens": tokens,
            "argmax": np.r_[np.zeros(90, np.int32), np.ones(10, np.int32)]}
    q = t.compare(ref, cand)
    assert q["perplexity_ratio"] == pytest.approx(math.exp(10 / 100))
    lo, hi = q["ci95"]["perplexity_ratio"]
    log_lo, log_hi = ratio_ci(cand["nll"] - ref["nll"], tokens)
    assert (lo, hi) == pytest.approx((math.exp(log_lo), math.exp(log_hi)))
    assert q["token_agreement"] == pytest.approx(0.9)
    # the last text holds all 10 disagreements: per-text agreement 1, 1, 1, 0.75
    alo, ahi = q["ci95"]["token_agreement"]
    assert alo < 0.9 < ahi
    assert (alo, ahi) == pytest.approx(ratio_ci(np.array([10, 20, 30, 30.0]), tokens))


# -- a sample sized to a time budget ----------------------------------------------------------

class _Slow(torch.nn.Module):
    """A tiny encoder that sleeps per text: a fake slow model that counts what it runs."""

    def __init__(self, per_text_s):
        super().__init__()
        self.inner, self.per_text_s, self.seen = tiny_model("embedding"), per_text_s, 0

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        self.seen += len(input_ids)
        time.sleep(self.per_text_s * len(input_ids))
        return self.inner(input_ids=input_ids, attention_mask=attention_mask)


def test_time_budget_sizes_the_sample_to_what_fits():
    slow = _Slow(0.01)
    handle = ri.load(slow, task="embedding", tokenizer=tiny_tokenizer(), name="slow",
                     max_length=32)
    texts = [f"{t} {i}" for i in range(20) for t in tiny_texts(20)][:400]  # 4+ s of sleep
    r = ri.bench(handle, batch_size=8, eval_texts=texts, latency_runs=10, time_budget_s=1.5,
                 progress=False)
    n = r["n_eval"]
    assert n == r["time_budget"]["n_texts"] < len(texts)
    assert n >= 16  # never below two batches
    # what ran (probe, warm-ups, eval, latency runs) kept to about the budget in sleep alone
    assert slow.seen * slow.per_text_s <= 1.5 * 1.3
    assert "ci95" in r["quality"]


def test_time_budget_that_fits_everything_uses_everything():
    slow = _Slow(0.0)
    handle = ri.load(slow, task="embedding", tokenizer=tiny_tokenizer(), name="slow",
                     max_length=32)
    r = ri.bench(handle, batch_size=8, eval_texts=tiny_texts(24), latency_runs=3,
                 time_budget_s=600, progress=False)
    assert r["n_eval"] == 24 and r["time_budget"]["latency_runs"] == 3


def test_time_budget_must_be_positive():
    with pytest.raises(UserError, match="--time-budget-s"):
        ri.bench(tiny_handle("embedding"), eval_texts=tiny_texts(4), time_budget_s=0,
                 progress=False)


# -- reference outputs cached -----------------------------------------------------------------

def test_reference_cache_hit_miss_and_corrupt(tmp_path):
    handle = tiny_handle("causal-lm")
    texts = tiny_texts(6)
    key = reference_key(handle, texts, 4)
    task = get_task("causal-lm")
    calls = []

    def compute():
        calls.append(1)
        return task.evaluate(handle.runner(), handle.tokenizer, texts, 4, handle.max_length)

    first, info = cached_reference(tmp_path, key, compute)
    assert info["cache"] == "measured" and len(calls) == 1
    again, info = cached_reference(tmp_path, key, compute)
    assert info["cache"] == "reused" and len(calls) == 1  # a hit: not measured again
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    # other texts: a miss
    assert load_reference(tmp_path, reference_key(handle, texts[:5], 4)) == (None, "miss")
    # a changed byte: refused by its hash, measured again, and the report says why
    data = bytearray((tmp_path / RESULTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / RESULTS_FILE).write_bytes(bytes(data))
    assert load_reference(tmp_path, key) == (None, "corrupt")
    _, info = cached_reference(tmp_path, key, compute)
    assert info["cache"] == "measured" and "corrupt" in info["note"] and len(calls) == 2
    assert load_reference(tmp_path, key)[0] is not None  # rewritten, valid again
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["key"] == key and len(meta["sha256"]) == 64
