"""The ReAct loop on tiny models, with injected actions whose effect is known."""
import copy
import dataclasses
import json
import time

import numpy as np
import pytest
import torch

import reactinfer as ri
from reactinfer.backends.torch_eager import TorchRunner
from reactinfer.core.backend import Backend, register_backend
from reactinfer.core.errors import UserError
from reactinfer.core.transform import TransformConfig, register_transform
from reactinfer.planner import Action, optimize
from reactinfer.planner.store import TrialStore
from reactinfer.testing import save_tiny_hf, tiny_texts


@dataclasses.dataclass(frozen=True)
class DropLastLayer(TransformConfig):
    kind = "test.DropLastLayer"


@register_transform(DropLastLayer)
def _drop(handle, cfg):
    model = copy.deepcopy(handle.model)
    model.encoder.layer = model.encoder.layer[:-1]
    model.config.num_hidden_layers -= 1
    return handle.derive(model=model)


@dataclasses.dataclass(frozen=True)
class Noise(TransformConfig):
    kind = "test.Noise"
    scale: float = 1.0


@register_transform(Noise)
def _noise(handle, cfg):
    model = copy.deepcopy(handle.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * cfg.scale)
    return handle.derive(model=model)


class _SlowRunner(TorchRunner):
    def __call__(self, batch):
        time.sleep(0.02)  # an engine that is worse here: same outputs, slower
        return super().__call__(batch)


class SlowBackend(Backend):  # a whole backend: the base class gives the rest
    name = "test-slow"
    description = "torch with an injected 20 ms delay per call"

    def prepare(self, handle, **opts):
        return _SlowRunner(handle)


register_backend(SlowBackend())

INTERRUPTS = {"left": 0}


def _expect(gain):
    return lambda ctx: (gain, f"test action expected ×{gain}")


def _actions(interrupt=False):
    noise = Action("noise", "noise", _expect(3.0), steps=({"type": "test.Noise", "scale": 1.0},))
    slow = Action("slow engine", "slow", _expect(2.0), backend=("test-slow", {}))
    drop = Action("drop last layer", "drop", _expect(1.5), steps=({"type": "test.DropLastLayer"},))
    return [noise, slow, drop]


@pytest.fixture
def model_and_data(tmp_path):
    d = save_tiny_hf(tmp_path / "tiny", "embedding")
    data = tmp_path / "data.txt"
    texts = tiny_texts(10)
    words = " ".join(texts).split()
    lines = [" ".join(np.random.default_rng(i).choice(words, 6 + i % 9)) for i in range(300)]
    data.write_text("\n".join(lines))
    return str(d), str(data)


def _run(model, data, out, **kw):
    kw.setdefault("actions", _actions())
    return optimize(model, data=data, out=out, budget_s=120, n_eval=20, batch_size=8,
                    latency_runs=3, confirm_n_eval=30, progress=False, **kw)


def test_optimize_keeps_what_pays_and_rolls_back_what_hurts(model_and_data, tmp_path):
    model, data = model_and_data
    out = tmp_path / "run"
    r = _run(model, data, out, objective="size", max_drop=0.5)
    by_action = {t["action"]: t for t in r["trials"]}
    assert by_action["baseline"]["decision"] == "baseline"
    assert by_action["noise"]["decision"] == "rolled back"
    assert "quality drop" in by_action["noise"]["reason"]
    assert by_action["slow engine"]["decision"] == "rolled back"
    assert "does not pay" in by_action["slow engine"]["reason"]
    assert by_action["drop last layer"]["decision"] == "kept"
    for t in r["trials"]:
        assert t["thought"] and t["action"] and (t["observation"] or t["decision"] == "failed")
    for f in ("report.md", "report.json", "pareto.png", "trace.png", "trials.sqlite"):
        assert (out / f).is_file(), f
    md = (out / "report.md").read_text()
    assert "rolled back" in md and "Thought:" in md and "Pareto" in md
    best = ri.load(out / "best")
    assert best.model.config.num_hidden_layers == 1
    assert r["best"]["action"] == "drop last layer"
    assert r["confirm"]["best"]["size_mb"] < r["confirm"]["baseline"]["size_mb"]
    for v in r["variants"]:
        ri.load(out / v)  # every ladder variant is a valid artifact
    stored = json.loads((out / "report.json").read_text())
    assert len(stored["trials"]) == len(r["trials"])


def test_throughput_objective_rolls_back_a_slower_engine(model_and_data, tmp_path):
    model, data = model_and_data
    slow = [a for a in _actions() if a.name == "slow engine"]
    r = _run(model, data, tmp_path / "run", objective="throughput", max_drop=0.01, actions=slow)
    t = r["trials"][1]
    assert t["action"] == "slow engine" and t["decision"] == "rolled back"
    assert "does not pay" in t["reason"]
    assert "no step paid" in r["verdict"]


def test_interrupted_run_resumes_without_redoing_trials(model_and_data, tmp_path):
    model, data = model_and_data
    out = tmp_path / "run"
    _run(model, data, out, objective="size", max_drop=0.5, max_trials=1)
    with pytest.raises(UserError, match="--resume"):
        _run(model, data, out, objective="size", max_drop=0.5)
    with pytest.raises(UserError, match="different settings"):
        _run(model, data, out, objective="latency", max_drop=0.5, resume=True)
    r = _run(model, data, out, objective="size", max_drop=0.5, resume=True)
    assert r["reused"] == 2  # the baseline and the first trial came from the store
    assert [t["reused"] for t in r["trials"][:2]] == [True, True]
    assert not any(t["reused"] for t in r["trials"][2:])
    assert len(TrialStore(out / "trials.sqlite").all()) == len(r["trials"])


def test_bad_settings_fail_before_work(model_and_data, tmp_path):
    model, data = model_and_data
    with pytest.raises(UserError, match="objective"):
        _run(model, data, tmp_path / "a", objective="speed")
    with pytest.raises(UserError, match="max-drop"):
        _run(model, data, tmp_path / "b", max_drop=2)
    with pytest.raises(UserError, match="unknown transform"):
        _run(model, data, tmp_path / "c",
             actions=[Action("x", "x", _expect(1.0), steps=({"type": "Nope"},))])


def test_thoughts_learn_from_observations():
    from reactinfer.core.hardware import hardware_profile
    from reactinfer.planner.actions import Context, _expect_prune

    facts = {"layers": 6, "ffn_share": 0.66}
    fresh = Context(hardware_profile(), "embedding", "throughput", facts, [])
    g0, why0 = _expect_prune("layers", 1 / 3)(fresh)
    assert g0 > 1.2 and "FLOPs" in why0
    overshoot = {"action": "prune FFN 25% + distil", "family": "prune-ffn",
                 "decision": "rolled back", "reason": "quality drop 0.0607 > bound 0.01",
                 "observation": {"quality_drop": 0.0607}}
    seen = Context(hardware_profile(), "embedding", "throughput", facts, [overshoot])
    g1, why1 = _expect_prune("layers", 1 / 3)(seen)
    assert g1 < g0 and "0.061" in why1 and "unlikely" in why1
