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


# Under pytest-xdist (`make test`: two workers, --dist loadgroup) a unit of work is a module,
# or the group a module names (`pytest.mark.xdist_group`: the guides that share a command,
# the modules that share a local Ray), so module fixtures (servers, models) start once.
# The longest units go first: a long one left for the end would keep one worker busy
# while the other sits idle.
LONGEST_FIRST = ("tests/integration/test_docs.py", "tests/integration/test_cluster_")


@pytest.hookimpl(tryfirst=True)  # before xdist turns the groups into node ids
def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.iter_markers("xdist_group")):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::")[0]))

    def rank(item) -> int:
        path = item.nodeid.split("::")[0]
        return next((i for i, p in enumerate(LONGEST_FIRST) if path.startswith(p)),
                    len(LONGEST_FIRST))

    items.sort(key=rank)  # stable: a module's tests keep their order
