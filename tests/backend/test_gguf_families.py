"""GGUF form of the families whose adapter names llama.cpp's tensors (models.arch): a
tiny Qwen3 written by our converter runs in llama.cpp with the torch model's logits, and
transformers reads the file back as a Qwen3 model the family adapter serves."""
import numpy as np
import pytest
import torch
import transformers

from reactinfer import load
from reactinfer.backends import to_backend
from reactinfer.core.backend import list_backends
from reactinfer.models.arch import adapter_for
from reactinfer.tasks import tokenize
from reactinfer.testing import tiny_texts, tiny_tokenizer


def test_qwen3_gguf_runs_in_llama_cpp_and_reads_back(tmp_path):
    if not list_backends()["llama.cpp"].available():
        pytest.skip("llama.cpp is not available here")
    torch.manual_seed(0)
    # head_dim 128: transformers' GGUF reader takes Qwen3's default head size, not the file's
    cfg = transformers.Qwen3Config(vocab_size=len(tiny_tokenizer()), hidden_size=64,
                                   num_hidden_layers=2, num_attention_heads=2,
                                   num_key_value_heads=1, head_dim=128, intermediate_size=128,
                                   max_position_embeddings=128, pad_token_id=0, bos_token_id=2,
                                   eos_token_id=4, tie_word_embeddings=True)
    h = load(transformers.Qwen3ForCausalLM(cfg).eval(), task="causal-lm",
             tokenizer=tiny_tokenizer(), name="tiny-qwen3", max_length=64)
    b = tokenize(h.tokenizer, tiny_texts(4), 64)
    batch = {k: b[k] for k in ("input_ids", "attention_mask")}
    mask = batch["attention_mask"].astype(bool)
    ref = h.runner()(batch)[mask]
    conv = to_backend(h, "llama.cpp", outtype="f32", workdir=tmp_path / "gguf")
    import gguf

    reader = gguf.GGUFReader(str(conv.files["model.gguf"]))
    assert reader.fields["general.architecture"].contents() == "qwen3"
    out = conv.runner()(batch)[mask]
    np.testing.assert_allclose(out, ref, atol=1e-3)
    back = load(conv.files["model.gguf"], task="causal-lm")  # the GGUF form, in transformers
    assert adapter_for(back.model).name == "qwen3"
    np.testing.assert_allclose(back.runner()(batch)[mask], ref, atol=1e-5)
