"""The CNN modules of the image built-ins: TF "same" padding, shapes, checkpoint layout."""
import math
import os

import pytest
import torch

from reactinfer.models.cnn import (
    EfficientNetLite,
    ResNet,
    ResNetConfig,
    SameConv2d,
    load_checked,
    same_padding,
)


@pytest.mark.parametrize(("size", "kernel", "stride", "expected"), [
    (224, 3, 2, (0, 1)),  # even input, stride 2: TF pads only after
    (224, 5, 2, (1, 2)),
    (225, 3, 2, (1, 1)),  # odd input: symmetric
    (112, 3, 1, (1, 1)),
    (112, 5, 1, (2, 2)),
    (7, 1, 1, (0, 0)),
    (1, 3, 2, (1, 1)),
])
def test_same_padding_matches_tensorflow(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


@pytest.mark.parametrize(("size", "kernel", "stride"),
                         [(224, 3, 2), (15, 5, 2), (16, 5, 2), (9, 3, 1), (10, 5, 1)])
def test_same_conv_keeps_ceil_size_and_pads_after(size, kernel, stride):
    conv = SameConv2d(1, 1, kernel, stride, bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.ones(1, 1, size, size)
    y = conv(x)
    assert y.shape[-2:] == (math.ceil(size / stride),) * 2
    before, after = same_padding(size, kernel, stride)
    if after > before:  # the last window overhangs more zeros than the first
        assert y[0, 0, -1, -1] < y[0, 0, 0, 0]


def test_efficientnet_lite0_layout_matches_the_checkpoint():
    model = EfficientNetLite().eval()
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert len(model._blocks) == 16
    sd = model.state_dict()
    assert tuple(sd["_conv_stem.weight"].shape) == (32, 3, 3, 3)
    assert tuple(sd["_blocks.3._depthwise_conv.weight"].shape) == (144, 1, 5, 5)
    assert "_blocks.0._expand_conv.weight" not in sd  # expand ratio 1: no expansion
    assert tuple(sd["_fc.weight"].shape) == (1000, 1280)
    assert all(m.eps == 1e-3 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1000)


def test_resnet18_layout_and_checked_loading():
    model = ResNet(ResNetConfig())
    convs = [m for m in model.modules()
             if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 1 + 2 * 2 * 4  # stem + two 3×3 per BasicBlock × [2, 2, 2, 2]
    with torch.inference_mode():
        assert model.eval()(torch.zeros(3, 1, 8, 8)).shape == (3, 10)
    state = ResNet(ResNetConfig()).state_dict()
    load_checked(model, state)
    bad = dict(state)
    bad["fc.weight"] = torch.zeros(11, 128)
    with pytest.raises(AssertionError, match="fc.weight"):
        load_checked(model, bad)


def test_checkpoint_converted_once_to_verified_safetensors(tmp_path, monkeypatch):
    from reactinfer.models.vision import efficientnet_weights

    monkeypatch.setenv("REACT_CACHE_DIR", str(tmp_path / "cache"))
    pth = tmp_path / "w.pth"
    torch.save({"a.weight": torch.arange(6.0).reshape(2, 3),
                "bn.num_batches_tracked": torch.tensor(7)}, pth)
    first = efficientnet_weights(pth)
    cached = list((tmp_path / "cache" / "efficientnet-lite0").glob("*/*.safetensors"))
    assert len(cached) == 1 and (cached[0].parent / "hashes.json").exists()
    mtime = cached[0].stat().st_mtime_ns
    again = efficientnet_weights(pth)  # read from the cache, not converted again
    assert cached[0].stat().st_mtime_ns == mtime
    assert torch.equal(again["a.weight"], first["a.weight"])
    cached[0].write_bytes(cached[0].read_bytes()[:-4] + b"\0\0\0\0")  # damaged
    os.utime(cached[0], ns=(mtime + 10**9, mtime + 10**9))  # a new mtime on any file system
    fixed = efficientnet_weights(pth)  # the hash check catches it: converted again
    assert torch.equal(fixed["a.weight"], torch.arange(6.0).reshape(2, 3))
    assert int(fixed["bn.num_batches_tracked"]) == 7
