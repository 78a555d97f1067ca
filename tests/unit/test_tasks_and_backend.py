import copy

import numpy as np
import pytest
import torch

from reactinfer.core.backend import get_backend, list_backends
from reactinfer.core.errors import UserError
from reactinfer.tasks import get_task, iter_batches, tokenize
from reactinfer.tasks.causal_lm import next_token_stats
from reactinfer.tasks.embedding import neighbour_recall
from reactinfer.testing import tiny_handle, tiny_tokenizer


def test_dynamic_padding_pads_to_longest_in_batch_only():
    tok = tiny_tokenizer()
    b = tokenize(tok, ["a b", "a b c d e"], max_length=64)
    assert b["input_ids"].shape == (2, 7)  # [CLS] 5 words [SEP]
    assert b["input_ids"].dtype == np.int64


def test_length_bucketing_covers_every_text_once(texts):
    seen = []
    lengths = []
    for idx, batch in iter_batches(tiny_tokenizer(), texts, 5, 64):
        seen += list(idx)
        lengths.append(batch["input_ids"].shape[1])
    assert sorted(seen) == list(range(len(texts)))
    assert lengths == sorted(lengths, reverse=True)


def test_embedding_matches_manual_mean_pooling(texts):
    h = tiny_handle("embedding")
    out = get_task("embedding").evaluate(h.runner(), h.tokenizer, texts, 4, 64)["embeddings"]
    enc = h.tokenizer(texts[:1], return_tensors="pt")
    with torch.no_grad():
        hidden = h.model(**enc).last_hidden_state[0]
    manual = torch.nn.functional.normalize(hidden.mean(0), dim=0).numpy()
    np.testing.assert_allclose(out[0], manual, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


def test_identical_model_has_perfect_quality(texts):
    # The same weights in a second, independently built model, run at another batch size
    # (other padding, other length buckets): quality must still read as identical.
    for task in ("embedding", "classification", "causal-lm"):
        h, twin = tiny_handle(task), tiny_handle(task)
        assert h.model is not twin.model
        t = get_task(task)
        ref = t.evaluate(h.runner(), h.tokenizer, texts, 4, 64)
        cand = t.evaluate(twin.runner(), twin.tokenizer, texts, 1, 64)
        q = t.compare(ref, cand)
        assert t.drop(q) == pytest.approx(0.0, abs=1e-5), (task, q)


def test_different_model_has_lower_quality(texts):
    t = get_task("embedding")
    a, b = tiny_handle("embedding", seed=0), tiny_handle("embedding", seed=1)
    q = t.compare(t.evaluate(a.runner(), a.tokenizer, texts, 4, 64),
                  t.evaluate(b.runner(), b.tokenizer, texts, 4, 64))
    assert q["mean_cosine"] < 0.99
    assert t.drop(q) > 0.01


def test_next_token_stats_matches_torch_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    ids = rng.integers(0, 7, size=(2, 5))
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    nll, count, argmax = next_token_stats(logits, ids, mask)
    assert list(count) == [4, 2]
    ce = torch.nn.functional.cross_entropy(torch.tensor(logits[0, :-1]), torch.tensor(ids[0, 1:]),
                                           reduction="sum")
    assert nll[0] == pytest.approx(float(ce), rel=1e-5)
    assert len(argmax[1]) == 2


def test_neighbour_recall_is_one_for_same_and_low_for_random():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(50, 8))
    assert neighbour_recall(e, e) == 1.0
    assert neighbour_recall(e, rng.normal(size=(50, 8))) < 0.5


def test_generate_is_greedy_and_deterministic():
    h = tiny_handle("causal-lm")
    ids = h.tokenizer("open the archive")["input_ids"]
    a = h.runner().generate(ids, 5)
    assert a == h.runner().generate(ids, 5)
    assert len(a) == 5


def test_backend_registry():
    assert "torch" in list_backends()
    with pytest.raises(UserError, match="unknown backend"):
        get_backend("nope")


def test_torch_backend_rejects_unknown_options():
    h = tiny_handle("embedding").derive(backend_options={"bogus": 1})
    with pytest.raises(UserError, match="unknown option"):
        h.runner()


def test_backend_base_class_gives_every_default():
    from reactinfer.backends import to_backend
    from reactinfer.core import backend as registry
    from reactinfer.core.backend import Backend, backend_options, register_backend

    class Minimal(Backend):
        name = "test-minimal"
        description = "torch eager under another name"

        def prepare(self, handle, **opts):
            return get_backend("torch").prepare(handle)

    b = register_backend(Minimal())
    try:
        assert b.available() and b.why_unavailable() == "" and b.precision_option is None
        assert backend_options(b) == {} and not b.writes_files
        h = to_backend(tiny_handle("embedding"), "test-minimal")
        assert h.backend == "test-minimal" and h.backend_options == {}
        with pytest.raises(UserError, match="unknown option"):
            to_backend(tiny_handle("embedding"), "test-minimal", threads=2)
    finally:  # other tests list the registered backends
        registry._BACKENDS.pop("test-minimal")
    with pytest.raises(TypeError, match="Backend subclass"):
        register_backend(object())  # type: ignore[arg-type]


def test_batches_are_bucketed_by_token_count_not_characters():
    # characters mislead: one long unknown word is 1 token, short words are 1 token each
    tok = tiny_tokenizer()
    texts = ["x" * 60, "a b c d e f g h", "y" * 50, "a b c d e f g"]
    widths = [b["input_ids"].shape[1] for _, b in iter_batches(tok, texts, 2, 64)]
    assert widths == [10, 3]  # [CLS] 8 words [SEP] beside 7 words; the two 1-word texts


@pytest.mark.parametrize("side", ["right", "left"])
def test_length_sorted_batches_equal_tokenizing_each_batch(texts, side):
    tok = copy.deepcopy(tiny_tokenizer())
    tok.padding_side = side
    for idx, batch in iter_batches(tok, texts, 5, 64):
        ref = tokenize(tok, [texts[i] for i in idx], 64)
        assert batch.keys() == ref.keys()
        for k in ref:
            np.testing.assert_array_equal(batch[k], ref[k])


def test_length_sorted_run_returns_outputs_in_input_order(texts):
    # each text alone (no padding, no sorting) against the bucketed batches of 7
    h = tiny_handle("embedding")
    runner = h.runner()
    mixed = [texts[i % len(texts)] + " and" * (i % 5) for i in range(len(texts))]
    out = get_task("embedding").evaluate(runner, h.tokenizer, mixed, 7, 64)["embeddings"]
    alone = np.concatenate([runner(tokenize(h.tokenizer, [t], 64)) for t in mixed])
    np.testing.assert_allclose(out, alone, rtol=1e-4, atol=1e-5)
