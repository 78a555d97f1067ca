"""Generation pieces without a server: token sampling, incremental detokenisation with
stop strings, and the llama.cpp decode engine's slots and KV reservation."""
from __future__ import annotations

import numpy as np
import pytest

from reactinfer.serving.decode import TextStream
from reactinfer.tasks.sampling import Sampling, pick_token


class ByteTokenizer:
    """Each token is one UTF-8 byte: characters beyond ASCII span several tokens."""

    def decode(self, ids, skip_special_tokens=True):
        return bytes(ids).decode("utf-8", errors="replace")


def stream(text, stop=()):
    ts, out = TextStream(ByteTokenizer(), stop), []
    for b in text.encode():
        out.append(ts.push(b))
        if ts.stopped:
            break
    else:
        out.append(ts.flush())
    return ts, out


def test_multi_byte_characters_leave_whole():
    ts, out = stream("héllo → wörld ✓")
    assert "".join(out) == ts.text == "héllo → wörld ✓"
    assert all("\ufffd" not in piece for piece in out)
    assert out[1] == "" and out[2] == "é"  # the first byte of é waits for the second


@pytest.mark.parametrize("stop,expect", [
    (["wör"], "héllo → "), (["\n", "→"], "héllo "), (["zz"], "héllo → wörld ✓"),
    (["ll", "é"], "h"),
])
def test_stop_strings_never_reach_the_text(stop, expect):
    ts, out = stream("héllo → wörld ✓", stop)
    assert "".join(out) == ts.text == expect
    assert ts.stopped == (expect != "héllo → wörld ✓")


def test_text_that_may_begin_a_stop_string_is_held_back_then_sent():
    ts = TextStream(ByteTokenizer(), ["abc"])
    assert ts.push(ord("a")) == "" and ts.push(ord("b")) == ""
    assert ts.push(ord("x")) == "abx"  # not the stop string after all


def test_sampling_greedy_seeded_and_truncated():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=50).astype(np.float32)
    assert pick_token(logits, Sampling(), rng) == int(np.argmax(logits))
    s = Sampling(temperature=1.5, seed=4)
    a = [pick_token(logits, s, g) for g in [s.rng()] for _ in range(20)]
    b = [pick_token(logits, s, g) for g in [s.rng()] for _ in range(20)]
    assert a == b and len(set(a)) > 1  # the same seed repeats; it does sample
    top3 = set(np.argsort(-logits)[:3].tolist())
    g = np.random.default_rng(1)
    assert {pick_token(logits, Sampling(temperature=5, top_k=3), g) for _ in range(200)} == top3
    peaked = np.array([10.0, 9.0, 0.0, -5.0])  # p ~ (0.73, 0.27, ...)
    assert {pick_token(peaked, Sampling(temperature=1, top_p=0.5), g) for _ in range(50)} == {0}
    assert {pick_token(peaked, Sampling(temperature=1, top_p=0.9), g)
            for _ in range(200)} == {0, 1}


@pytest.mark.parametrize("kw", [{"temperature": -1}, {"top_p": 0}, {"top_p": 1.1},
                                {"top_k": -1}])
def test_sampling_refuses_out_of_range(kw):
    with pytest.raises(ValueError):
        Sampling(**kw)


def test_decode_engine_reserves_kv_and_frees_it(tmp_path):
    pytest.importorskip("llama_cpp")
    from reactinfer.backends.convert import to_backend
    from reactinfer.testing import tiny_handle

    h = to_backend(tiny_handle("causal-lm"), "llama.cpp", outtype="f32", workdir=tmp_path)
    eng = h.runner().decode_engine(2, step_tokens=4)
    eng.cache_tokens = 0  # no prefix reuse here (tests/backend/test_prefix_cache.py)
    assert eng.slots == 2 and eng.n_ctx >= 100
    a = eng.start([5, 6, 7, 8, 9, 10], 4)  # a 6-token prompt: two steps at 4 per step
    assert not eng.step().logits  # chunked prefill: no logits before the prompt is in
    first = eng.step().logits
    assert set(first) == {a}
    assert eng.reserved == 10 and not eng.can_start(eng.n_ctx + 1)
    b = eng.start([5, 6], 3)
    assert not eng.can_start(1)  # both slots taken
    eng.feed(a, int(first[a].argmax()))
    both = eng.step()
    assert set(both.logits) == {a, b} and both.tokens == 3  # decodes a, prefills b
    eng.release(b)
    c = eng.start(list(range(5, 12)), 2)  # 7 prompt tokens
    eng.feed(a, int(both.logits[a].argmax()))
    step = eng.step()  # a's token counts against the budget of 4: 3 of c's prompt
    assert step.tokens == 4 and set(step.logits) == {a} and step.decode_s > 0
    eng.feed(a, int(step.logits[a].argmax()))
    step = eng.step()
    assert step.tokens == 4 and set(step.logits) == {a}  # 3 more of c's prompt
    eng.feed(a, int(step.logits[a].argmax()))
    step = eng.step()
    assert step.tokens == 2 and set(step.logits) == {a, c}  # c's last prompt token
    eng.release(a)
    eng.release(c)
    assert eng.running == 0 and eng.reserved == 0 and eng.can_start(eng.n_ctx)
    assert not eng.can_start(eng.n_ctx + 1)  # no sequence outgrows its KV stream
