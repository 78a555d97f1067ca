import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # Keep the corpus cache out of the user's home during tests, but share it across tests.
    if "REACT_CACHE_DIR" not in os.environ:
        os.environ["REACT_CACHE_DIR"] = str(tmp_path_factory.mktemp("react-cache"))
    yield


@pytest.fixture
def texts():
    from reactinfer.testing import tiny_texts

    return tiny_texts(24)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    # Tests judge numerics, not speed: one intra-op thread keeps them fast and steady even
    # when the machine is shared (oversubscribed OpenMP threads spin and stall).
    import torch

    torch.set_num_threads(1)
    yield
