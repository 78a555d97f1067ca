"""A GGUF file's de-quantized torch model is converted once and kept in the cache
(core/cache.py): a second load reads the very tensors back, and a damaged entry
is found by its hash and converted again."""
from __future__ import annotations

import pytest
import torch

import reactinfer as ri

pytest.importorskip("llama_cpp")


def _same(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ca, cb = a.model.config.to_dict(), b.model.config.to_dict()
    ca.pop("_name_or_path", None), cb.pop("_name_or_path", None)
    assert ca == cb
    ids = torch.tensor([[3, 7, 11, 5, 9]])
    with torch.no_grad():
        assert torch.equal(a.model(ids).logits, b.model(ids).logits)


def test_a_gguf_model_is_converted_once_and_read_back_the_same(tmp_path, monkeypatch):
    from reactinfer.backends.convert import to_backend
    from reactinfer.core.cache import HASHES, verified
    from reactinfer.core.files import sha256_file
    from reactinfer.testing import tiny_handle

    path = to_backend(tiny_handle("causal-lm"), "llama.cpp", outtype="f32",
                      workdir=tmp_path / "gguf").files["model.gguf"]
    monkeypatch.setenv("REACT_CACHE_DIR", str(tmp_path / "cache"))
    first = ri.load(str(path))
    [entry] = (tmp_path / "cache" / "gguf-torch").iterdir()
    assert entry.name.startswith(sha256_file(path))
    assert verified(entry) and (entry / HASHES).is_file()
    again = ri.load(str(path))  # from the cache
    _same(first, again)
    weights = next(entry.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)  # damaged
    assert not verified(entry)
    third = ri.load(str(path))  # converted again, the entry replaced
    _same(first, third)
    assert verified(entry)
