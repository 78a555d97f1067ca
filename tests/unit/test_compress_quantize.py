import numpy as np
import pytest
import torch

from reactinfer import compress, load
from reactinfer.compression import (
    CastHalf,
    QuantizeDynamicInt8,
    QuantizeStaticInt8,
    QuantizeWeightOnly,
    layer_sensitivity,
)
from reactinfer.compression.quantize import WeightOnlyLinear
from reactinfer.core.artifact import Artifact
from reactinfer.core.errors import UserError
from reactinfer.tasks import tokenize
from reactinfer.testing import sqnr_db, tiny_handle, tiny_texts

TASKS = ["embedding", "causal-lm", "classification"]


def outputs(handle, n=8):
    return handle.runner()(tokenize(handle.tokenizer, tiny_texts(n), 64))


# SQNR floors (dB) of the task output on a tiny random model; measured values sit
# 5-15 dB above them, so a broken quantizer (wrong scale, wrong group) falls far below.
CASES = [
    (QuantizeDynamicInt8(), 20),
    (QuantizeDynamicInt8(per_channel=True), 20),
    (QuantizeStaticInt8(n_samples=16), 20),
    (QuantizeStaticInt8(observer="percentile", percentile=99.9, n_samples=16), 15),
    (QuantizeWeightOnly(bits=8, group_size=16), 30),
    (QuantizeWeightOnly(bits=8, group_size=None), 25),
    (QuantizeWeightOnly(bits=4, group_size=16), 10),
    (CastHalf("bf16"), 25),
    (CastHalf("fp16"), 40),
]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("cfg,floor", CASES, ids=[repr(c) for c, _ in CASES])
def test_lossy_quantization_above_sqnr_floor(task, cfg, floor):
    h = tiny_handle(task)
    ref = outputs(h)
    q = compress(h, [cfg])
    assert sqnr_db(ref, outputs(q)) > floor
    assert np.array_equal(outputs(h), ref)  # the input handle is untouched


def test_weight_only_int4_packs_two_per_byte_and_roundtrips_exactly():
    lin = torch.nn.Linear(64, 8)
    w4 = WeightOnlyLinear(lin, bits=4, group_size=16)
    assert w4.qweight.dtype == torch.uint8 and w4.qweight.shape == (8, 32)
    # re-quantizing the de-quantized weight is exact (a fixed point of the quantizer)
    lin2 = torch.nn.Linear(64, 8)
    with torch.no_grad():
        lin2.weight.copy_(w4.dequantize())
    torch.testing.assert_close(WeightOnlyLinear(lin2, 4, 16).dequantize(), w4.dequantize(),
                               rtol=0, atol=1e-6)
    assert sqnr_db(lin.weight.detach().numpy(), w4.dequantize().numpy()) > 15


def test_int8_per_channel_beats_per_tensor_on_uneven_rows():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 16)
    with torch.no_grad():
        lin.weight[0] *= 50  # one loud row ruins a per-tensor scale
    x = torch.randn(32, 64)
    ref = lin(x).detach().numpy()
    per_t = WeightOnlyLinear(lin, 8, None)  # per output channel
    from reactinfer.compression.quantize import fake_quant_weight
    y_t = torch.nn.functional.linear(x, fake_quant_weight(lin.weight.detach(), False),
                                     lin.bias).detach().numpy()
    assert sqnr_db(ref, per_t(x).detach().numpy()) > sqnr_db(ref, y_t) + 6


def test_fp32_kept_modules_stay_fp32():
    h = compress(tiny_handle("embedding"), [CastHalf("fp16", keep_fp32=("*LayerNorm*",))])
    dtypes = {n: p.dtype for n, p in h.model.named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "LayerNorm" in n)
    assert all(d == torch.float16 for n, d in dtypes.items() if "LayerNorm" not in n)


def test_exclusion_keeps_layer_float_and_unknown_name_is_clear():
    h = tiny_handle("embedding")
    name = "encoder.layer.0.attention.self.query"
    q = compress(h, [QuantizeDynamicInt8(exclude=(name,))])
    assert type(q.model.get_submodule(name)) is torch.nn.Linear
    assert type(q.model.get_submodule("encoder.layer.0.attention.self.key")) is not \
        torch.nn.Linear
    with pytest.raises(UserError, match="no layer named.*similar: encoder.layer.0.attention"):
        compress(h, [QuantizeWeightOnly(exclude=("encoder.layer.0.atention.self.query",))])


@pytest.mark.parametrize("kw,match", [
    ({"bits": 3}, "bits must be one of 4, 8"),
    ({"group_size": 7}, "group_size must be an even integer"),
])
def test_bad_weight_only_configs(kw, match):
    with pytest.raises(UserError, match=match):
        QuantizeWeightOnly(**kw)


def test_group_size_must_divide_in_features_checked_before_work():
    h = tiny_handle("embedding")  # hidden 32, intermediate 64
    with pytest.raises(UserError, match="group_size 24 does not divide"):
        compress(h, [QuantizeWeightOnly(bits=4, group_size=24)])


def test_other_bad_configs():
    with pytest.raises(UserError, match="observer"):
        QuantizeStaticInt8(observer="mse")
    with pytest.raises(UserError, match="dtype"):
        CastHalf("fp8")
    with pytest.raises(UserError, match="list of module names"):
        QuantizeDynamicInt8(exclude="encoder")


@pytest.mark.parametrize("cfg", [QuantizeDynamicInt8(per_channel=True),
                                 QuantizeWeightOnly(bits=4, group_size=16),
                                 QuantizeStaticInt8(n_samples=8),
                                 CastHalf("bf16", keep_fp32=("*LayerNorm*",))],
                         ids=lambda c: type(c).__name__)
def test_quantized_artifact_replays_with_identical_outputs(tmp_path, cfg):
    h = compress(tiny_handle("embedding"), [cfg])
    Artifact.save(h, tmp_path / "a")
    back = load(tmp_path / "a")
    assert back.transforms == h.transforms
    assert np.array_equal(outputs(back), outputs(h))
    # the artifact holds float weights only (safetensors), the recipe replays on load
    manifest = Artifact.read_manifest(tmp_path / "a")
    assert manifest["replay_from"] == 0


def test_sensitivity_report_one_row_per_linear_worst_first():
    h = tiny_handle("embedding")
    rows = layer_sensitivity(h, n_samples=8)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in h.model.modules())
    assert len(rows) == n_linear
    dbs = [r["sqnr_db"] for r in rows]
    assert dbs == sorted(dbs) and all(10 < d < 80 for d in dbs)
    # int4 hurts every layer more than int8
    rows4 = {r["layer"]: r["sqnr_db"] for r in layer_sensitivity(
        h, QuantizeWeightOnly(bits=4, group_size=16), n_samples=8)}
    rows8 = {r["layer"]: r["sqnr_db"] for r in layer_sensitivity(
        h, QuantizeWeightOnly(bits=8, group_size=16), n_samples=8)}
    assert all(rows4[k] < rows8[k] for k in rows8)
