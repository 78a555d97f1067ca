"""Speculative decoding with a draft model (serving/speculate.py's DraftModel) on llama.cpp's
decode engine: the draft keeps a sequence in step with each target sequence on its own
engine (rewound to what the target accepted, `DecodeEngine.resume`), proposes k greedy
tokens for all sequences in shared draft steps, and the target's greedy answer is token
for token the one without speculation. With the same tiny GGUF as its own draft (its
drafts are accepted) and another tiny GGUF of the same vocabulary (they are refused);
several sequences at once, max_tokens cutting a draft short; no draft sequence outlives
its target. The vocabulary check refuses a draft of another vocabulary."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from reactinfer.core.errors import UserError
from reactinfer.serving.speculate import Speculation, check_vocabulary
from reactinfer.tasks.sampling import Sampling

pytest.importorskip("llama_cpp")
STEP, CTX = 32, 160


def _tiny_gguf(tmp_path_factory, noise):
    """A tiny Llama without tied embeddings (a tied one answers its last token over and
    over, whatever its weights); `noise` perturbs its weights: a draft that mostly agrees."""
    import torch

    from reactinfer.backends.convert import to_backend
    from reactinfer.testing import tiny_handle

    h = tiny_handle("causal-lm", tied=False)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in h.model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    return to_backend(h, "llama.cpp", outtype="f32", workdir=tmp_path_factory.mktemp("gguf"))


class Runner:
    """What DraftModel needs of a runner: decode engines over one loaded GGUF."""

    def __init__(self, handle):
        from llama_cpp import Llama

        self.handle = handle
        self.llm = Llama(model_path=str(handle.files["model.gguf"]), n_ctx=64, n_threads=1,
                         verbose=False)

    def decode_engine(self, slots, step_tokens, kv_memory_gb=None, context=None,
                      flash_attn="auto"):
        from reactinfer.backends.llamacpp_engine import DecodeEngine

        return DecodeEngine(self.llm._model, self.llm.n_vocab(), 1, context or CTX, slots,
                            step_tokens, 0, flash_attn=flash_attn)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Runner(_tiny_gguf(tmp_path_factory, 0.0)), Runner(_tiny_gguf(tmp_path_factory, 0.005))


def _seq(prompt, n, eng):
    req = SimpleNamespace(prompt_ids=list(prompt), constraint=None,
                          job=SimpleNamespace(new_tokens=n))
    return SimpleNamespace(req=req, sampling=Sampling(), tokens=[], accept_rate=1.0,
                           draft_len=0, drafted_at=0,
                           variant=SimpleNamespace(engine=eng, draft_engine=None), sid=-1)


def greedy(eng, prompts, n, spec=None):
    """Greedy answers of prompts decoded together on `eng`, drafts from `spec`; the draft
    tokens proposed and accepted in all."""
    ds = [_seq(p, n, eng) for p in prompts]
    for d in ds:
        d.sid = eng.start(d.req.prompt_ids, n)
    live, proposed, accepted = list(ds), 0, 0
    while live:
        step = eng.step()
        going = []
        for d in live:
            if d.sid not in step.logits:
                going.append(d)  # still evaluating its prompt
                continue
            draft, rows = step.drafts.get(d.sid, ([], [step.logits[d.sid]]))
            ok = 0
            for i, row in enumerate(rows):
                d.tokens.append(int(row.argmax()))
                if len(d.tokens) == n or i == len(draft) or d.tokens[-1] != draft[i]:
                    break
                ok += 1
            proposed, accepted = proposed + len(draft), accepted + ok
            if len(d.tokens) == n:
                eng.release(d.sid)
                if spec is not None:
                    spec.release(d)
                continue
            if draft:
                eng.accept(d.sid, ok)
            going.append(d)
        ready = [d for d in going if d.sid in step.logits]
        drafts = spec.propose_all(ready, len(going)) if spec is not None else [[]] * len(ready)
        for d, draft in zip(ready, drafts, strict=True):
            assert len(draft) <= n - len(d.tokens) - 1  # never past max_tokens
            eng.feed(d.sid, d.tokens[-1], draft)
        live = going
    return [d.tokens for d in ds], proposed, accepted, ds[0].variant


@pytest.fixture(scope="module")
def prompts():
    ids = np.random.default_rng(0).integers(5, 90, 200).tolist()
    return [ids[:25], ids[40:52], ids[60:90], ids[100:103]]


@pytest.mark.parametrize("k", [3, 5])
def test_a_draft_model_gives_the_greedy_answer_token_for_token(models, prompts, k):
    target, other = models
    n = 17  # not a multiple of k + 1: the last draft is cut short by max_tokens
    refs = [greedy(target.decode_engine(3, STEP), [p], n)[0][0] for p in prompts]
    for draft, agrees in ((target, True), (other, False)):
        spec = Speculation("draft", k, draft=draft)
        eng = target.decode_engine(4, STEP)
        answers, proposed, accepted, v = greedy(eng, prompts, n, spec)
        assert answers == refs
        assert proposed > 0
        if agrees:  # itself as its draft: (nearly) every token is accepted
            assert accepted >= 0.9 * proposed
        else:  # another model: some are refused, and the answer is still the target's
            assert 0 < accepted < proposed
        assert v.draft_engine.running == 0 and not spec.proposer.seqs  # nothing leaks
        again, *_ = greedy(eng, prompts[:2], n, spec)  # the engines are sound after it
        assert again == refs[:2]
        assert v.draft_engine.running == 0


def test_auto_prefers_the_draft_model_and_stops_under_load(models, prompts):
    target, _ = models
    auto = Speculation("auto", 4, draft=target)
    assert auto.source == "draft" and Speculation("auto", 4).source == "lookup"
    eng = target.decode_engine(4, STEP)
    three = [p[:8] for p in prompts[:3]]  # evaluated in one step: they decode in lockstep
    refs = [greedy(eng, [p], 9)[0][0] for p in three]
    answers, proposed, _, _ = greedy(eng, three, 9, auto)
    assert answers == refs and proposed == 0  # 3 decoding: over auto's limit
    answers, proposed, _, v = greedy(eng, three[:2], 9, auto)
    assert answers == refs[:2] and proposed > 0
    assert v.draft_engine.running == 0


def test_a_draft_of_another_vocabulary_is_refused(models):
    target, other = models
    a = SimpleNamespace(n_vocab=100, token_texts=lambda ids: [f"t{i}" for i in ids])
    b = SimpleNamespace(n_vocab=101, token_texts=a.token_texts)
    c = SimpleNamespace(n_vocab=100, token_texts=lambda ids: [f"t{i}" if i < 50 else "x"
                                                              for i in ids])
    check_vocabulary(a, a, ("m", "d"))
    with pytest.raises(UserError, match="101 tokens, m 100"):
        check_vocabulary(a, b, ("m", "d"))
    with pytest.raises(UserError, match="token .* is 'x' in d"):
        check_vocabulary(a, c, ("m", "d"))
