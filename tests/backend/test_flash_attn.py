"""llama.cpp's flash attention in the decode engine (backends/llamacpp_engine.py): "off"
gives llama-cpp-python's `Llama` (whose default it is) its very logits, bit for bit, and
so its greedy tokens; "auto", llama.cpp's own default, turns it on (other numerics);
anything else is refused at the door."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
N_CTX, NEW = 128, 24


def last_row(llm) -> np.ndarray:
    return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(llm.n_vocab(),)).copy()


def llama_greedy(path: str, prompt: list[int], n: int) -> tuple[np.ndarray, list[int]]:
    """llama-cpp-python alone, its defaults: the first row of logits, greedy tokens."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=N_CTX, n_batch=32, n_threads=1, verbose=False)
    llm.eval(list(prompt))
    first, out = last_row(llm), []
    for _ in range(n):
        out.append(int(last_row(llm).argmax()))
        llm.eval([out[-1]])
    return first, out


def engine_greedy(llm, prompt: list[int], n: int, flash_attn: str
                  ) -> tuple[np.ndarray, list[int]]:
    from reactinfer.backends.llamacpp_engine import DecodeEngine

    eng = DecodeEngine(llm._model, llm.n_vocab(), 1, N_CTX, 2, 32, flash_attn=flash_attn)
    sid, first, out = eng.start(prompt, n), None, []
    while len(out) < n:
        logits = eng.step().logits.get(sid)
        if logits is not None:
            first = logits.copy() if first is None else first
            out.append(int(logits.argmax()))
            if len(out) < n:
                eng.feed(sid, out[-1])
    return first, out


def test_flash_attention_off_gives_llama_cpp_pythons_very_logits(gguf_llm):
    llm, ids = gguf_llm
    prompt = ids[:60]
    ref_first, ref = llama_greedy(llm.model_path, prompt, NEW)
    first, out = engine_greedy(llm, prompt, NEW, "off")
    assert np.array_equal(first, ref_first) and out == ref
    first_auto, _ = engine_greedy(llm, prompt, NEW, "auto")
    assert not np.array_equal(first_auto, ref_first)  # flash attention on: other numerics


def test_a_bad_flash_attention_setting_is_refused(gguf_llm):
    from reactinfer.backends.llamacpp_engine import FLASH_ATTN, DecodeEngine
    from reactinfer.core.errors import UserError
    from reactinfer.serving.config import FLASH_ATTN_MODES, ServeConfig

    assert set(FLASH_ATTN_MODES) == set(FLASH_ATTN)  # the config's names are the engine's
    llm, _ = gguf_llm
    with pytest.raises(ValueError, match="flash_attn"):
        DecodeEngine(llm._model, llm.n_vocab(), 1, N_CTX, 2, 32, flash_attn="yes")
    with pytest.raises(UserError, match="flash_attn"):
        ServeConfig(flash_attn="yes")
    assert ServeConfig(flash_attn="off").engine_options()["flash_attn"] == "off"
