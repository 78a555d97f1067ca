"""Static int8 for image models on a tiny CNN built in-process: ONNX Runtime (QDQ,
per-channel) and OpenVINO (NNCF) artifacts run, save, reload hash-checked, and their
quality against the original is measured. Calibration feeds are the model's own
preprocessing of the image calibration split. Nothing here assumes the CPU: int8 may move
the outputs by any amount; the tests check structure, round trips and that quality is
computed, never how much int8 changes the outputs."""
import numpy as np
import pytest

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.backends.onnx_layers import (
    calibration_feeds,
    calibration_items,
    depthwise_convs,
    quantizable_layers,
)
from reactinfer.core.errors import UserError
from reactinfer.data import ImageItem
from reactinfer.tasks import tokenize
from reactinfer.testing import assert_tamper_refused, tiny_image_handle, tiny_images

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
pytest.importorskip("onnx", reason="onnx is not installed")

N_CALIBRATION = 12  # images: a few batches, a quick conversion


@pytest.fixture(scope="module")
def cnn():
    return tiny_image_handle()


@pytest.fixture(scope="module")
def imgs():
    return [ImageItem(im, label=i % 10) for i, im in enumerate(tiny_images(8))]


def _ops(path):
    import onnx

    return [n.op_type for n in onnx.load(str(path)).graph.node]


def test_calibration_feeds_are_the_models_preprocessing_of_the_image_split(cnn):
    items = calibration_items(cnn, 10)
    assert len(items) == 10 and all(isinstance(it, ImageItem) for it in items)
    feeds = calibration_feeds(cnn, items, batch=4)
    assert [f["pixel_values"].shape for f in feeds] == [(4, 3, 16, 16)] * 2 + [(2, 3, 16, 16)]
    np.testing.assert_array_equal(feeds[0]["pixel_values"],
                                  tokenize(cnn.tokenizer, items[:4], 0)["pixel_values"])
    assert set(feeds[0]) == {"pixel_values"}


@pytest.fixture(scope="module")
def ort_int8(cnn):
    return to_backend(cnn, "onnxruntime", precision="int8-static",
                      calibration_items=N_CALIBRATION)


def test_ort_int8_static_quantizes_the_convolutions_per_channel(cnn, ort_int8):
    import onnx

    model = onnx.load(str(ort_int8.files["model.onnx"]))
    consts = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    producers = {o: n for n in model.graph.node for o in n.output}
    assert convs
    for conv in convs:  # activations and weights both arrive through DequantizeLinear
        act, weight = (producers.get(conv.input[0]), producers.get(conv.input[1]))
        assert act is not None and act.op_type == "DequantizeLinear"
        assert weight is not None and weight.op_type == "DequantizeLinear"
        scale = consts[weight.input[1]]
        assert list(scale.dims) == [list(consts[weight.input[0]].dims)[0]]  # per channel
    assert ort_int8.backend_options["precision"] == "int8-static"
    assert "reduce_range" in ort_int8.backend_options  # chosen from the CPU, recorded


def test_ort_int8_static_runs_with_its_quality_measured(cnn, ort_int8, imgs):
    r = ri.bench(ort_int8, batch_size=4, latency_runs=2, eval_texts=imgs, progress=False,
                 reference=cnn)
    q = r["quality"]
    assert r["backend"] == "onnxruntime" and r["n_eval"] == len(imgs)
    assert set(q) >= {"top1_agreement", "top5_overlap", "kl_divergence", "accuracy"}
    assert 0.0 <= q["top1_agreement"] <= 1.0 and q["kl_divergence"] >= 0.0


def test_ort_int8_static_artifact_reloads_hash_checked(ort_int8, imgs, tmp_path):
    batch = tokenize(ort_int8.tokenizer, imgs, 0)
    want = ort_int8.runner()(batch)
    assert want.shape == (len(imgs), 10) and np.isfinite(want).all()
    ri.Artifact.save(ort_int8, tmp_path / "art")
    back = ri.load(tmp_path / "art")
    assert back.model is None and back.backend == "onnxruntime"
    assert back.task == "image-classification" and back.tokenizer == ort_int8.tokenizer
    np.testing.assert_allclose(back.runner()(batch), want, atol=1e-5)
    assert_tamper_refused(tmp_path / "art", "model.onnx")


def test_ort_fp32_layers_keep_a_convolution_float_and_bad_names_are_refused(cnn):
    fp32 = to_backend(cnn, "onnxruntime", precision="fp32")
    layers = quantizable_layers(fp32.files["model.onnx"])
    first = layers[0]
    assert first.endswith("Conv") and depthwise_convs(fp32.files["model.onnx"]) == []
    # the old option name is still accepted
    kept = to_backend(cnn, "onnxruntime", precision="int8-static", calibration_texts=4,
                      fp32_layers=[first])
    import onnx

    model = onnx.load(str(kept.files["model.onnx"]))
    producers = {o: n for n in model.graph.node for o in n.output}
    node = next(n for n in model.graph.node if n.name == first)
    assert node.input[1] not in producers  # its weight is the float initializer
    with pytest.raises(UserError, match="not a MatMul/Gemm/Conv layer"):
        to_backend(cnn, "onnxruntime", precision="int8-static", fp32_layers=["/no/Conv"])
    with pytest.raises(UserError, match="calibration_method"):
        to_backend(cnn, "onnxruntime", precision="int8-static", calibration_method="magic")


def test_depthwise_convs_are_found():
    import torch

    from reactinfer.core.images import ImagePreprocess

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 8, 3, groups=8),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(8, 4)).eval()
    h = ri.load(model, task="image-classification",
                preprocess=ImagePreprocess(size=12, resize=None, mean=(0.0,) * 3,
                                           std=(255.0,) * 3))
    path = to_backend(h, "onnxruntime", precision="fp32").files["model.onnx"]
    layers = quantizable_layers(path)
    assert len(layers) == 3 and depthwise_convs(path) == [layers[1]]


# -- OpenVINO -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ov_int8(cnn):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install nncf)")
    return to_backend(cnn, "openvino", precision="int8", calibration_items=N_CALIBRATION)


def test_openvino_fp32_of_an_image_model_matches_torch(cnn, imgs):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    conv = to_backend(cnn, "openvino", precision="fp32")
    for rows in (imgs, imgs[:1]):  # a batch, and one image
        batch = tokenize(cnn.tokenizer, rows, 0)
        np.testing.assert_allclose(conv.runner()(batch), cnn.runner()(batch), atol=1e-4)


def test_openvino_int8_quantizes_the_convolutions(ov_int8):
    import openvino as ov

    from reactinfer.backends import openvino as ovb

    model = ov.Core().read_model(str(ov_int8.files["model.xml"]))
    layers = ovb.quantizable_layers(model)
    assert layers and not all(ovb.is_float_layer(model, n) for n in layers)
    assert ov_int8.backend_options["overflow_fix"] in ("enable", "disable")  # from the CPU


def test_openvino_int8_runs_saves_and_reloads_hash_checked(cnn, ov_int8, imgs, tmp_path):
    r = ri.bench(ov_int8, batch_size=4, latency_runs=2, eval_texts=imgs, progress=False,
                 reference=cnn)
    assert set(r["quality"]) >= {"top1_agreement", "top5_overlap", "kl_divergence",
                                 "accuracy"}
    batch = tokenize(cnn.tokenizer, imgs, 0)
    want = ov_int8.runner()(batch)
    assert want.shape == (len(imgs), 10) and np.isfinite(want).all()
    ri.Artifact.save(ov_int8, tmp_path / "art")
    back = ri.load(tmp_path / "art")
    assert back.backend == "openvino" and back.task == "image-classification"
    np.testing.assert_allclose(back.runner()(batch), want, atol=1e-5)
    assert_tamper_refused(tmp_path / "art", "model.bin")


def test_ort_fp32_layers_stay_float_in_the_graph_that_runs(cnn, tmp_path):
    """ONNX Runtime's optimizer would quantize a float layer fed by int8 activations
    (per tensor); the session keeps `fp32_layers` float in the graph it runs."""
    import onnx

    from reactinfer.backends.onnxruntime import make_session

    fp32 = to_backend(cnn, "onnxruntime", precision="fp32")
    middle = quantizable_layers(fp32.files["model.onnx"])[1]  # fed by a quantized layer
    kept = to_backend(cnn, "onnxruntime", precision="int8-static", calibration_items=4,
                      fp32_layers=[middle])
    make_session(kept.files["model.onnx"], opt_level="basic",
                 optimized_path=tmp_path / "run.onnx")
    graph = onnx.load(str(tmp_path / "run.onnx")).graph
    node = next(n for n in graph.node if n.name == middle)
    weights = {i.name: i for i in graph.initializer}
    assert node.op_type == "Conv" and node.input[1] in weights
    assert weights[node.input[1]].data_type == onnx.TensorProto.FLOAT


def test_openvino_fp32_layers_name_convolutions_by_their_onnx_names(cnn):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install nncf)")
    import openvino as ov

    from reactinfer.backends import openvino as ovb

    fp32 = to_backend(cnn, "onnxruntime", precision="fp32")
    names = quantizable_layers(fp32.files["model.onnx"])
    middle = names[1]
    kept = to_backend(cnn, "openvino", precision="int8", calibration_items=4,
                      fp32_layers=[middle])
    model = ov.Core().read_model(str(kept.files["model.xml"]))
    assert set(ovb.quantizable_layers(model)) == set(names)  # the same names in both engines
    assert ovb.is_float_layer(model, middle)
    assert not all(ovb.is_float_layer(model, n) for n in names)
    with pytest.raises(UserError, match="no MatMul/Conv named"):
        to_backend(cnn, "openvino", precision="int8", fp32_layers=["/no/Conv"])


def test_ort_calibration_methods_all_build_a_model(cnn, imgs):
    batch = tokenize(cnn.tokenizer, imgs[:2], 0)
    for method in ("percentile", "entropy"):
        q8 = to_backend(cnn, "onnxruntime", precision="int8-static", calibration_items=4,
                        calibration_method=method)
        assert q8.backend_options["calibration_method"] == method
        assert "QuantizeLinear" in _ops(q8.files["model.onnx"])
        assert np.isfinite(q8.runner()(batch)).all()


def test_openvino_bf16_of_an_image_model_only_where_native(cnn, imgs):
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    from reactinfer.core.hardware import hardware_profile, native_bf16

    if not native_bf16(hardware_profile().isa):
        with pytest.raises(UserError, match="native bf16"):
            to_backend(cnn, "openvino", precision="bf16")
        return
    bf16 = to_backend(cnn, "openvino", precision="bf16")
    r = ri.bench(bf16, batch_size=4, latency_runs=2, eval_texts=imgs, progress=False,
                 reference=cnn)
    assert r["backend"] == "openvino" and 0.0 <= r["quality"]["top1_agreement"] <= 1.0


# -- which layers to keep float: measured on the int8 model ------------------------------
def _outlier_cnn(where: str):
    """conv → depthwise conv → 1×1 conv → classifier, in which the 1×1 conv breaks int8 on
    every CPU and the float model does not notice. Its input holds a channel that is always
    1000 (`input`: its weights there are zero, so the per-tensor int8 step of that input
    rounds every other channel to nothing) or always 0 (`weight`: its weights there are
    1000, so each output channel's int8 step rounds its other weights to nothing). (A
    depthwise conv's input is no place for the outlier: NNCF quantizes it per channel.)"""
    import torch

    from reactinfer.core.images import ImagePreprocess

    torch.manual_seed(0)
    conv, dw, pw = (torch.nn.Conv2d(3, 8, 3, padding=1),
                    torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.Conv2d(8, 8, 1))
    with torch.no_grad():
        dw.weight[0].zero_()  # the depthwise conv's channel 0 is a constant
        dw.bias[0] = 1000.0 if where == "input" else 0.0
        pw.weight[:, 0] = 0.0 if where == "input" else 1000.0
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), dw, torch.nn.ReLU(), pw,
                                torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    pre = ImagePreprocess(size=16, resize=18, mean=(120.0,) * 3, std=(60.0,) * 3)
    return ri.load(model, task="image-classification", preprocess=pre, name="outlier-cnn")


def test_ort_static_int8_ranks_convolutions_by_their_effect_on_the_int8_model():
    from reactinfer.core.backend import get_backend

    handle = _outlier_cnn("weight")
    names = quantizable_layers(to_backend(handle, "onnxruntime",
                                          precision="fp32").files["model.onnx"])
    ranks = get_backend("onnxruntime").rank_layers(
        handle, calibration_items(handle, 8), precision="int8-static", calibration_items=8)
    assert set(ranks) == set(names)  # every convolution and the classifier
    assert max(ranks, key=ranks.__getitem__) == names[2]  # the 1×1 conv
    kept = to_backend(handle, "onnxruntime", precision="int8-static", calibration_items=8,
                      fp32_layers=[names[2]])
    import onnx

    graph = onnx.load(str(kept.files["model.onnx"])).graph
    producers = {o: n for n in graph.node for o in n.output}
    node = next(n for n in graph.node if n.name == names[2])
    assert all(i not in producers for i in node.input[1:])  # float weight and bias


def test_openvino_int8_ranks_convolutions_by_their_effect_and_keeps_the_first_float():
    pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino)")
    pytest.importorskip("nncf", reason="nncf is not installed (pip install nncf)")
    import openvino as ov

    from reactinfer.backends import openvino as ovb
    from reactinfer.backends.openvino_int8 import input_quantizer
    from reactinfer.core.backend import get_backend

    handle = _outlier_cnn("input")
    names = quantizable_layers(to_backend(handle, "onnxruntime",
                                          precision="fp32").files["model.onnx"])
    assert depthwise_convs(to_backend(handle, "onnxruntime",
                                      precision="fp32").files["model.onnx"]) == [names[1]]
    ranks = get_backend("openvino").rank_layers(handle, calibration_items(handle, 8),
                                                precision="int8", calibration_items=8)
    assert set(ranks) == set(names)  # the convolutions and the classifier (through Flatten)
    assert max(ranks, key=ranks.__getitem__) == names[2]  # the 1×1 conv
    int8 = ov.Core().read_model(str(to_backend(handle, "openvino", precision="int8",
                                               calibration_items=8).files["model.xml"]))
    kept = ov.Core().read_model(str(to_backend(handle, "openvino", precision="int8",
                                               calibration_items=8,
                                               fp32_layers=[names[2]]).files["model.xml"]))
    for model, float_ in ((int8, False), (kept, True)):  # no FakeQuantize feeds it
        op = ovb.layer_ops(model)[names[2]]
        assert (input_quantizer(op) is None) is float_
        assert ovb.is_float_layer(model, names[2]) is float_
