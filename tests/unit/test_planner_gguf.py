"""The planner on a GGUF model: judged as it will be served (generation tok/s at 1 and N
streams), against the file as llama.cpp runs it, with candidates made by llama.cpp's own
quantizer. Tiny Llama models built in-process; no timing is asserted."""
import numpy as np
import pytest

import reactinfer as ri
from reactinfer.core.errors import UserError
from reactinfer.planner import optimize
from reactinfer.planner.catalogue import engine_action
from reactinfer.planner.settings import PlanSettings
from reactinfer.testing import tiny_handle, tiny_texts

pytest.importorskip("llama_cpp")
gguf = pytest.importorskip("gguf")


def _types(path):
    return {t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors}


def test_a_k_quant_made_by_llama_cpp_loads_and_generates(tmp_path):
    from reactinfer.backends import to_backend

    # rows of 256: the k-quants' super-block, so llama.cpp keeps them (not a fallback type)
    h = tiny_handle("causal-lm", hidden=256, heads=4, intermediate=256, layers=1)
    q = to_backend(h, "llama.cpp", outtype="q4_k_m", workdir=tmp_path / "q")
    assert "Q4_K" in _types(q.files["model.gguf"])
    assert q.backend_options["quant_source"] == "an F16 GGUF written from the torch weights"
    out = q.runner().generate([2, 5, 6, 7], 6)
    assert len(out) == 6 and all(0 <= t < q.runner().n_vocab for t in out)
    # a second type of the same model is made from the same F16 file, written once
    q2 = to_backend(h, "llama.cpp", outtype="iq4_nl", workdir=tmp_path / "q2")
    assert "IQ4_NL" in _types(q2.files["model.gguf"])
    assert not (tmp_path / "q2" / "source-f16.gguf").exists()


@pytest.fixture
def gguf_model(tmp_path):
    """A tiny Llama loaded from a quantized GGUF, like a packaged Q4_1 file, and texts."""
    from reactinfer.backends.gguf_convert import convert_to_gguf

    path = convert_to_gguf(tiny_handle("causal-lm", hidden=64, intermediate=128),
                           tmp_path / "tiny-q8.gguf", "q8_0")
    data = tmp_path / "data.txt"
    words = " ".join(tiny_texts(10)).split()
    data.write_text("\n".join(" ".join(np.random.default_rng(i).choice(words, 8 + i % 9))
                              for i in range(300)))
    return ri.load(path), str(data)


def _gguf_actions():
    from reactinfer.backends.llamacpp import LlamaCppBackend

    return [engine_action(c) for c in LlamaCppBackend().engine_configs()
            if c.options["outtype"] in ("source", "q8_0", "q4_k_m")]


def test_a_gguf_model_is_judged_as_served_against_its_file_on_llama_cpp(gguf_model, tmp_path):
    handle, data = gguf_model
    out = tmp_path / "run"
    rep = optimize(handle, data=data, out=out, n_eval=12, batch_size=4, latency_runs=2,
                   confirm_n_eval=0, progress=False, budget_s=300, streams=3, gen_tokens=4,
                   actions=_gguf_actions())
    base = rep["baseline"]
    # the original is the GGUF file as llama.cpp runs it: its quality is exactly itself
    assert base["candidate"]["backend"] == "llama.cpp"
    assert base["candidate"]["backend_options"] == {"outtype": "source"}
    q = base["observation"]["quality"]
    assert q["perplexity_ratio"] == 1.0 and q["token_agreement"] == 1.0
    measured = [t for t in rep["trials"] if t.get("observation")]
    assert {t["candidate"]["backend_options"].get("outtype") for t in measured} \
        >= {"source", "q8_0", "q4_k_m"}
    for t in measured:  # every trial: generation at 1 stream and at --streams
        g = t["observation"]["generation"]
        assert g["streams"] == 3 and g["tok_s_1"] > 0 and g["tok_s_n"] > 0
        assert g["ttft_ms"] > 0 and "decode engine" in g["how"]
    md = (out / "report.md").read_text()
    assert "greedy generation tokens/s at 3 streams" in md
    assert "## Generation as served: 3 candidates" in md
    assert "| llama.cpp q4_k_m |" in md and "★" in md


@pytest.mark.parametrize("streams", [0, -2, 1.5, True, 10_000])
def test_bad_streams_is_a_user_error(streams):
    with pytest.raises(UserError, match="--streams"):
        PlanSettings(model="m", streams=streams).validate()
