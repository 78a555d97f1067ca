"""BatchNorm folding (fold_bn): exact, the BatchNorms physically gone, only true pairs, and
artifacts that reload; and the task-aware data plumbing the planner reads images with."""
import pytest
import torch
from torch import nn

import reactinfer as ri
from reactinfer.compression import FoldBatchNorm, conv_bn_pairs
from reactinfer.core.errors import UserError
from reactinfer.core.transform import compress, config_from_dict
from reactinfer.data import ImageItem, items_for, items_sha256, texts_for
from reactinfer.models.cnn import EfficientNetLite
from reactinfer.testing.tiny import tiny_cnn, tiny_handle, tiny_image_handle, tiny_images


def _bns(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def _random_stats(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                assert m.running_var is not None
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.3)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


def _fold(model: nn.Module) -> nn.Module:
    handle = ri.load(model, task="image-classification",
                     preprocess={"size": 16, "resize": None}, name="m")
    out = compress(handle, [FoldBatchNorm()]).model
    assert out is not None
    return out


@pytest.mark.parametrize("make", [
    lambda: tiny_cnn(seed=1),  # residual blocks, 1×1 shortcut convs
    lambda: _random_stats(EfficientNetLite(num_classes=7, stages=((1, 3, 1, 8, 1),
                                                                  (3, 5, 2, 12, 2)),
                                           stem=8, head=16)),  # depthwise, TF same padding
], ids=["resnet", "efficientnet"])
def test_fold_bn_is_exact_and_removes_every_batchnorm(make):
    model = make()
    n = _bns(model)
    assert n > 0 and len(conv_bn_pairs(model)) == n
    folded = _fold(model)
    assert _bns(folded) == 0 and _bns(model) == n  # the original is left as it was
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) >= n
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, out = model(x), folded(x)
    assert ref.abs().max() > 0.1  # outputs that can differ
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


class _Shared(nn.Module):
    """The conv's output feeds the BatchNorm AND the sum: folding would change it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.bn2 = nn.BatchNorm2d(4, track_running_stats=False)  # batch statistics

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        z = self.bn(y) + y
        return self.bn2(self.conv2(z)).mean((2, 3))


def test_fold_bn_leaves_what_it_cannot_fold_exactly():
    model = _random_stats(_Shared())
    assert conv_bn_pairs(model) == []
    folded = _fold(model)
    assert _bns(folded) == 2
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))


class _Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
            x = -x
        return self.bn(self.conv(x)).mean((2, 3))


def test_fold_bn_on_an_untraceable_model_is_a_user_error():
    with pytest.raises(UserError, match="cannot be traced"):
        _fold(_Untraceable())


def test_fold_bn_from_a_recipe_and_its_artifact_reloads(tmp_path):
    h = tiny_image_handle(seed=3)
    cfg = config_from_dict({"type": "fold_bn"})
    assert isinstance(cfg, FoldBatchNorm)
    folded = compress(h, [cfg])
    assert folded.transforms[-1]["type"] == "fold_bn"
    ri.Artifact.save(folded, tmp_path / "a")
    # a plain torch module: the architecture is given, and the fold replayed on it first
    back = ri.load(str(tmp_path / "a"), module=tiny_cnn(seed=99))
    assert back.model is not None and _bns(back.model) == 0
    x = torch.from_numpy(h.tokenizer(tiny_images(4))["pixel_values"])
    with torch.no_grad():
        torch.testing.assert_close(back.model(x), h.model(x), rtol=1e-5, atol=1e-5)


# -- data plumbing ------------------------------------------------------------------------
def test_items_for_gives_texts_to_a_text_model_and_images_to_an_image_model():
    text = tiny_handle("embedding")
    for part in ("calibration", "train", "eval"):
        assert items_for(text, part, None, 20) == texts_for(part, None, 20)
        assert all(isinstance(t, str) for t in items_for(text, part, None, 5))
    image = tiny_image_handle()
    cal, ev = items_for(image, "calibration"), items_for(image, "eval", limit=10)
    assert len(ev) == 10 and all(isinstance(it, ImageItem) for it in cal + ev)
    assert not {it.source for it in cal} & {it.source for it in items_for(image, "eval")}


def test_items_for_reads_the_users_image_folder(tmp_path):
    from PIL import Image

    for i, img in enumerate(tiny_images(6)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not an image")
    items = items_for(tiny_image_handle(), "eval", str(tmp_path))
    assert items and all(isinstance(it, ImageItem) for it in items)


def test_items_digest_keeps_the_text_digest_and_tells_images_apart():
    import hashlib
    import json

    texts = ["a b", "c"]
    assert items_sha256(texts) == hashlib.sha256(json.dumps(texts).encode()).hexdigest()
    a, b = tiny_images(2)
    assert items_sha256([ImageItem(a, 1, "x")]) == items_sha256([ImageItem(a.copy(), 1, "x")])
    assert items_sha256([ImageItem(a, 1, "x")]) != items_sha256([ImageItem(b, 1, "x")])
    assert items_sha256([ImageItem(a, 1, "x")]) != items_sha256([ImageItem(a, 2, "x")])
