"""The planner and model families: a model whose family has no adapter (models.arch) still
gets every engine and number-format action, but the structural ones (layers, FFN, heads)
are left out before the search, with the reason in the report; Thoughts make no claim
about a shape that is not known."""
import numpy as np
import pytest
import torch
import transformers

from reactinfer import load
from reactinfer.core.hardware import hardware_profile
from reactinfer.planner import Action, optimize
from reactinfer.planner.actions import Context, model_facts
from reactinfer.planner.catalogue import catalogue, for_model
from reactinfer.planner.report import _left_out_lines
from reactinfer.testing import tiny_handle, tiny_texts, tiny_tokenizer

STRUCTURAL = ("PruneFFN", "PruneHeads", "DropLayers")


def structural(a):
    return any(s["type"] in STRUCTURAL for s in a.steps)


def tiny_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=len(tiny_tokenizer()), n_embd=32, n_layer=2,
                                  n_head=4, n_positions=128, bos_token_id=2, eos_token_id=4)
    return transformers.GPT2LMHeadModel(cfg).eval()


def tiny_mpnet():
    torch.manual_seed(0)
    cfg = transformers.MPNetConfig(vocab_size=len(tiny_tokenizer()), hidden_size=32,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=64, max_position_embeddings=128)
    return transformers.MPNetModel(cfg).eval()


def test_a_family_without_an_adapter_gets_no_structural_action_and_every_other():
    h = load(tiny_gpt2(), task="causal-lm", tokenizer=tiny_tokenizer(), name="tiny-gpt2")
    kept, left_out = for_model(catalogue(), h)
    for_lm = [a for a in catalogue() if "causal-lm" in a.tasks]
    assert {a.name for a in for_lm if structural(a)} == set(left_out)
    assert left_out and all("no model family adapter knows 'gpt2'" in why
                            for why in left_out.values())
    # every engine and number-format action for the task is still offered
    assert [a.name for a in kept] == [a.name for a in for_lm if not structural(a)]
    assert kept and not any(structural(a) for a in kept)


def test_a_family_leaves_out_only_what_its_adapter_cannot_do():
    mpnet = load(tiny_mpnet(), task="embedding", tokenizer=tiny_tokenizer())
    kept, left_out = for_model(catalogue(), mpnet)
    assert list(left_out) == ["prune heads 25% + distil"]
    assert "relative position bias" in left_out["prune heads 25% + distil"]
    assert any(a.name.startswith("drop") for a in kept)
    for task in ("embedding", "causal-lm"):  # BERT and Llama: nothing left out
        assert for_model(catalogue(), tiny_handle(task))[1] == {}


@pytest.mark.parametrize("model", [tiny_gpt2, torch.nn.Module])
def test_thoughts_make_no_claim_about_an_unknown_shape(model):
    facts = model_facts(model())
    assert facts == {}
    ctx = Context(hardware_profile(), "causal-lm", "throughput", facts, [])
    for a in catalogue():
        if structural(a):
            _, why = a.expect(ctx)
            assert "?" not in why and "FLOPs" not in why and "physically shrinks" in why


def test_thoughts_read_a_new_family_shape():
    facts = model_facts(tiny_mpnet())
    assert facts["layers"] == 2 and facts["ffn"] == 64
    ctx = Context(hardware_profile(), "embedding", "throughput", facts, [])
    drop = next(a for a in catalogue() if a.name.startswith("drop"))
    assert "each layer holds 1/2 of the FLOPs" in drop.expect(ctx)[1]


def test_the_report_lists_what_was_left_out_and_why(tmp_path):
    d = tmp_path / "gpt2"
    tiny_gpt2().save_pretrained(d, safe_serialization=True)
    tiny_tokenizer().save_pretrained(d)
    data = tmp_path / "data.txt"
    words = " ".join(tiny_texts(10)).split()
    data.write_text("\n".join(" ".join(np.random.default_rng(i).choice(words, 8))
                              for i in range(200)))
    drop = Action("drop 1/2 layers", "prune-layers", lambda ctx: (2.0, "fewer layers"),
                  steps=({"type": "DropLayers", "keep": 0.5},))
    r = optimize(str(d), data=str(data), out=tmp_path / "run", actions=[drop], n_eval=20,
                 batch_size=8, latency_runs=3, confirm_n_eval=0, budget_s=120,
                 progress=False)
    assert [t["action"] for t in r["trials"]] == ["baseline"]  # never tried, never failed
    assert "no model family adapter knows 'gpt2'" in r["left_out"]["drop 1/2 layers"]
    md = (tmp_path / "run" / "report.md").read_text()
    assert "- left out before the search: drop 1/2 layers — no model family adapter" in md
    assert "?" not in md.split("## Trace")[1].split("## Pareto")[0]


def test_reasons_shared_by_several_actions_are_one_report_line():
    data = {"left_out": {"a": "why 1", "b": "why 1", "c": "why 2"}}
    assert _left_out_lines(data) == ["- left out before the search: a, b — why 1",
                                     "- left out before the search: c — why 2"]
