"""Family adapters (models.arch): the built-in families are found by model type, other
models get a UserError, and a new family is one registered adapter: structured pruning
and reloading then work on it with no other change."""
import dataclasses

import numpy as np
import pytest
import torch
import transformers

from reactinfer import compress, load
from reactinfer.compression import DropLayers, PruneFFN, PruneHeads
from reactinfer.core.artifact import Artifact
from reactinfer.core.errors import UserError
from reactinfer.models.arch import (
    FAMILIES,
    FamilyAdapter,
    adapter_for,
    find_adapter,
    get_path,
    register_family,
)
from reactinfer.tasks import tokenize
from reactinfer.testing import tiny_handle, tiny_model, tiny_texts, tiny_tokenizer


@pytest.mark.parametrize("task,family", [("embedding", "bert"), ("classification", "bert"),
                                         ("causal-lm", "llama")])
def test_builtin_families_found_by_model_type(task, family):
    model = tiny_model(task, layers=3)
    arch = adapter_for(model)
    assert arch.name == family
    assert len(arch.blocks(model)) == 3
    ins, out = arch.ffn(arch.blocks(model)[0])
    assert {lin.out_features for lin in ins} == {out.in_features} == {64}
    assert arch.layer_head_dim(arch.blocks(model)[0]) == 32 // 4


def test_unknown_model_is_a_user_error_that_says_what_to_do():
    net = torch.nn.Linear(4, 4)
    assert find_adapter(net) is None
    with pytest.raises(UserError,
                       match="BERT-family, .*Llama-family.*Qwen3.*'Linear'.*register_family"):
        adapter_for(net, "PruneFFN")


def test_a_model_type_belongs_to_one_family():
    clash = dataclasses.replace(FAMILIES["bert"], name="bert2", model_types=("roberta",))
    with pytest.raises(ValueError, match="already registered"):
        register_family(clash)
    assert "bert2" not in FAMILIES


# -- a new family: OPT (decoder.layers, fc1/fc2, out_proj, no head_dim in its config) ------

@dataclasses.dataclass(frozen=True)
class OPTAdapter(FamilyAdapter):
    def on_heads_kept(self, layer: torch.nn.Module, n_heads: int, n_kv: int, d: int) -> None:
        get_path(layer, "self_attn").num_heads = n_heads  # OPTAttention reshapes by it


OPT = OPTAdapter(
    name="opt", label="OPT", model_types=("opt",), bodies=("model",), layers="decoder.layers",
    ffn_in=("fc1",), ffn_out="fc2", ffn_config="ffn_dim",
    q="self_attn.q_proj", k="self_attn.k_proj", v="self_attn.v_proj", o="self_attn.out_proj",
    head_dim="self_attn.head_dim", cache_index="self_attn.layer_idx", uses_cache=True)


@pytest.fixture
def opt_family():
    register_family(OPT)
    yield OPT
    del FAMILIES["opt"]


def tiny_opt(layers=4):
    torch.manual_seed(0)
    cfg = transformers.OPTConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32,
                                 num_hidden_layers=layers, num_attention_heads=4, ffn_dim=64,
                                 word_embed_proj_dim=32, max_position_embeddings=128,
                                 pad_token_id=0, bos_token_id=2, eos_token_id=4)
    model = transformers.OPTForCausalLM(cfg).eval()
    return load(model, task="causal-lm", tokenizer=tiny_tokenizer(), name="tiny-opt",
                max_length=64)


def logits(handle):
    return handle.runner()(tokenize(handle.tokenizer, tiny_texts(6), 64))


def test_a_family_can_be_found_by_class_when_there_is_no_model_type():
    class Block(torch.nn.Module):
        pass

    class Net(torch.nn.Module):
        pass

    class SubNet(Net):
        pass

    by_class = dataclasses.replace(OPT, name="net", model_types=(), classes=("Net",))
    register_family(by_class)
    try:
        assert find_adapter(SubNet()) is by_class and find_adapter(Block()) is None
    finally:
        del FAMILIES["net"]


def test_unregistered_family_is_refused():
    with pytest.raises(UserError, match="this is 'opt'"):
        compress(tiny_opt(), [PruneFFN(0.5)])


@pytest.mark.parametrize("importance", ["magnitude", "activation"])
def test_new_family_ffn_pruning(opt_family, tmp_path, importance):
    h = tiny_opt()
    p = compress(h, [PruneFFN(keep=0.5, importance=importance, n_samples=8)])
    for layer in p.model.model.decoder.layers:
        assert layer.fc1.out_features == 32 and layer.fc2.in_features == 32
    assert p.model.config.ffn_dim == 32
    out = logits(p)
    assert np.isfinite(out).all()
    assert np.array_equal(logits(compress(h, [PruneFFN(keep=1.0)])), logits(h))
    Artifact.save(p, tmp_path / "a")  # the config alone rebuilds it: plain from_pretrained
    assert np.array_equal(logits(load(tmp_path / "a")), out)


def test_new_family_drop_layers(opt_family):
    h = tiny_opt(layers=4)
    p = compress(h, [DropLayers(layers=(0, 3))])
    layers = p.model.model.decoder.layers
    assert len(layers) == 2 and p.model.config.num_hidden_layers == 2
    assert [layer.self_attn.layer_idx for layer in layers] == [0, 1]
    assert torch.equal(layers[1].fc2.weight, h.model.model.decoder.layers[3].fc2.weight)
    assert np.isfinite(logits(p)).all()
    assert len(p.runner().generate([2, 7, 9], 4)) == 4  # the KV cache follows the new indices


def test_new_family_head_pruning_reloads_from_recorded_structure(opt_family, tmp_path):
    h = tiny_opt()
    p = compress(h, [PruneHeads(keep=0.5)])
    d = 32 // 4
    for layer in p.model.model.decoder.layers:
        assert layer.self_attn.q_proj.out_features == 2 * d
        assert layer.self_attn.out_proj.in_features == 2 * d and layer.self_attn.num_heads == 2
    # OPT's config has no head_dim: the default record_heads writes react_structure
    assert p.model.config.react_structure == {"attention_heads": 2, "head_dim": d}
    out = logits(p)
    Artifact.save(p, tmp_path / "a")
    back = load(tmp_path / "a")
    assert back.num_parameters() == p.num_parameters()
    assert np.array_equal(logits(back), out)


def test_adapter_surgery_only_touches_the_family_paths(opt_family):
    h = tiny_handle("causal-lm", layers=2)
    before = {k: v.clone() for k, v in h.model.state_dict().items()}
    compress(h, [PruneFFN(0.5)])  # a Llama model is still served by the Llama adapter
    assert all(torch.equal(v, h.model.state_dict()[k]) for k, v in before.items())
    assert adapter_for(h.model).name == "llama"


def test_the_planner_reads_model_shape_through_the_adapter(opt_family):
    from reactinfer.planner.actions import model_facts

    # OPT: FFN width in `ffn_dim`, two FFN matrices; Llama: `intermediate_size`, three
    opt = model_facts(tiny_opt().model)
    assert opt["ffn"] == 64 and opt["ffn_share"] == pytest.approx(2 * 64 / (2 * 64 + 4 * 32))
    llama = model_facts(tiny_model("causal-lm"))
    assert llama["ffn_share"] == pytest.approx(3 * 64 / (3 * 64 + 4 * 32))
    assert model_facts(torch.nn.Linear(2, 2)) == {}  # no family: no shape claims
