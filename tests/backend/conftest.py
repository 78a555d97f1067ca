import importlib.util

import numpy as np
import pytest


def _gguf(name, tmp_path_factory):
    if name == "tiny":
        from reactinfer.backends.convert import to_backend
        from reactinfer.testing import tiny_handle

        h = to_backend(tiny_handle("causal-lm"), "llama.cpp", outtype="f32",
                       workdir=tmp_path_factory.mktemp("gguf"))
        return h.files["model.gguf"]
    from reactinfer.models.zoo import BUILTINS

    if importlib.util.find_spec(BUILTINS[name].module) is None:
        pytest.skip(f"{BUILTINS[name].package} is not installed")
    return BUILTINS[name].path()


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def gguf_llm(request, tmp_path_factory):
    """A llama.cpp model (a tiny f32 GGUF made here, or the packaged smollm2) and 200
    token ids for prompts: ids every vocabulary has, none of them special."""
    pytest.importorskip("llama_cpp")
    from llama_cpp import Llama

    llm = Llama(model_path=str(_gguf(request.param, tmp_path_factory)), n_ctx=64,
                n_threads=1, verbose=False)
    vocab = min(llm.n_vocab(), 500)
    return llm, np.random.default_rng(0).integers(10, vocab, 200).tolist()
