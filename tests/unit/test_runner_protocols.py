"""What runners offer beyond a batch call is found by isinstance against core/backend.py's
protocols, so a renamed method fails here instead of silently dropping the capability
(without `decode_engine` llama.cpp would serve one request at a time)."""
from __future__ import annotations

import pytest

from reactinfer.core.backend import ScoringRunner, ServingContextRunner, StepDecodingRunner

PROTOCOLS = (ScoringRunner, StepDecodingRunner, ServingContextRunner)


def _members(protocol: type) -> set[str]:
    return {n for n in vars(protocol) if not n.startswith("_")}


def test_each_protocol_names_one_capability():
    assert [_members(p) for p in PROTOCOLS] == [{"score"}, {"decode_engine"}, {"serve_context"}]


def test_the_llamacpp_runner_class_offers_every_capability():
    pytest.importorskip("llama_cpp")
    from reactinfer.backends.llamacpp import LlamaCppRunner

    assert issubclass(LlamaCppRunner, StepDecodingRunner)
    assert issubclass(LlamaCppRunner, ScoringRunner)
    # a protocol with a property cannot be checked by issubclass: its member is looked up
    assert isinstance(vars(LlamaCppRunner)["serve_context"], property)


def test_the_torch_runner_scores_but_has_no_decode_engine():
    from reactinfer.backends.torch_eager import TorchRunner

    assert issubclass(TorchRunner, ScoringRunner)
    assert not issubclass(TorchRunner, StepDecodingRunner)


def test_serving_finds_the_llamacpp_engine_and_context(tmp_path):
    pytest.importorskip("llama_cpp")
    from reactinfer.backends.convert import to_backend
    from reactinfer.serving.decode import engine_of
    from reactinfer.serving.ladder import ServiceTime, Variant
    from reactinfer.serving.state import served_context
    from reactinfer.testing import tiny_handle

    h = to_backend(tiny_handle("causal-lm"), "llama.cpp", outtype="f32", workdir=tmp_path)
    runner = h.runner()
    assert all(isinstance(runner, p) for p in PROTOCOLS)
    assert engine_of(Variant("v", h, 1.0, ServiceTime()), slots=2) is not None
    assert served_context(h) == runner.serve_context


def test_serving_runs_a_torch_variant_alone_with_the_models_context():
    from reactinfer.serving.decode import engine_of
    from reactinfer.serving.ladder import ServiceTime, Variant
    from reactinfer.serving.state import served_context
    from reactinfer.testing import tiny_handle

    h = tiny_handle("causal-lm")
    assert isinstance(h.runner(), ScoringRunner)
    assert engine_of(Variant("v", h, 1.0, ServiceTime())) is None
    assert served_context(h) == h.max_length


def test_a_runner_with_the_attribute_unset_offers_nothing():
    class Plain:
        score = None  # e.g. a wrapper that offers scoring only when its runner does
        decode_engine = None

        def __call__(self, batch):
            return batch

    assert not any(isinstance(Plain(), p) for p in PROTOCOLS)
