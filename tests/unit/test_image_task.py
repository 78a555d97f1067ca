"""The image-classification task: preprocessing, batching, quality, bench on a tiny CNN."""
import numpy as np
import pytest

import reactinfer as ri
from reactinfer.core.errors import UserError
from reactinfer.core.images import ImagePreprocess, as_preprocess
from reactinfer.data import ImageItem
from reactinfer.tasks import get_task, tokenize
from reactinfer.tasks.image_classification import image_quality
from reactinfer.testing import tiny_cnn, tiny_image_handle, tiny_images


def test_preprocess_resizes_short_side_then_centre_crops():
    pre = ImagePreprocess(size=4, resize=4, mean=(0.0,) * 3, std=(1.0,) * 3)
    img = np.zeros((8, 16, 3), np.uint8)  # → 4 × 8 → centre 4 × 4 (columns 2..5 of 8)
    img[:, 6:10] = 255  # a bright band in the middle: the crop must keep it, centred
    x = pre.apply(img)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    assert x[:, :, 1:3].min() > 200 > 60 > x[:, :, [0, 3]].max()
    np.testing.assert_allclose(x, x[..., ::-1])  # centred: symmetric left / right


def test_preprocess_normalises_and_orders_channels():
    img = np.zeros((5, 5, 3), np.uint8)
    img[..., 0], img[..., 2] = 255, 127
    rgb = ImagePreprocess(size=5, resize=None, mean=(127.0,) * 3, std=(128.0,) * 3)
    assert rgb.apply(img)[:, 0, 0] == pytest.approx([1.0, -127 / 128, 0.0])
    bgr = ImagePreprocess(size=5, resize=None, mean=(127.0,) * 3, std=(128.0,) * 3,
                          channels="BGR")
    assert bgr.apply(img)[:, 0, 0] == pytest.approx([0.0, -127 / 128, 1.0])
    grey = ImagePreprocess(size=3, resize=None, mean=(0.0,), std=(255.0,), channels="L")
    assert grey.apply(img).shape == (1, 3, 3)


def test_preprocess_round_trips_json_and_refuses_bad_fields(tmp_path):
    pre = ImagePreprocess(size=32, resize=40, mean=(1, 2, 3), std=(4, 5, 6), channels="BGR",
                          dataset="digits")
    pre.save_pretrained(tmp_path)
    assert ImagePreprocess.from_dir(tmp_path) == pre
    assert as_preprocess(pre.to_dict()) == pre
    with pytest.raises(UserError, match="unknown image preprocessing"):
        as_preprocess({"size": 8, "crop": 4})
    with pytest.raises(UserError, match="need 1 mean"):
        ImagePreprocess(channels="L")
    with pytest.raises(UserError, match="resize ≥ size"):
        ImagePreprocess(size=224, resize=200)
    with pytest.raises(UserError, match="uint8"):
        pre.apply(np.zeros((4, 4), np.float32))


def test_tokenize_batches_images_nchw():
    h = tiny_image_handle()
    batch = tokenize(h.tokenizer, tiny_images(5), 0)
    assert list(batch) == ["pixel_values"] and batch["pixel_values"].shape == (5, 3, 16, 16)


def test_quality_identical_and_perturbed():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 10)).astype(np.float32)
    same = image_quality(ref, ref.copy())
    assert same == {"top1_agreement": 1.0, "top5_overlap": 1.0, "kl_divergence": 0.0}
    noisy = image_quality(ref, ref + rng.normal(0, 1.0, ref.shape).astype(np.float32))
    assert noisy["top1_agreement"] < 1.0 and noisy["top5_overlap"] < 1.0
    assert noisy["kl_divergence"] > 0.01
    with pytest.raises(UserError, match="differ"):
        image_quality(ref, ref[:, :5])


def test_evaluate_keeps_order_and_labels():
    h = tiny_image_handle()
    task = get_task("image-classification")
    imgs = tiny_images(7)
    items = [ImageItem(im, label=i % 3) for i, im in enumerate(imgs)]
    out = task.evaluate(h.runner(), h.tokenizer, items, batch_size=3)
    assert out["logits"].shape == (7, 10)
    assert out["labels"].tolist() == [i % 3 for i in range(7)]
    one = task.evaluate(h.runner(), h.tokenizer, [imgs[4]], batch_size=1)
    np.testing.assert_allclose(one["logits"][0], out["logits"][4], rtol=1e-4, atol=1e-5)
    assert "labels" not in one  # plain arrays have no labels
    q = task.compare(out, out)
    assert q["accuracy"] == q["reference_accuracy"] and q["top1_agreement"] == 1.0


def test_bench_runs_a_user_cnn_against_another():
    imgs = [ImageItem(im, label=i % 10) for i, im in enumerate(tiny_images(12))]
    pre = {"size": 16, "resize": 18, "mean": [120, 120, 120], "std": [60, 60, 60]}
    model = ri.load(tiny_cnn(seed=0), task="image-classification", preprocess=pre)
    other = ri.load(tiny_cnn(seed=1), task="image-classification", preprocess=pre)
    r = ri.bench(model, batch_size=4, latency_runs=2, eval_texts=imgs, progress=False,
                 reference=other)
    assert r["task"] == "image-classification" and r["n_eval"] == 12
    assert "tokens_per_s" not in r["throughput"] and r["throughput"]["items_per_s"] > 0
    q = r["quality"]
    assert set(q) >= {"top1_agreement", "top5_overlap", "kl_divergence", "accuracy"}
    assert q["kl_divergence"] > 0  # different weights: the comparison sees it
    itself = ri.bench(model, batch_size=4, latency_runs=2, eval_texts=imgs, progress=False)
    assert itself["quality"]["top1_agreement"] == 1.0


def test_loading_a_cnn_needs_its_preprocessing():
    with pytest.raises(UserError, match="preprocess="):
        ri.load(tiny_cnn(), task="image-classification")
    with pytest.raises(UserError, match="preprocess= is for image"):
        ri.load(tiny_cnn(), task="embedding", preprocess={"size": 8})


def test_onnxruntime_fp32_export_matches_torch():
    pytest.importorskip("onnxruntime")
    imgs = tiny_images(6)
    r = ri.bench(tiny_image_handle(), backend="onnxruntime", precision="fp32", batch_size=4,
                 latency_runs=2, eval_texts=imgs, progress=False)
    assert r["backend"] == "onnxruntime" and r["reference"] == "tiny-cnn"
    assert r["quality"]["top1_agreement"] == 1.0 and r["quality"]["kl_divergence"] < 1e-6


def test_artifact_keeps_the_preprocessing_and_the_weights(tmp_path):
    from reactinfer.core.artifact import save_artifact

    h = tiny_image_handle()
    imgs = tiny_images(4)
    save_artifact(h, tmp_path / "art")
    assert (tmp_path / "art" / "preprocess.json").exists()
    back = ri.load(tmp_path / "art", module=tiny_cnn(seed=5))  # architecture, other weights
    assert back.tokenizer == h.tokenizer and back.task == "image-classification"
    np.testing.assert_allclose(back.runner()(tokenize(back.tokenizer, imgs, 0)),
                               h.runner()(tokenize(h.tokenizer, imgs, 0)), rtol=1e-5, atol=1e-6)


def test_backend_auto_measures_image_models_too():
    pytest.importorskip("onnxruntime")
    r = ri.bench(tiny_image_handle(), backend="auto", batch_size=4, latency_runs=2,
                 eval_texts=tiny_images(8), progress=False)
    tried = {c["backend"] for c in r["backend_selection"]["candidates"]}
    assert {"torch", "onnxruntime"} <= tried
    if get_backend_here("openvino"):  # declared for CNNs, so auto selection measures it
        assert "openvino" in tried
    assert r["quality_drop"] <= 0.01


def get_backend_here(name):
    from reactinfer.core.backend import list_backends

    return list_backends()[name].available()


def test_top_classes_best_first_with_names_or_ids():
    from reactinfer.tasks.image_classification import top_classes

    logits = np.array([[0.1, 3.0, -1.0, 2.0, 2.0, 0.5, 9.0],
                       [5.0, 4.0, 3.0, 2.0, 1.0, 0.0, -1.0]], np.float32)
    ids, names = top_classes(logits, None)
    assert ids.dtype == np.int64 and ids.tolist() == [[6, 1, 3, 4, 5], [0, 1, 2, 3, 4]]
    assert names == [["6", "1", "3", "4", "5"], ["0", "1", "2", "3", "4"]]  # ties: lower id
    _, named = top_classes(logits, list("abcdefg"), k=2)
    assert named == [["g", "b"], ["a", "b"]]
    small, _ = top_classes(logits[:, :3], None)  # fewer classes than 5
    assert small.shape == (2, 3)


def test_class_labels_follow_a_builtin_through_its_artifacts():
    from reactinfer.models.vision import class_labels

    digits = {"kind": "builtin", "ref": "resnet18-digits"}
    assert class_labels(digits) == [str(i) for i in range(10)]
    nested = {"kind": "artifact", "origin": {"kind": "artifact", "origin": {
        "kind": "builtin", "ref": "efficientnet-lite0"}}}
    names = class_labels(nested)
    assert names is not None and len(names) == 1000 and names[967] == "espresso"
    assert class_labels({"kind": "module", "ref": "ResNet"}) is None
    assert class_labels({"kind": "builtin", "ref": "minilm"}) is None
