import numpy as np
import pytest
import torch
import transformers

from reactinfer import compress, load
from reactinfer.compression import (
    DropLayers,
    Prune2of4,
    PruneFFN,
    PruneHeads,
    PruneMagnitude,
    sparsity,
)
from reactinfer.core.artifact import Artifact
from reactinfer.core.errors import UserError
from reactinfer.models.arch import adapter_for
from reactinfer.tasks import tokenize
from reactinfer.testing import tiny_handle, tiny_texts

TASKS = ["embedding", "causal-lm", "classification"]


def outputs(handle, n=8):
    return handle.runner()(tokenize(handle.tokenizer, tiny_texts(n), 64))


def blocks(model):
    return adapter_for(model).blocks(model)


def count(model, pred):
    return sum(p.numel() for n, p in model.named_parameters() if pred(n))


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_magnitude_pruning_reaches_sparsity_and_zeroes_smallest(scope):
    h = tiny_handle("embedding")
    p = compress(h, [PruneMagnitude(0.6, scope=scope)])
    assert p.metrics["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert sparsity(p.model) == pytest.approx(0.6, abs=0.01)
    w0 = h.model.encoder.layer[0].intermediate.dense.weight
    w1 = p.model.encoder.layer[0].intermediate.dense.weight
    kept = w1 != 0
    assert torch.equal(w1[kept], w0[kept])  # survivors untouched
    assert w0[~kept].abs().max() <= w0[kept].abs().min()  # the smallest went
    if scope == "layer":
        assert (~kept).float().mean().item() == pytest.approx(0.6, abs=0.01)


def test_zero_sparsity_is_lossless():
    h = tiny_handle("classification")
    assert np.array_equal(outputs(compress(h, [PruneMagnitude(0.0)])), outputs(h))


def test_tied_lm_head_is_not_pruned():
    h = tiny_handle("causal-lm")
    p = compress(h, [PruneMagnitude(0.5)])
    assert torch.equal(p.model.model.embed_tokens.weight, h.model.model.embed_tokens.weight)


def test_2of4_pattern():
    p = compress(tiny_handle("embedding"), [Prune2of4()])
    for m in p.model.modules():
        if isinstance(m, torch.nn.Linear):
            nz = (m.weight.view(m.out_features, -1, 4) != 0).sum(-1)
            assert int(nz.max()) <= 2
    assert p.metrics["sparsity"] == pytest.approx(0.5, abs=0.01)


def ffn_params(model):
    return count(model, lambda n: any(k in n for k in ("intermediate.dense", "output.dense",
                                                        "gate_proj", "up_proj", "down_proj"))
                 and "attention" not in n)


def attn_weights(model):
    names = ("self.query", "self.key", "self.value", "attention.output.dense", "q_proj",
             "k_proj", "v_proj", "o_proj")
    return count(model, lambda n: n.endswith("weight") and any(k in n for k in names))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("importance", ["magnitude", "activation"])
@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_ffn_pruning_removes_requested_fraction_and_reloads(tmp_path, task, importance, keep):
    h = tiny_handle(task, intermediate=64)
    p = compress(h, [PruneFFN(keep=keep, importance=importance)])
    k = round(64 * keep)
    assert p.model.config.intermediate_size == k
    for layer in blocks(p.model):  # every layer keeps exactly k neurons
        ins, out = adapter_for(p.model).ffn(layer)
        assert {m.out_features for m in ins} == {k} and out.in_features == k
    def ffn_w(m):
        return count(m, lambda n: n.endswith("weight") and any(
            s in n for s in ("intermediate.dense", "gate_proj", "up_proj", "down_proj"))
            or (n.endswith("output.dense.weight") and "attention" not in n))
    assert ffn_w(p.model) == pytest.approx(keep * ffn_w(h.model))  # the requested amount
    assert h.num_parameters() - p.num_parameters() == ffn_params(h.model) - ffn_params(p.model)
    out = outputs(p)
    assert np.isfinite(out).all()
    Artifact.save(p, tmp_path / "a")
    back = load(tmp_path / "a")
    assert np.array_equal(outputs(back), out)
    # an ordinary Hugging Face model: the saved config alone rebuilds it
    cls = type(p.model)
    plain = cls.from_pretrained(tmp_path / "a")
    assert plain.config.intermediate_size == round(64 * keep)


@pytest.mark.parametrize("task", TASKS)
def test_ffn_keep_one_is_lossless(task):
    h = tiny_handle(task)
    assert np.array_equal(outputs(compress(h, [PruneFFN(keep=1.0)])), outputs(h))


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_head_pruning_counts_per_layer_and_reload(tmp_path, task, importance):
    h = tiny_handle(task, heads=4, hidden=32)
    p = compress(h, [PruneHeads(keep=0.5, importance=importance)])
    d = 32 // 4
    for layer in blocks(p.model):
        if task == "causal-lm":
            assert layer.self_attn.q_proj.out_features == 2 * d
            assert layer.self_attn.o_proj.in_features == 2 * d
        else:
            assert layer.attention.self.query.out_features == 2 * d
            assert layer.attention.self.num_attention_heads == 2
    # query and output projections halve (Llama here has 2 KV heads, one query head each
    # kept per group, so K/V stay)
    if task == "causal-lm":
        assert p.model.config.num_attention_heads == 2 and p.model.config.head_dim == d
        q_o = lambda m: count(m, lambda n: "q_proj" in n or "o_proj" in n)  # noqa: E731
        assert q_o(p.model) * 2 == q_o(h.model)
    else:
        assert attn_weights(h.model) - attn_weights(p.model) == \
            2 * len(blocks(h.model)) * 4 * (32 * d)  # Q, K, V rows and O columns of 2 heads
    out = outputs(p)
    Artifact.save(p, tmp_path / "a")
    back = load(tmp_path / "a")
    assert back.num_parameters() == p.num_parameters()
    assert np.array_equal(outputs(back), out)


def test_head_pruning_keep_one_is_lossless():
    h = tiny_handle("embedding")
    assert np.allclose(outputs(compress(h, [PruneHeads(keep=1.0)])), outputs(h), atol=1e-6)


def test_head_pruned_llama_reloads_with_plain_transformers(tmp_path):
    p = compress(tiny_handle("causal-lm", heads=4), [PruneHeads(keep=0.5)])
    p.model.save_pretrained(tmp_path)
    plain = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    x = torch.tensor([[2, 7, 9, 11]])
    with torch.no_grad():
        torch.testing.assert_close(plain(x).logits, p.model(x).logits)


@pytest.mark.parametrize("task", TASKS)
def test_drop_layers(tmp_path, task):
    h = tiny_handle(task, layers=4)
    p = compress(h, [DropLayers(keep=0.5)])
    assert len(blocks(p.model)) == 2 and p.model.config.num_hidden_layers == 2
    per_layer = sum(x.numel() for x in blocks(h.model)[0].parameters())
    assert h.num_parameters() - p.num_parameters() == 2 * per_layer
    out = outputs(p)
    Artifact.save(p, tmp_path / "a")
    assert np.array_equal(outputs(load(tmp_path / "a")), out)
    if task == "causal-lm":  # the KV cache is indexed by the new positions
        assert [layer.self_attn.layer_idx for layer in blocks(p.model)] == [0, 1]
        assert len(p.runner().generate([2, 7, 9], 4)) == 4


def test_drop_named_layers_and_choice_of_evenly_spaced():
    from reactinfer.compression.prune import layers_to_keep

    assert layers_to_keep(6, DropLayers(keep=0.5)) == [0, 2, 5]
    assert layers_to_keep(6, DropLayers(layers=(1, 3))) == [1, 3]
    h = tiny_handle("embedding", layers=4)
    p = compress(h, [DropLayers(layers=(0, 3))])
    assert torch.equal(blocks(p.model)[1].output.dense.weight,
                       blocks(h.model)[3].output.dense.weight)
    with pytest.raises(UserError, match="has 4 layers"):
        compress(h, [DropLayers(layers=(0, 7))])


@pytest.mark.parametrize("make,match", [
    (lambda: PruneFFN(keep=0.0), r"keep must be a fraction in \(0, 1\]"),
    (lambda: PruneFFN(keep=1.2), r"keep must be a fraction in \(0, 1\]"),
    (lambda: PruneHeads(keep=-1), r"keep must be a fraction"),
    (lambda: PruneHeads(importance="random"), "importance must be one of"),
    (lambda: DropLayers(keep=0), "keep must be a fraction"),
    (lambda: DropLayers(layers=(1, 1)), "distinct"),
    (lambda: PruneMagnitude(sparsity=1.0), r"sparsity must be in \[0, 1\)"),
    (lambda: PruneMagnitude(scope="row"), "scope must be one of"),
])
def test_bad_prune_configs(make, match):
    with pytest.raises(UserError, match=match):
        make()


def test_unknown_exclusion_fails_before_work():
    with pytest.raises(UserError, match="no layer named 'nope'"):
        compress(tiny_handle("embedding"), [PruneMagnitude(0.5, exclude=("nope",))])


def test_structured_pruning_refuses_other_architectures():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(4, 4)

    from reactinfer.testing import tiny_tokenizer
    h = load(Net(), task="embedding", tokenizer=tiny_tokenizer())
    with pytest.raises(UserError, match="BERT-family, .*Llama-family"):
        compress(h, [PruneFFN(0.5)])
