"""llama.cpp scores perplexity in place: the same figures as from its full logits."""
import numpy as np
import pytest

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.core.backend import list_backends
from reactinfer.tasks import get_task, tokenize
from reactinfer.tasks.causal_lm import scores_from_logits
from reactinfer.testing.tiny import tiny_model, tiny_tokenizer


def test_llama_cpp_scoring_in_place_equals_its_full_logits(texts):
    backend = list_backends()["llama.cpp"]
    if not backend.available():
        pytest.skip(f"llama.cpp is not available here: {backend.why_unavailable()}")
    handle = ri.load(tiny_model("causal-lm", hidden=64, heads=2, intermediate=128),
                     task="causal-lm", tokenizer=tiny_tokenizer(), name="tiny-llama",
                     max_length=64)
    runner = to_backend(handle, "llama.cpp", outtype="f32").runner()
    runner.llm.n_batch = 5  # several decoded chunks per text (the chunk edges are scored)
    b = tokenize(handle.tokenizer, texts[:6], handle.max_length)
    batch = {k: b[k] for k in ("input_ids", "attention_mask")}
    nll, argmax = runner.score(batch)
    ref_nll, ref_argmax = scores_from_logits(runner(batch), batch["input_ids"])
    valid = (batch["attention_mask"][:, 1:] * batch["attention_mask"][:, :-1]).astype(bool)
    assert valid.sum() > 20
    np.testing.assert_allclose(nll[valid], ref_nll[valid], rtol=1e-4, atol=1e-4)
    assert (argmax[valid] == ref_argmax[valid]).all()
    # and the task's perplexity is the same through either path
    task = get_task("causal-lm")
    a = task.evaluate(runner, handle.tokenizer, texts[:6], 3, handle.max_length)
    full = task.evaluate(lambda x: runner(x), handle.tokenizer, texts[:6], 3, handle.max_length)
    assert task.perplexity(a) == pytest.approx(task.perplexity(full), rel=1e-5)
