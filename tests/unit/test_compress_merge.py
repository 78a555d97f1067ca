import numpy as np
import pytest
import torch

from reactinfer import compress, load
from reactinfer.compression import EnsembleRunner, MergeWeights, ensemble, merge_models, tree_merge
from reactinfer.compression.merge import merge_state_dicts
from reactinfer.core.errors import UserError
from reactinfer.tasks import tokenize
from reactinfer.testing import save_tiny_hf, tiny_handle, tiny_model, tiny_texts


def states(*seeds, **kw):
    return [tiny_model("embedding", seed=s, **kw).state_dict() for s in seeds]


def test_alpha_one_zero_returns_first_exactly():
    a, b = tiny_model("embedding", seed=0), tiny_model("embedding", seed=1)
    m = merge_models([a, b], [1.0, 0.0])
    for (k, v), (ka, w) in zip(m.state_dict().items(), a.state_dict().items(), strict=True):
        assert k == ka and torch.equal(v, w), k


def test_equal_weights_equal_the_mean_flat_and_tree():
    sds = states(0, 1, 2, 3, 4)
    flat = merge_state_dicts(sds)
    tree = tree_merge([lambda s=s: s for s in sds])  # loaders: only a few held at once
    for k, v in sds[0].items():
        if v.is_floating_point():
            mean = torch.stack([s[k] for s in sds]).mean(0)
            torch.testing.assert_close(flat[k], mean, rtol=0, atol=1e-6)
            torch.testing.assert_close(tree[k], mean, rtol=0, atol=1e-6)


def test_weighted_tree_equals_weighted_flat():
    sds = states(0, 1, 2)
    alphas = [0.2, 0.5, 0.3]
    flat, tree = merge_state_dicts(sds, alphas), tree_merge(sds, alphas)
    for k in flat:
        torch.testing.assert_close(flat[k], tree[k], rtol=0, atol=1e-6)
    k = "encoder.layer.0.output.dense.weight"
    torch.testing.assert_close(flat[k], sum(a * s[k] for a, s in zip(alphas, sds, strict=True)),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("alphas,match", [
    ([0.5, 0.6], "sum to 1"),
    ([1.5, -0.5], ">= 0"),
    ([1.0], "2 models need 2 weights"),
])
def test_bad_alphas(alphas, match):
    with pytest.raises(UserError, match=match):
        merge_state_dicts(states(0, 1), alphas)
    with pytest.raises(UserError, match=match.split()[0]):
        MergeWeights(models=("x",), alphas=tuple(alphas)) if len(alphas) == 2 else \
            (_ for _ in ()).throw(UserError(match))


def test_mismatched_shapes_and_keys_are_clear():
    with pytest.raises(UserError, match="shape"):
        merge_state_dicts(states(0) + states(1, intermediate=48))
    with pytest.raises(UserError, match="different parameters"):
        merge_state_dicts(states(0) + states(1, layers=3))


def test_merge_transform_with_saved_checkpoints(tmp_path):
    other = save_tiny_hf(tmp_path / "b", seed=1)
    h = tiny_handle("embedding")
    m = compress(h, [MergeWeights(models=(str(other),), alphas=(0.5, 0.5))])
    b = load(other).model
    k = "encoder.layer.1.intermediate.dense.weight"
    torch.testing.assert_close(m.model.state_dict()[k],
                               (h.model.state_dict()[k] + b.state_dict()[k]) / 2)
    first = compress(h, [MergeWeights(models=(str(other),), alphas=(1.0, 0.0), tree=True)])
    batch = tokenize(h.tokenizer, tiny_texts(6), 64)
    assert np.array_equal(first.runner()(batch), h.runner()(batch))
    with pytest.raises(UserError, match="shape"):
        compress(h, [MergeWeights(models=(str(save_tiny_hf(tmp_path / "c", intermediate=48)),))])


def test_embedding_ensemble_is_normalised_mean():
    hs = [tiny_handle("embedding", seed=s) for s in (0, 1)]
    r = ensemble(hs)
    batch = tokenize(hs[0].tokenizer, tiny_texts(6), 64)
    e = r(batch)
    mean = (hs[0].runner()(batch) + hs[1].runner()(batch)) / 2
    np.testing.assert_allclose(e, mean / np.linalg.norm(mean, axis=1, keepdims=True), atol=1e-6)


def test_majority_vote():
    def fixed(logits):
        return lambda batch: np.asarray(logits, dtype=np.float32)

    runners = [fixed([[3, 0, 0], [0, 1, 0]]), fixed([[0, 2, 0], [0, 1, 0]]),
               fixed([[4, 0, 0], [0, 0, 9]])]
    out = EnsembleRunner(runners, "classification", mode="vote")({})
    assert out.argmax(-1).tolist() == [0, 1]  # 2 of 3 votes each, whatever the margins
    with pytest.raises(UserError, match="classification"):
        EnsembleRunner(runners, "embedding", mode="vote")


def test_lm_ensemble_generates_the_argmax_of_the_mean_logits():
    hs = [tiny_handle("causal-lm", seed=s) for s in (0, 1)]
    # Tiny LMs with tied embeddings all repeat the last token; an untied random head makes
    # the second member disagree, so only the averaged logits give the ensemble's tokens.
    torch.manual_seed(5)
    head = hs[1].model.lm_head
    head.weight = torch.nn.Parameter(torch.randn_like(head.weight) * head.weight.std() * 3)
    r = ensemble(hs)
    prompt = [2, 7, 9]
    got = r.generate(prompt, 4)
    # Decode by hand: each step's token is the argmax of the members' averaged logits.
    ids = list(prompt)
    for _ in range(4):
        x = torch.tensor([ids])
        with torch.no_grad():
            logits = [h.model(input_ids=x).logits[0, -1].double() for h in hs]  # (V,) each
        ids.append(int(((logits[0] + logits[1]) / 2).argmax()))
    assert got == ids[len(prompt):]
    alone = [h.runner().generate(prompt, 4) for h in hs]
    assert got != alone[0] and got != alone[1]  # the average decided, not one member
