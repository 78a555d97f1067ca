"""Bad input from a user's own files is one clear line (UserError; 413 when served), never a
crash or a hang: an ONNX file that takes no image tensor, a module whose output is not
(N, classes), a preprocess that does not fit the model, a decompression bomb, a label
folder with one class."""
from __future__ import annotations

import base64
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import reactinfer as ri
from reactinfer.core.errors import UserError
from reactinfer.core.images import (
    DEFAULT_MAX_PIXELS,
    PIXELS_ENV,
    ImagePreprocess,
    TooManyPixels,
    max_pixels,
)
from reactinfer.data import image_classes, read_image_dir
from reactinfer.testing import png_claiming, tiny_cnn, tiny_images, tiny_tokenizer

PRE = ImagePreprocess(size=16, resize=18, mean=(120.0,) * 3, std=(60.0,) * 3)
IMAGE = "image-classification"


def one_line(e: pytest.ExceptionInfo) -> str:
    text = str(e.value)
    assert "\n" not in text and "Traceback" not in text
    return text


# -- ONNX files ------------------------------------------------------------------------
def onnx_graph(path: Path, shape: list, dtype: str = "FLOAT", classes: int = 10,
               extra_inputs: int = 0) -> Path:
    """A tiny ONNX classifier built with onnx.helper: x (N, C, H, W) → global average pool
    → flatten → Gemm → logits (N, classes). `shape` is the input as declared ("N" a
    named axis); for a non-image input the graph casts it to float first."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    elem = getattr(TensorProto, dtype)
    channels = shape[1] if len(shape) == 4 and isinstance(shape[1], int) else 3
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(size=(channels, classes)).astype(np.float32), "w")
    inputs = [helper.make_tensor_value_info("x", elem, shape)] + [
        helper.make_tensor_value_info(f"extra{i}", TensorProto.FLOAT, ["N", 4])
        for i in range(extra_inputs)]
    nodes = [helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
             helper.make_node("GlobalAveragePool", ["xf"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "w"], ["logits"])]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])
    graph = helper.make_graph(nodes, "tiny", inputs, [out], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def test_a_users_onnx_image_classifier_loads_and_runs_whatever_its_input_is_named(tmp_path):
    pytest.importorskip("onnxruntime")
    path = onnx_graph(tmp_path / "cnn.onnx", ["N", 3, 16, 16])
    h = ri.load(path, task=IMAGE, preprocess=PRE)
    y = h.runner()(PRE(tiny_images(3)))
    assert y.shape == (3, 10)
    PRE.save_pretrained(tmp_path)  # a preprocess.json beside the file does as well
    assert ri.load(path, task=IMAGE).tokenizer == PRE


@pytest.mark.parametrize("shape,dtype,extra,words", [
    (["N", 12], "INT64", 0, "INT64 (N, 12), not an image tensor"),  # token ids
    (["N", 3, 16], "FLOAT", 0, "not an image tensor"),
    (["N", 3, 16, 16], "UINT8", 0, "UINT8"),
    (["N", 3, 16, 16], "FLOAT", 2, "takes 3 inputs"),
    (["N", 16, 16, 3], "FLOAT", 0, "channels-last"),
])
def test_an_onnx_file_whose_input_is_no_image_tensor_is_one_line(tmp_path, shape, dtype, extra,
                                                                 words):
    path = onnx_graph(tmp_path / "m.onnx", shape, dtype, extra_inputs=extra)
    with pytest.raises(UserError) as e:
        ri.load(path, task=IMAGE, preprocess=PRE)
    assert words in one_line(e)


@pytest.mark.parametrize("shape,pre,words", [
    (["N", 3, 32, 32], PRE, "takes images (N, 3, 32, 32) but its preprocess gives (N, 3, 16, 16)"),
    ([1, 1, 16, 16], PRE, "takes images (1, 1, 16, 16) but its preprocess gives (N, 3, 16, 16)"),
    (["N", 3, 16, 16], ImagePreprocess(size=16, resize=None, mean=(0.0,), std=(1.0,),
                                       channels="L"), "(N, 1, 16, 16) (L, size 16"),
])
def test_an_onnx_preprocess_that_does_not_fit_names_both_at_load(tmp_path, shape, pre, words):
    path = onnx_graph(tmp_path / "m.onnx", shape)
    with pytest.raises(UserError) as e:
        ri.load(path, task=IMAGE, preprocess=pre)
    assert words in one_line(e)


def test_an_onnx_image_model_without_a_preprocess_says_how_to_give_one(tmp_path):
    path = onnx_graph(tmp_path / "m.onnx", ["N", 3, 16, 16])
    with pytest.raises(UserError, match="preprocess=.*preprocess.json beside it"):
        ri.load(path, task=IMAGE)
    with pytest.raises(UserError, match="does not say which task.*image-classification"):
        ri.load(path)


# -- torch modules ---------------------------------------------------------------------
class Returns(torch.nn.Module):
    """A module whose forward returns what `make` builds from its input."""

    def __init__(self, make):
        super().__init__()
        self.make = make
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, **_):
        return self.make(x)


@pytest.mark.parametrize("module,words", [
    (torch.nn.Conv2d(3, 4, 3), "returns shape (2, 4, 14, 14)"),  # a feature map
    (Returns(lambda x: x.mean((1, 2, 3))), "returns shape (2,)"),
    (Returns(lambda x: x.flatten(1)[:, :1]), "returns shape (2, 1): one score per item"),
    (Returns(lambda x: (x.flatten(1)[:, :10], x)), "returns tuple"),
    (Returns(lambda x: x.flatten(1)[:1, :10]), "returns shape (1, 10)"),
])
def test_a_module_whose_output_is_not_n_by_classes_is_one_line_naming_the_shape(module, words):
    with pytest.raises(UserError) as e:
        ri.load(module, task=IMAGE, preprocess=PRE)
    text = one_line(e)
    assert words in text and "(N, classes)" in text


class TextScores(torch.nn.Module):
    """A text model taking token ids; `pairs`: two logits per text, else one score."""

    def __init__(self, pairs: bool):
        super().__init__()
        self.pairs = pairs
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        score = input_ids.float().mean(1) * self.w  # (N,)
        return torch.stack([score, -score], 1) if self.pairs else score


def test_a_text_classifier_module_is_checked_too():
    with pytest.raises(UserError) as e:
        ri.load(TextScores(pairs=False), task="classification", tokenizer=tiny_tokenizer())
    assert "returns shape (2,) for a batch of 2 texts" in one_line(e)
    ok = ri.load(TextScores(pairs=True), task="classification", tokenizer=tiny_tokenizer())
    assert ok.runner()(ri_tokens(ok)).shape == (2, 2)


def ri_tokens(h):
    from reactinfer.tasks import tokenize

    return tokenize(h.tokenizer, ["a b c", "d"], 16)


def test_a_module_preprocess_that_does_not_fit_names_both():
    grey = tiny_cnn(channels=1)  # takes (N, 1, H, W)
    with pytest.raises(UserError) as e:
        ri.load(grey, task=IMAGE, preprocess=PRE)
    text = one_line(e)
    assert "(N, 3, 16, 16) (RGB, size 16" in text and "1 channels" in text
    assert "set preprocess=" in text
    fixed = ImagePreprocess(size=16, resize=None, mean=(0.0,), std=(255.0,), channels="L")
    assert ri.load(grey, task=IMAGE, preprocess=fixed).task == IMAGE


def test_the_check_runs_the_module_in_eval_mode():
    model = tiny_cnn().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ri.load(model, task=IMAGE, preprocess=PRE)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm stats untouched


# -- decompression bombs ---------------------------------------------------------------
def save_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.mark.parametrize("size", [(30000, 30000), (8000, 6000)])  # over Pillow's; over ours
def test_a_decompression_bomb_in_a_data_folder_is_refused_from_its_header(tmp_path, size):
    for i, img in enumerate(tiny_images(3)):
        save_png(tmp_path / f"ok{i}.png", img)
    (tmp_path / "bomb.png").write_bytes(png_claiming(*size))
    assert (tmp_path / "bomb.png").stat().st_size < 200
    with pytest.raises(TooManyPixels) as e:
        read_image_dir(tmp_path)
    text = one_line(e)
    assert "bomb.png" in text and "refused before decoding" in text
    with pytest.raises(UserError, match="refused before decoding"):
        PRE.apply(tmp_path / "bomb.png")  # an item given as a path is checked the same way


def test_the_pixel_limit_is_documented_and_can_be_set(tmp_path, monkeypatch):
    assert max_pixels() == DEFAULT_MAX_PIXELS == 40_000_000
    save_png(tmp_path / "a.png", tiny_images(1)[0])  # 20 × 20
    monkeypatch.setenv(PIXELS_ENV, "399")
    with pytest.raises(TooManyPixels, match=f"20×20 .* over the limit .*{PIXELS_ENV}"):
        read_image_dir(tmp_path)
    monkeypatch.setenv(PIXELS_ENV, "400")
    assert len(read_image_dir(tmp_path)[0]) == 1
    (tmp_path / "b.png").write_bytes(png_claiming(8000, 6000))
    monkeypatch.setenv(PIXELS_ENV, "1e8")  # a larger cap: 48 MP passes the header check
    items, skipped = read_image_dir(tmp_path)
    assert len(items) + skipped == 2
    monkeypatch.setenv(PIXELS_ENV, "lots")
    with pytest.raises(UserError, match="must be a positive number"):
        max_pixels()


@pytest.mark.parametrize("size,cap", [((30000, 30000), DEFAULT_MAX_PIXELS), ((20, 20), 100)])
def test_a_served_bomb_gets_413_before_decoding(size, cap):
    from reactinfer.serving.images import _decode_one
    from reactinfer.serving.state import ApiError

    data = png_claiming(*size) if size[0] > 1000 else save_png_bytes(tiny_images(1)[0])
    g = SimpleNamespace(preprocess=PRE)
    with pytest.raises(ApiError) as e:
        _decode_one(0, base64.b64encode(data).decode(), g, 1 << 20, cap)
    assert e.value.status == 413
    assert "refused before decoding" in e.value.message
    assert PIXELS_ENV not in e.value.message  # the server's own flag is named instead
    ok = _decode_one(0, base64.b64encode(save_png_bytes(tiny_images(1)[0])).decode(), g,
                     1 << 20, DEFAULT_MAX_PIXELS)
    assert ok.shape == (3, 16, 16)


def save_png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


# -- label folders ---------------------------------------------------------------------
def test_a_label_folder_with_one_class_is_read_unlabelled_with_a_warning(tmp_path, capsys):
    for i, img in enumerate(tiny_images(4)):
        save_png(tmp_path / "cats" / f"{i}.png", img)
    items, _ = read_image_dir(tmp_path)
    assert len(items) == 4 and all(it.label is None for it in items)
    err = capsys.readouterr().err
    assert "one class subfolder ('cats')" in err and len(err.strip().splitlines()) == 1
    assert image_classes(tmp_path) is None
    save_png(tmp_path / "dogs" / "0.png", tiny_images(1, seed=1)[0])
    items, _ = read_image_dir(tmp_path)
    assert image_classes(tmp_path) == ["cats", "dogs"]
    assert sorted({it.label for it in items}) == [0, 1]
    assert "warning" not in capsys.readouterr().err


def test_a_plain_folder_of_images_stays_unlabelled_without_a_warning(tmp_path, capsys):
    for i, img in enumerate(tiny_images(3)):
        save_png(tmp_path / f"{i}.png", img)
    items, _ = read_image_dir(tmp_path)
    assert all(it.label is None for it in items) and image_classes(tmp_path) is None
    assert capsys.readouterr().err == ""


def test_a_bf16_module_is_checked_in_its_own_type():
    h = ri.load(tiny_cnn().to(torch.bfloat16), task=IMAGE, preprocess=PRE)
    assert h.task == IMAGE
