import json

import numpy as np
import pytest

import reactinfer as ri
from reactinfer.core.errors import ArtifactError, UserError
from reactinfer.tasks import get_task
from reactinfer.testing import assert_tamper_refused, tiny_handle


def _outputs(h, texts):
    return get_task(h.task).evaluate(h.runner(), h.tokenizer, texts, 8, 64)


@pytest.mark.parametrize("task", ["embedding", "classification", "causal-lm"])
def test_saved_artifact_reloads_with_identical_outputs(tmp_path, texts, task):
    h = tiny_handle(task)
    art = ri.Artifact.save(h, tmp_path / "art", metrics={"note": "x"})
    m = art.manifest
    assert m["task"] == task and m["source"]["sha256"] == h.source["sha256"]
    assert "model.safetensors" in m["files"] and "hardware" in m and "versions" in m
    h2 = ri.load(tmp_path / "art")
    assert h2.task == task
    a, b = _outputs(h, texts), _outputs(h2, texts)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_flipped_byte_fails_loading(tmp_path):
    ri.Artifact.save(tiny_handle("embedding"), tmp_path / "a")
    assert_tamper_refused(tmp_path / "a", "model.safetensors")


def test_missing_file_and_unsafe_file_are_refused(tmp_path):
    ri.Artifact.save(tiny_handle("embedding"), tmp_path / "a")
    (tmp_path / "a" / "evil.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(ArtifactError, match="pickle"):
        ri.load(tmp_path / "a")
    (tmp_path / "a" / "evil.pkl").unlink()
    (tmp_path / "a" / "tokenizer.json").unlink()
    with pytest.raises(ArtifactError, match="incomplete"):
        ri.load(tmp_path / "a")


def test_corrupt_manifest(tmp_path):
    ri.Artifact.save(tiny_handle("embedding"), tmp_path / "a")
    (tmp_path / "a" / "manifest.json").write_text("{")
    with pytest.raises(ArtifactError, match="corrupt"):
        ri.load(tmp_path / "a")


def test_save_refuses_to_overwrite_and_leaves_no_partial_dir(tmp_path):
    h = tiny_handle("embedding")
    ri.Artifact.save(h, tmp_path / "a")
    with pytest.raises(UserError, match="not empty"):
        ri.Artifact.save(h, tmp_path / "a")
    ri.Artifact.save(h, tmp_path / "a", overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["format_version"] == 1


def test_plain_module_artifact_needs_architecture(tmp_path, texts):
    import torch

    from reactinfer.testing import tiny_tokenizer

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(len(tiny_tokenizer()), 8)

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            return (self.emb(input_ids),)

    torch.manual_seed(0)
    h = ri.load(Enc(), task="embedding", tokenizer=tiny_tokenizer())
    ri.Artifact.save(h, tmp_path / "m")
    with pytest.raises(UserError, match="module="):
        ri.load(tmp_path / "m")
    h2 = ri.load(tmp_path / "m", module=Enc())
    np.testing.assert_array_equal(_outputs(h, texts)["embeddings"],
                                  _outputs(h2, texts)["embeddings"])


@pytest.mark.parametrize("outtype", ["f32", "q8_0"])
def test_model_loaded_from_gguf_saves_as_safetensors_and_reloads_exactly(tmp_path, texts,
                                                                        outtype):
    # transformers 5 marks a model loaded with gguf_file= as "quantized with gguf", which
    # save_pretrained refuses, though its weights are de-quantized float32 (issue #14)
    import torch

    from reactinfer.backends.gguf_convert import convert_to_gguf
    from reactinfer.compression import PruneFFN, QuantizeWeightOnly

    path = convert_to_gguf(tiny_handle("causal-lm"), tmp_path / "tiny.gguf", outtype)
    h = ri.load(path)
    assert all(p.dtype == torch.float32 for p in h.model.parameters()) and not h.files
    variants = {"plain": h, "pruned": ri.compress(h, [PruneFFN(keep=0.5)]),
                "woq": ri.compress(h, [QuantizeWeightOnly(bits=8, group_size=16)])}
    for name, v in variants.items():
        m = ri.Artifact.save(v, tmp_path / name).manifest
        assert "model.safetensors" in m["files"]
        assert not any(f.endswith(".gguf") for f in m["files"])
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert "quantization_config" not in config  # a reload must not ask for a GGUF file
        v2 = ri.load(tmp_path / name)
        assert v2.transforms == v.transforms
        a, b = _outputs(v, texts), _outputs(v2, texts)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{name}: {k}")
