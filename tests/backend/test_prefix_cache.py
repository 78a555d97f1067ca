"""The decode engine's prefix cache (backends/llamacpp_engine.py): a prompt that shares a
prefix with what a slot's KV stream holds evaluates only the rest, from an idle slot in
place, from a running sequence's stream by copy, or after an earlier prompt of the same
burst has evaluated it; and the greedy answer is the one of a fresh engine, token for
token (the logits of a reused prefix are bit-identical). On a tiny GGUF built here and,
where its package is installed, the built-in smollm2 (Q4_1: the quantized kernels)."""
from __future__ import annotations

import pytest

pytest.importorskip("llama_cpp")
STEP = 32  # tokens per engine step: the prompts here take two


@pytest.fixture(scope="module")
def make(gguf_llm):
    from reactinfer.backends.llamacpp_engine import DecodeEngine

    llm, ids = gguf_llm

    def engine(slots=3, cache_tokens=None):
        # one thread: a loaded shared machine stalls llama.cpp's spinning thread pool
        return DecodeEngine(llm._model, llm.n_vocab(), 1, 128, slots, STEP, cache_tokens)

    return engine, ids


def greedy(eng, prompts, n=6):
    """Greedy answers of prompts started together; the tokens each step evaluated."""
    sids = [eng.start(p, n) for p in prompts]
    out: dict[int, list[int]] = {s: [] for s in sids}
    evaluated = []
    while any(len(t) < n for t in out.values()):
        step = eng.step()
        evaluated.append(step.tokens)
        for s, logits in step.logits.items():
            out[s].append(int(logits.argmax()))
            if len(out[s]) < n:
                eng.feed(s, out[s][-1])
    for s in sids:
        eng.release(s)
    return [out[s] for s in sids], evaluated


def test_a_second_turn_evaluates_only_its_new_tokens(make):
    engine, ids = make
    system, q1, q2 = ids[:40], ids[40:50], ids[50:58]
    eng = engine()
    (a1,), _ = greedy(eng, [system + q1])
    turn2 = system + q1 + a1 + q2
    (a2,), evaluated = greedy(eng, [turn2])
    # the answer's last token was sampled, never evaluated: it is evaluated again
    assert evaluated[0] == len(q2) + 1 and sum(evaluated) == len(q2) + 1 + 5
    fresh = engine(cache_tokens=0)
    (ref,), evaluated = greedy(fresh, [turn2])
    assert a2 == ref and evaluated[:2] == [STEP, len(turn2) - STEP]  # no reuse: all of it
    step = eng.step()  # the lookups are counted in the next step
    assert (step.lookups, step.hits, step.saved) == (0, 0, 0)


def test_prompts_share_a_prefix_across_streams_and_within_a_burst(make):
    engine, ids = make
    system = ids[:40]
    prompts = [system + ids[40 + 7 * i:47 + 7 * i] for i in range(3)]
    refs = [greedy(engine(cache_tokens=0), [p])[0][0] for p in prompts]
    eng = engine()
    answers, evaluated = greedy(eng, prompts)  # cold: the 2nd and 3rd wait for the 1st
    assert answers == refs
    assert sum(evaluated) == len(prompts[0]) + 2 * 7 + 3 * 5
    stats = eng.step()
    assert stats.tokens == 0  # nothing running; the burst's counts came with its steps
    # a running sequence's stream is copied: the first holds the prefix while the second
    # starts
    eng2 = engine()
    a = eng2.start(prompts[0], 6)
    eng2.step(), eng2.step()  # its prompt is in (32 + 15 tokens)
    b = eng2.start(prompts[1], 3)
    step = eng2.step()
    assert step.tokens == 7 and (step.lookups, step.hits, step.saved) == (1, 1, 40)
    assert set(step.logits) == {b}
    eng2.release(a)
    out = [int(step.logits[b].argmax())]
    for _ in range(2):
        eng2.feed(b, out[-1])
        out.append(int(eng2.step().logits[b].argmax()))
    assert out == refs[1][:3]


def test_a_prompt_waits_for_an_earlier_one_only_when_that_saves_many_tokens(make):
    """8 chats on a cached system prompt whose questions share a first word: each copies
    the prefix at hand and starts at once, none waits a step for another's question."""
    from reactinfer.backends.llamacpp_engine import WAIT_MIN_TOKENS

    engine, ids = make
    system = ids[:40]
    p1 = system + ids[40:45]
    p2 = system + ids[40:42] + ids[50:53]  # 2 more tokens in common with p1: too few to wait for
    assert WAIT_MIN_TOKENS > 2
    refs = [greedy(engine(cache_tokens=0), [p])[0][0] for p in (p1, p2)]
    eng = engine()
    greedy(eng, [system + [ids[60]]])  # an idle slot now holds the system prompt
    s1, s2 = eng.start(p1, 6), eng.start(p2, 6)
    step = eng.step()
    assert set(step.logits) == {s1, s2}  # both in the first step: no wait
    assert step.tokens == 5 + 5 and step.saved == 2 * 40  # p2 evaluates its 2 again
    eng.release(s1), eng.release(s2)
    answers, _ = greedy(eng, [p1, p2])  # again, from what the streams now hold
    assert answers == refs


def test_a_burst_on_a_short_system_prompt_evaluates_it_once(make):
    """Chats on a model's own short system prompt (smollm2's is 30 tokens) arriving
    together: the later ones wait a step for the first to evaluate it, the same answers."""
    engine, ids = make
    system = ids[:30]
    prompts = [system + ids[40 + 5 * i:45 + 5 * i] for i in range(3)]
    refs = [greedy(engine(cache_tokens=0), [p])[0][0] for p in prompts]
    answers, evaluated = greedy(engine(), prompts)
    assert answers == refs
    assert sum(evaluated) == 30 + 3 * 5 + 3 * 5  # prompts, then 5 fed tokens each


def test_idle_caches_are_bounded_least_recently_used_first(make):
    engine, ids = make
    p1, p2 = ids[:20], ids[20:40]
    eng = engine(slots=2, cache_tokens=30)
    greedy(eng, [p1])
    assert eng.cached_tokens == 20 + 5
    greedy(eng, [p2])  # 2 x 25 > 30: p1's slot is dropped
    assert eng.cached_tokens == 25
    _, evaluated = greedy(eng, [p1 + [7]])
    assert evaluated[0] == 21  # p1 was evicted
    _, evaluated = greedy(eng, [p2 + [7]])
    assert evaluated[0] == 21  # and then p2, the least recently used
    assert eng.cached_tokens == 26
    off = engine(cache_tokens=0)
    greedy(off, [p1])
    assert off.cached_tokens == 0
    with pytest.raises(ValueError):
        engine(cache_tokens=-1)


def test_a_step_lays_its_sequences_out_in_slot_order(make):
    """llama.cpp runs a step on per-sequence streams in one pass per run of consecutive
    sequence ids: the step writes its tokens in slot order, whatever order the sequences
    joined in, and a new sequence takes the lowest empty slot."""
    engine, ids = make
    eng = engine(slots=3, cache_tokens=0)
    a, b, c = (eng.start(ids[i * 10:i * 10 + 5], 4) for i in range(3))
    assert (a, b, c) == (0, 1, 2)
    eng.step()
    eng.release(a)
    d = eng.start(ids[50:55], 4)  # joins last, in the lowest slot
    assert d == 0
    for sid in (b, c):
        eng.feed(sid, ids[60])
    eng.step()
    batch = eng._batch
    order = [batch.seq_id[i][0] for i in range(batch.n_tokens)]
    assert order == sorted(order) and set(order) == {0, 1, 2}
