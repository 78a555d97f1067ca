import dataclasses
import json

import pytest
import torch

from reactinfer import compress
from reactinfer.core.errors import UserError
from reactinfer.core.transform import (
    TransformConfig,
    config_from_dict,
    load_recipe,
    register_transform,
)
from reactinfer.testing import tiny_handle


@dataclasses.dataclass(frozen=True)
class ScaleWeights(TransformConfig):
    """Test-only transform: multiply every Linear weight by `factor`."""
    kind = "test.ScaleWeights"
    factor: float = 1.0

    def validate(self):
        if self.factor <= 0:
            raise UserError("factor must be positive")


@register_transform(ScaleWeights)
def _scale(handle, cfg):
    import copy

    model = copy.deepcopy(handle.model)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.mul_(cfg.factor)
    return handle.derive(model=model)


def test_config_roundtrip_through_json():
    cfg = ScaleWeights(factor=2.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d == {"type": "test.ScaleWeights", "version": 1, "factor": 2.0}
    assert config_from_dict(d) == cfg


def test_bad_config_fails_before_work():
    with pytest.raises(UserError, match="positive"):
        ScaleWeights(factor=0)


def test_unknown_type_and_field_are_clear_errors():
    with pytest.raises(UserError, match="unknown transform type 'Nope'"):
        config_from_dict({"type": "Nope"})
    with pytest.raises(UserError, match="unknown field"):
        config_from_dict({"type": "test.ScaleWeights", "factr": 2})
    with pytest.raises(UserError, match="version"):
        config_from_dict({"type": "test.ScaleWeights", "version": 99})


@dataclasses.dataclass(frozen=True)
class Shift(TransformConfig):
    """Test-only, at version 2: version 1 named the field `by` and meant its negative."""
    kind = "test.Shift"
    VERSION = 2
    amount: float = 0.0

    @classmethod
    def migrate(cls, fields, version):
        if version == 1:
            fields, version = {"amount": -fields.pop("by")} | fields, 2
        return fields, version


@register_transform(Shift)
def _shift(handle, cfg):
    return handle.derive()


def test_old_configs_are_migrated_and_versions_live_on_instances():
    assert Shift(amount=1.0).version == 2 and Shift(amount=1.0).to_dict()["version"] == 2
    assert config_from_dict({"type": "test.Shift", "version": 1, "by": 0.5}) == Shift(-0.5)
    assert config_from_dict({"type": "test.Shift", "amount": 3.0}) == Shift(3.0)  # current
    assert ScaleWeights(2.0, version=1).version == 1
    with pytest.raises(UserError, match="upgrade reactinfer"):
        config_from_dict({"type": "test.Shift", "version": 3, "amount": 1.0})
    with pytest.raises(UserError, match="upgrade reactinfer"):
        Shift(amount=1.0, version=3)


def test_an_artifact_saved_before_a_version_bump_still_loads(tmp_path, monkeypatch):
    import numpy as np

    import reactinfer as ri
    from reactinfer.compression import QuantizeDynamicInt8
    from reactinfer.tasks.base import run_in_order
    from reactinfer.testing import tiny_texts

    h = compress(tiny_handle("embedding"), [QuantizeDynamicInt8()])  # replayed on load
    ri.Artifact.save(h, tmp_path / "a")
    monkeypatch.setattr(QuantizeDynamicInt8, "VERSION", 2)  # a later ReAct changed it
    back = ri.load(tmp_path / "a")
    assert back.transforms[-1]["type"] == "QuantizeDynamicInt8"
    assert back.transforms[-1]["version"] == 1  # replayed as the version it was saved at
    texts = tiny_texts(8)
    np.testing.assert_array_equal(run_in_order(h.runner(), h.tokenizer, texts, 4, 64),
                                  run_in_order(back.runner(), back.tokenizer, texts, 4, 64))


def test_compress_applies_in_order_and_leaves_input_unchanged():
    h = tiny_handle("embedding")
    before = {k: v.clone() for k, v in h.model.state_dict().items()}
    h2 = compress(h, [ScaleWeights(2.0), ScaleWeights(3.0)])
    assert [t["factor"] for t in h2.transforms] == [2.0, 3.0]
    for k, v in h.model.state_dict().items():
        assert torch.equal(v, before[k])
    w0 = h.model.encoder.layer[0].attention.self.query.weight
    w2 = h2.model.encoder.layer[0].attention.self.query.weight
    torch.testing.assert_close(w2, w0 * 6.0)


def test_recipe_file(tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps([{"type": "test.ScaleWeights", "factor": 0.5}]))
    assert load_recipe(str(p)) == [ScaleWeights(0.5)]
    p.write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_recipe(str(p))
    with pytest.raises(UserError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.json"))


def test_compress_rejects_non_configs():
    with pytest.raises(TypeError):
        compress(tiny_handle("embedding"), [{"type": "test.ScaleWeights"}])
