"""The real built-in models, loaded from their PyPI packages with no network."""
import pytest

import reactinfer as ri

pytestmark = pytest.mark.integration


def test_minilm_bench_is_plausible():
    r = ri.bench("minilm", batch_size=16, n_eval=64, latency_runs=5, progress=False)
    assert r["task"] == "embedding" and r["params"] == pytest.approx(22.7e6, rel=0.01)
    assert r["quality"]["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert 80 < r["size_mb"] < 100


def test_minilm_matches_sentence_transformers_semantics(minilm):
    from reactinfer.tasks import get_task

    h = minilm

    out = get_task("embedding").evaluate(h.runner(), h.tokenizer,
                                         ["A man is eating food.", "A man is eating a meal.",
                                          "The stock market fell sharply."], 3, 256)["embeddings"]
    sims = out @ out.T
    assert sims[0, 1] > 0.7 > sims[0, 2]


def test_smollm2_loads_and_scores(smollm2):
    r = ri.bench(smollm2, batch_size=4, n_eval=8, latency_runs=2, gen_tokens=8, progress=False)
    assert r["task"] == "causal-lm"
    assert 1.0 < r["quality"]["reference_perplexity"] < 200
    assert r["quality"]["perplexity_ratio"] == pytest.approx(1.0)
    assert r["generation"]["new_tokens"] == 8
