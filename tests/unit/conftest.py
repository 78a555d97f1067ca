import pytest


@pytest.fixture
def tiny_cnn_model(monkeypatch):
    """A tiny CNN registered, for this test only, as a built-in image model; its name."""
    from reactinfer.models import vision, zoo
    from reactinfer.testing import TINY_CNN, tiny_cnn_builtin

    entry, cnn = tiny_cnn_builtin()
    monkeypatch.setitem(zoo.BUILTINS, TINY_CNN, entry)
    monkeypatch.setitem(vision.CNN_BUILTINS, TINY_CNN, cnn)
    return TINY_CNN
