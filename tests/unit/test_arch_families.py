"""The family adapters beyond BERT and Llama (models.arch): DistilBERT, MPNet, ModernBERT,
Qwen3, Gemma 3 and Phi-3, each on a tiny random model built from transformers' own config
class. Every structural transform the adapter allows runs, physically shrinks the model,
keeps the output shape, and the pruned model saves and reloads to the same outputs."""
import numpy as np
import pytest
import torch
import transformers

from reactinfer import compress, load
from reactinfer.compression import DropLayers, PruneFFN, PruneHeads
from reactinfer.core.artifact import Artifact
from reactinfer.core.errors import UserError
from reactinfer.models.arch import adapter_for
from reactinfer.tasks import tokenize
from reactinfer.testing import tiny_texts, tiny_tokenizer

V = len(tiny_tokenizer())
SIZES = {"hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
         "intermediate_size": 64, "max_position_embeddings": 128}
LM = {**SIZES, "num_key_value_heads": 2, "pad_token_id": 0, "bos_token_id": 2,
      "eos_token_id": 4}

# family → (task, model class, config); pruned FFN / heads are checked on these paths
FAMILIES = {
    "distilbert": ("embedding", transformers.DistilBertModel, lambda: transformers.DistilBertConfig(
        vocab_size=V, dim=32, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=128)),
    "mpnet": ("embedding", transformers.MPNetModel,
              lambda: transformers.MPNetConfig(vocab_size=V, **SIZES)),
    "modernbert": ("embedding", transformers.ModernBertModel, lambda: transformers.ModernBertConfig(
        vocab_size=V, pad_token_id=0, bos_token_id=2, eos_token_id=4, cls_token_id=2,
        sep_token_id=3, global_attn_every_n_layers=2, **SIZES)),
    "qwen3": ("causal-lm", transformers.Qwen3ForCausalLM,
              lambda: transformers.Qwen3Config(vocab_size=V, head_dim=8, **LM)),
    "gemma3": ("causal-lm", transformers.Gemma3ForCausalLM,
               lambda: transformers.Gemma3TextConfig(vocab_size=V, head_dim=8, **LM)),
    "phi3": ("causal-lm", transformers.Phi3ForCausalLM,
             lambda: transformers.Phi3Config(vocab_size=V, **LM)),
}


def tiny(family):
    task, cls, config = FAMILIES[family]
    torch.manual_seed(0)
    model = cls(config()).eval()
    return load(model, task=task, tokenizer=tiny_tokenizer(), name=f"tiny-{family}",
                max_length=64)


def outputs(handle):
    return handle.runner()(tokenize(handle.tokenizer, tiny_texts(4), 64))


def check_saves_and_reloads(p, tmp_path):
    out = outputs(p)
    assert np.isfinite(out).all()
    Artifact.save(p, tmp_path / "a")
    back = load(tmp_path / "a")
    assert back.num_parameters() == p.num_parameters()
    np.testing.assert_allclose(outputs(back), out, atol=1e-5, rtol=0)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_found_by_model_type(family):
    h = tiny(family)
    arch = adapter_for(h.model)
    assert arch.name == family
    layers = arch.blocks(h.model)
    assert len(layers) == 3
    ins, out = arch.ffn(layers[0])
    assert {lin.out_features for lin in ins} == {out.in_features} == {64}
    q, k, v, o = arch.attention(layers[0])
    d = arch.layer_head_dim(layers[0])
    assert d == 8 and q.out_features == o.in_features == 4 * d
    assert k.out_features == v.out_features == (4 if h.task == "embedding" else 2) * d


@pytest.mark.parametrize("family", list(FAMILIES))
def test_ffn_pruning_shrinks_and_reloads(family, tmp_path):
    h = tiny(family)
    ref = outputs(h)
    p = compress(h, [PruneFFN(keep=0.5, importance="activation", n_samples=8)])
    arch = adapter_for(p.model)
    for layer in arch.blocks(p.model):
        ins, out = arch.ffn(layer)
        assert out.in_features == 32 and {lin.out_features for lin in ins} == {32}
    assert p.num_parameters() < h.num_parameters()
    assert check_saves_and_reloads(p, tmp_path).shape == ref.shape
    # keeping every neuron changes nothing: the fused (gate | up) rows stay paired
    np.testing.assert_allclose(outputs(compress(h, [PruneFFN(keep=1.0)])), ref, atol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "mpnet"])
def test_head_pruning_shrinks_and_reloads(family, tmp_path):
    h = tiny(family)
    ref = outputs(h)
    p = compress(h, [PruneHeads(keep=0.5)])
    arch = adapter_for(p.model)
    for layer in arch.blocks(p.model):
        q, k, v, o = arch.attention(layer)
        assert q.out_features == o.in_features == 2 * 8
        # grouped-query attention keeps every K/V head; one K/V per head loses them together
        assert k.out_features == v.out_features == 2 * 8
    assert p.num_parameters() < h.num_parameters()
    assert check_saves_and_reloads(p, tmp_path).shape == ref.shape
    np.testing.assert_allclose(outputs(compress(h, [PruneHeads(keep=1.0)])), ref, atol=1e-5)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_drop_layers_shrinks_and_reloads(family, tmp_path):
    h = tiny(family)
    p = compress(h, [DropLayers(layers=(0, 2))])
    assert len(adapter_for(p.model).blocks(p.model)) == 2
    assert p.num_parameters() < h.num_parameters()
    assert check_saves_and_reloads(p, tmp_path).shape == outputs(h).shape
    if h.task == "causal-lm":  # the KV cache follows the new layer indices
        assert len(p.runner().generate([2, 7, 9], 4)) == 4


def test_mpnet_heads_are_refused_with_the_reason():
    with pytest.raises(UserError, match="PruneHeads: MPNet: the relative position bias"):
        compress(tiny("mpnet"), [PruneHeads(keep=0.5)])


def test_modernbert_keeps_its_first_layer():
    with pytest.raises(UserError, match="ModernBERT models must keep layer 0"):
        compress(tiny("modernbert"), [DropLayers(layers=(1, 2))])
