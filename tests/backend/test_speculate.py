"""Speculative decoding on the decode engine (backends/llamacpp_engine.py) with prompt
lookup drafts (serving/speculate.py): the target verifies a draft in one decode, the
rejected part leaves the KV stream, and the greedy answer is token for token the one
without speculation; alone and several sequences at once, with drafts that are accepted
(a prompt that repeats) and rejected (one that does not). On a tiny GGUF built here and,
where its package is installed, the built-in smollm2 (Q4_1: the quantized kernels)."""
from __future__ import annotations

import pytest

from reactinfer.serving.speculate import lookup

pytest.importorskip("llama_cpp")
STEP = 32


@pytest.fixture(scope="module")
def make(gguf_llm):
    from reactinfer.backends.llamacpp_engine import DecodeEngine

    llm, ids = gguf_llm

    def engine(slots=3):
        return DecodeEngine(llm._model, llm.n_vocab(), 1, 160, slots, STEP, 0)

    return engine, ids


def greedy(eng, prompts, n, k=0):
    """Greedy answers of prompts started together, with prompt-lookup drafts of up to k
    tokens; per sequence, (draft tokens proposed, accepted)."""
    sids = [eng.start(p, n) for p in prompts]
    out = {s: [] for s in sids}
    stats = {s: [0, 0] for s in sids}
    full = dict(zip(sids, prompts, strict=True))
    live = set(sids)
    while live:
        step = eng.step()
        for s, logits in step.logits.items():
            draft, rows = step.drafts.get(s, ([], [logits]))
            accepted = 0
            for i, row in enumerate(rows):
                out[s].append(int(row.argmax()))
                if len(out[s]) == n or i == len(draft) or out[s][-1] != draft[i]:
                    break
                accepted += 1
            stats[s][0] += len(draft)
            stats[s][1] += accepted
            if len(out[s]) == n:
                live.discard(s)
                continue
            if draft:
                eng.accept(s, accepted)
            nxt = lookup(full[s] + out[s], min(k, n - len(out[s]) - 1)) if k else []
            eng.feed(s, out[s][-1], nxt)
    for s in sids:
        eng.release(s)
    return [out[s] for s in sids], [stats[s] for s in sids]


def test_lookup_finds_the_latest_longest_ngram():
    assert lookup([1, 2, 3, 9, 1, 2, 3, 7, 5, 1, 2, 3], 2) == [7, 5]
    assert lookup([4, 5, 6, 4], 3) == [5, 6, 4]
    assert lookup([1, 2, 3], 4) == []
    assert lookup([7], 4) == [] and lookup([], 4) == []


def test_drafts_give_the_greedy_answer_token_for_token(make):
    engine, ids = make
    para = ids[:30]
    copy = para + ids[100:104] + para[:12]  # "copy it": the answer should go on with para
    plain = ids[40:70]
    n = 24
    refs = [greedy(engine(), [p], n)[0][0] for p in (copy, plain)]
    for k in (4, 8):
        eng = engine()
        answers, stats = greedy(eng, [copy, plain], n, k)
        assert answers == refs, k
        assert sum(p for p, _ in stats) > 0  # drafts were proposed ...
        alone, _ = greedy(eng, [copy], n, k)  # ... and the engine is sound after them
        assert alone[0] == refs[0]


def test_several_sequences_with_drafts_and_without(make):
    engine, ids = make
    prompts = [ids[:20] + ids[:8], ids[50:75], ids[80:90] * 3]
    n = 20
    refs = [greedy(engine(), [p], n)[0][0] for p in prompts]
    eng = engine()
    answers, stats = greedy(eng, prompts, n, 6)
    assert answers == refs
    assert sum(a for _, a in stats) > 0  # some drafts were right
