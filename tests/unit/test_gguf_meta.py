"""The GGUF header reader (models.gguf_meta) and the llama.cpp pre-tokenizer name the GGUF
writer records for a Hugging Face byte-level BPE tokenizer."""
import json

import pytest

from reactinfer.core.errors import UserError

gguf = pytest.importorskip("gguf")


def test_scalars_are_read_and_arrays_skipped(tmp_path):
    from reactinfer.models.gguf_meta import gguf_scalars

    path = tmp_path / "m.gguf"
    w = gguf.GGUFWriter(str(path), "qwen3")
    w.add_key_length(32)
    w.add_token_list([f"t{i}" for i in range(300)])  # string array before the next scalars
    w.add_token_scores([0.5] * 300)
    w.add_rope_freq_base(1e6)
    w.add_add_bos_token(False)
    w.add_chat_template("{{ messages }}")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    meta = gguf_scalars(path)
    assert meta["general.architecture"] == "qwen3"
    assert meta["qwen3.attention.key_length"] == 32
    assert meta["qwen3.rope.freq_base"] == 1e6
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["tokenizer.chat_template"] == "{{ messages }}"
    assert "tokenizer.ggml.tokens" not in meta
    path.write_bytes(path.read_bytes()[:60])  # cut inside the header
    with pytest.raises(UserError, match="damaged"):
        gguf_scalars(path)
    for junk in (b"not a gguf file at all, just text", b""):
        (tmp_path / "x.gguf").write_bytes(junk)
        with pytest.raises(UserError, match="not a GGUF"):
            gguf_scalars(tmp_path / "x.gguf")


def test_pre_tokenizer_names_follow_the_split():
    from tokenizers import Regex
    from tokenizers import pre_tokenizers as pt

    from reactinfer.backends.gguf_convert import llama_cpp_pre

    def name(pre):
        return llama_cpp_pre(json.loads(pre.__getstate__())) if pre is not None \
            else llama_cpp_pre(None)

    assert name(pt.ByteLevel(add_prefix_space=False)) == "gpt-2"
    assert name(pt.Sequence([pt.Digits(individual_digits=True),
                             pt.ByteLevel(add_prefix_space=False)])) == "smollm"
    qwen2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}"
             r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
    for regex, want in ((qwen2, "qwen2"), (qwen2.replace(r"|\p{N}|", r"|\p{N}{1,3}|"),
                                           "llama-bpe")):
        split = pt.Split(Regex(regex), behavior="isolated")
        assert name(pt.Sequence([split, pt.ByteLevel(use_regex=False)])) == want
    assert name(pt.Whitespace()) == "default"  # a split llama.cpp has no name for
    assert name(None) == "default"
