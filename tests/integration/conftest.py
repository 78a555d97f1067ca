"""Fixtures shared by the integration modules: what is slow to start is started once per
session (a local Ray takes ~10 s on 2 cores), and torn down at the end of it."""
import pytest


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for every module that needs one; a module asks for it with
    `pytest.mark.usefixtures("ray_local")`, so it starts only when such a module runs."""
    pytest.importorskip("ray")
    from reactinfer.cluster import ray_api

    ray_api.init(num_cpus=2)
    yield
    ray_api.shutdown()


@pytest.fixture(scope="session")
def smollm2():
    """The built-in smollm2 as a torch model, loaded once: de-quantizing its GGUF takes
    ~30 s on 2 cores. Tests derive from it (compress, to_backend) and never change it."""
    import reactinfer as ri

    return ri.load("smollm2")


@pytest.fixture(scope="session")
def minilm():
    """The built-in minilm, loaded once; tests derive from it and never change it."""
    import reactinfer as ri

    return ri.load("minilm")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny causal LM in-process, as an f32 GGUF on llama.cpp."""
    from reactinfer.backends.convert import to_backend
    from reactinfer.testing import tiny_handle

    return to_backend(tiny_handle("causal-lm"), "llama.cpp", outtype="f32",
                      workdir=tmp_path_factory.mktemp("gguf"))
