"""Class names for a user's image model: given to load() (or read from a --labels file, or
a --data folder's class subfolders), kept in its preprocess.json through every artifact
and engine made from it, and checked against the classes the model gives."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import reactinfer as ri
from reactinfer.core.errors import UserError
from reactinfer.core.images import ImagePreprocess, read_labels
from reactinfer.models.vision import model_labels
from reactinfer.testing import tiny_cnn, tiny_handle, tiny_image_handle

PRE = ImagePreprocess(size=16, resize=18, mean=(120.0,) * 3, std=(60.0,) * 3)
NAMES = [f"class {i}" for i in range(10)]
IMAGE = "image-classification"


def test_labels_files_one_per_line_a_json_list_or_id2label(tmp_path):
    (tmp_path / "a.txt").write_text("cat\ndog\n\n")  # trailing blank lines are no class
    assert read_labels(tmp_path / "a.txt") == ("cat", "dog")
    (tmp_path / "b.json").write_text(json.dumps(["cat", "dog", "crane", "crane"]))
    assert read_labels(tmp_path / "b.json") == ("cat", "dog", "crane", "crane")
    (tmp_path / "c.json").write_text(json.dumps({"1": "dog", "0": "cat"}))
    assert read_labels(tmp_path / "c.json") == ("cat", "dog")


@pytest.mark.parametrize("text,words", [
    ("cat\n\ndog\n", "line 2 is empty"),
    ('["cat", 3]', "entry 1 is 3"),
    ('{"0": "cat", "2": "dog"}', "ids must be 0..1"),
    ('{"a": "cat"}', "map class ids"),
    ("[cat, dog", "not valid JSON"),
    ("", "got none"),
])
def test_a_bad_labels_file_is_one_line(tmp_path, text, words):
    (tmp_path / "l.txt").write_text(text)
    with pytest.raises(UserError) as e:
        read_labels(tmp_path / "l.txt")
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="cannot read the labels file"):
        read_labels(tmp_path / "missing.txt")


def test_load_takes_labels_and_checks_their_number_against_the_model():
    h = ri.load(tiny_cnn(), task=IMAGE, preprocess=PRE, labels=NAMES)
    assert h.tokenizer.labels == tuple(NAMES) and model_labels(h) == NAMES
    with pytest.raises(UserError, match="3 class names for a model with 10 classes"):
        ri.load(tiny_cnn(), task=IMAGE, preprocess=PRE, labels=NAMES[:3])
    with pytest.raises(UserError, match="for image-classification models; .* embedding"):
        ri.load(tiny_handle("embedding"), labels=NAMES)
    with pytest.raises(UserError, match="list of class names"):
        ri.load(tiny_cnn(), task=IMAGE, preprocess=PRE, labels="cats")
    assert model_labels(tiny_image_handle()) is None  # none given: the ids serve


def test_labels_travel_through_artifacts_and_engines(tmp_path):
    from reactinfer.core.artifact import Artifact

    h = ri.load(tiny_cnn(), task=IMAGE, preprocess=PRE, labels=NAMES)
    Artifact.save(h, tmp_path / "torch")
    back = ri.load(tmp_path / "torch", module=tiny_cnn(seed=3))
    assert model_labels(back) == NAMES
    pytest.importorskip("onnxruntime")
    from reactinfer.backends import to_backend

    ort = to_backend(h, "onnxruntime", workdir=tmp_path / "work")
    Artifact.save(ort, tmp_path / "ort")
    served = ri.load(tmp_path / "ort")
    assert model_labels(served) == NAMES
    x = PRE([np.zeros((20, 20, 3), np.uint8)])
    np.testing.assert_allclose(served.runner()(x), h.runner()(x), rtol=1e-4, atol=1e-5)
    # the bare ONNX file with the preprocess.json beside it: the names come along
    h.tokenizer.save_pretrained(tmp_path / "work")
    assert model_labels(ri.load(tmp_path / "work" / "model.onnx")) == NAMES


def test_labels_can_be_given_to_an_onnx_file_and_to_an_artifact(tmp_path):
    pytest.importorskip("onnxruntime")
    from reactinfer.backends import to_backend
    from reactinfer.core.artifact import Artifact

    h = ri.load(tiny_cnn(), task=IMAGE, preprocess=PRE)
    ort = to_backend(h, "onnxruntime", workdir=tmp_path / "work")
    path = tmp_path / "work" / "model.onnx"
    named = ri.load(path, task=IMAGE, preprocess=PRE, labels=NAMES)
    assert model_labels(named) == NAMES
    with pytest.raises(UserError, match="11 class names for a model with 10 classes"):
        ri.load(path, task=IMAGE, preprocess=PRE, labels=NAMES + ["extra"])
    Artifact.save(ort, tmp_path / "art")
    assert model_labels(ri.load(tmp_path / "art", labels=NAMES)) == NAMES


def test_the_server_takes_labels_for_its_image_models():
    pytest.importorskip("fastapi")
    from reactinfer.serving.app import with_class_names
    from reactinfer.serving.config import ServeConfig

    text = tiny_handle("embedding")
    image = tiny_image_handle()
    t, i = with_class_names([text, image], NAMES)
    assert t is text and model_labels(i) == NAMES
    with pytest.raises(UserError, match="none of the models served is one"):
        with_class_names([text], NAMES)
    with pytest.raises(UserError, match="2 class names for a model with 10 classes"):
        with_class_names([image], NAMES[:2])
    assert ServeConfig(labels=["a", "b"]).labels == ("a", "b")
    with pytest.raises(UserError, match="non-empty strings"):
        ServeConfig(labels=["a", ""])


def test_serve_labels_file_errors_are_one_line_before_any_model_loads(tmp_path, capsys):
    pytest.importorskip("fastapi")
    from reactinfer.cli.main import main

    code = main(["serve", "no-such-model", "--port", "0", "--labels",
                 str(tmp_path / "missing.txt")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot read the labels file" in err and len(err.splitlines()) == 1


def test_a_data_folders_class_subfolders_give_the_names(tmp_path):
    from PIL import Image

    from reactinfer.data import image_classes, read_image_dir

    for cls in ("zebra", "ant", "moth"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (12, 12), (40, 80, 120)).save(tmp_path / cls / "0.png")
    names = image_classes(tmp_path)
    assert names == ["ant", "moth", "zebra"]
    items, _ = read_image_dir(tmp_path)
    for it in items:  # the id of each item names its own folder
        assert names[it.label] == Path(it.source).parts[0]
