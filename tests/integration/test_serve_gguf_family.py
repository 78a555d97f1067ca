"""A GGUF of another family than Llama, as a user brings it: a tiny Qwen3 (head size not
transformers' Qwen3 default) with a byte-level BPE tokenizer and a chat template, written
by our converter. llama.cpp run alone on the file gives the served greedy text (its own
tokenizer splits the prompt as ours does), a streamed chat uses the file's template, and
transformers reads the file back with the head size the file states (what `react bench
FILE` loads)."""
from __future__ import annotations

import json

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
llama_cpp = pytest.importorskip("llama_cpp")

from test_serve_http import running  # noqa: E402

pytestmark = pytest.mark.integration
TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
# a contraction and digits: llama.cpp's "default" split cuts "I'm" where byte-level BPE does not
PROMPT = "I'm sure the 12 files aren't open"


def _bpe_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from reactinfer.testing.tiny import SENTENCES

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|pad|>", "<|end|>", "<|user|>", "<|assistant|>"]
    tok.train_from_iterator(list(SENTENCES) * 4 + [PROMPT] * 20, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>",
                                   eos_token="<|end|>", chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def qwen3_gguf(tmp_path_factory):
    import torch
    import transformers

    from reactinfer import load
    from reactinfer.backends import to_backend

    tok = _bpe_tokenizer()
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(
        vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, intermediate_size=128,
        max_position_embeddings=256, pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    handle = load(transformers.Qwen3ForCausalLM(cfg).eval(), task="causal-lm", tokenizer=tok,
                  name="tiny-qwen3")
    out = tmp_path_factory.mktemp("qwen3")
    conv = to_backend(handle, "llama.cpp", outtype="f32", workdir=out)
    path = out / "tiny-qwen3.gguf"  # a file on its own, as a user holds it
    conv.files["model.gguf"].rename(path)
    return path


def test_transformers_reads_the_files_head_size(qwen3_gguf):
    from reactinfer import load

    back = load(qwen3_gguf)  # what `react bench FILE` starts from
    assert back.model.config.head_dim == 32
    assert back.model.config.model_type == "qwen3"


def test_served_greedy_is_llama_cpps_own_and_chat_streams(qwen3_gguf):
    llm = llama_cpp.Llama(str(qwen3_gguf), n_ctx=256, verbose=False)
    alone = llm.create_completion(PROMPT, max_tokens=16, temperature=0.0)
    with running([str(qwen3_gguf)], slo_ms=60000, cache_size=0) as s:
        r = s.client.post("/v1/completions",
                          json={"prompt": PROMPT, "max_tokens": 16, "temperature": 0})
        assert r.status_code == 200, r.text
        served = r.json()
        assert served["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]
        assert served["choices"][0]["text"] == alone["choices"][0]["text"]
        chunks = []
        with s.client.stream("POST", "/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "open the file"}],
                "max_tokens": 8, "stream": True}) as resp:
            assert resp.status_code == 200
            chunks = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert chunks[-1] == "[DONE]" and len(chunks) >= 3
    events = [json.loads(c) for c in chunks[:-1]]
    assert events[-1]["usage"]["completion_tokens"] == 8 or \
        events[-1]["choices"][0]["finish_reason"] == "stop"
    # the file's chat template, applied by the server: llama.cpp counts the same prompt
    prompt = llm.tokenize(b"<|user|>open the file<|end|><|assistant|>", add_bos=False,
                          special=True)
    assert events[-1]["usage"]["prompt_tokens"] == len(prompt)
