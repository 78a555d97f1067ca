"""A user's own model through every verb: an in-memory torch module, a ModelHandle, an ONNX
file of any task (with --task / --preprocess), a hub id looked up in the local cache only.
Tiny models built here; the checks are the user's: the run finishes, resumes on the same
weights only, and its best runs without the user's class."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import reactinfer as ri
from reactinfer.cli.main import main
from reactinfer.core.errors import UserError
from reactinfer.core.handle import task_names
from reactinfer.planner.catalogue import default_actions
from reactinfer.tasks import get_task
from reactinfer.testing import tiny_cnn, tiny_images

IMAGE = "image-classification"
PRE = {"size": 16, "resize": 18, "mean": [120.0] * 3, "std": [60.0] * 3}


class UsersNet(torch.nn.Module):
    """A class only the user has: depthwise convolution, BatchNorm, a residual."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.dw = torch.nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn = torch.nn.BatchNorm2d(8)
        self.head = torch.nn.Linear(8, classes)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.stem(x))
        y = y + torch.relu(self.bn(self.dw(y)))
        return self.head(y.mean((2, 3)))


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    for i, img in enumerate(tiny_images(90, size=24)):
        d = root / f"class{i % 3}"
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return root


def _fold_only():
    return [a for a in default_actions() if a.name == "fold BatchNorm"]


def _run(model, out, image_dir, **kw):
    return ri.optimize(model, out=out, budget_s=120, data=str(image_dir), n_eval=16,
                       latency_runs=2, confirm_n_eval=16, progress=False, batch_size=8,
                       actions=_fold_only(), **kw)


def test_optimize_takes_a_users_module_and_its_best_runs_without_the_class(image_dir,
                                                                             tmp_path):
    net = UsersNet().eval()
    out = tmp_path / "run"
    r = _run(net, out, image_dir, task=IMAGE, preprocess=PRE, name="users-net")
    assert r["model"].startswith("users-net (module UsersNet)")
    assert any("ONNX graph saved beside the torch weights" in n for n in r["notes"])
    manifest = json.loads((out / "best" / "manifest.json").read_text())
    assert manifest["module_class"] == "UsersNet" and "model.onnx" in manifest["files"]
    # what `react serve OUT/best` and `react batch` do: load it without the class
    best = ri.load(out / "best")
    assert best.model is None and best.backend == "onnxruntime"
    items = tiny_images(6, size=24, seed=3)
    ours = get_task(IMAGE).evaluate(best.runner(), best.tokenizer, items, 4, 0)["logits"]
    pre = best.tokenizer
    with torch.no_grad():
        want = net(torch.from_numpy(pre(items)["pixel_values"])).numpy()
    np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4)
    # the --data folder's class subfolders name the classes (one per class of the model)
    from reactinfer.models.vision import model_labels

    assert model_labels(best) == ["class0", "class1", "class2"]
    # with the class, the torch weights load as before
    again = ri.load(out / "best", module=UsersNet())
    assert again.model is not None and again.backend.startswith("torch")


def test_a_run_on_a_module_resumes_on_the_same_weights_only(image_dir, tmp_path):
    out = tmp_path / "run"
    h = ri.load(UsersNet(), task=IMAGE, preprocess=PRE, name="users-net")
    first = _run(h, out, image_dir)
    again = _run(UsersNet(), out, image_dir, task=IMAGE, preprocess=PRE, name="users-net",
                 resume=True)  # a fresh instance of the same weights: the same run
    assert again["reused"] >= len([t for t in first["trials"] if t["observation"]])
    with pytest.raises(UserError, match="weights are not those of the earlier run"):
        _run(UsersNet(seed=1), out, image_dir, task=IMAGE, preprocess=PRE, name="users-net",
             resume=True)


def test_the_verbs_take_a_module(image_dir):
    from reactinfer.compression.fold import FoldBatchNorm

    net = UsersNet().eval()
    folded = ri.compress(net, [FoldBatchNorm()], task=IMAGE, preprocess=PRE)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.model.modules())
    report = ri.bench(net, task=IMAGE, preprocess=PRE, data=str(image_dir), latency_runs=2,
                      progress=False)
    assert report["quality"]["top1_agreement"] == 1.0
    with pytest.raises(TypeError, match="optimize\\(\\) takes a model name or path"):
        ri.optimize(3.5)


def _export(net: torch.nn.Module, path, input_name: str = "input"):
    torch.onnx.export(net, (torch.zeros(1, 3, 16, 16),), str(path), input_names=[input_name],
                      output_names=["scores"], dynamic_axes={input_name: {0: "b"}},
                      dynamo=False)
    return path


def test_an_onnx_file_of_an_image_model_loads_with_its_task_and_preprocess(tmp_path,
                                                                           image_dir):
    net = UsersNet().eval()
    path = _export(net, tmp_path / "model.onnx")
    with pytest.raises(UserError, match="image-classification") as e:
        ri.load(path)  # no task recorded: the message lists every registered task
    assert all(t in str(e.value) for t in task_names())
    with pytest.raises(UserError, match="preprocess"):
        ri.load(path, task=IMAGE)
    (tmp_path / "pre.json").write_text(json.dumps(PRE))
    h = ri.load(path, task=IMAGE, preprocess=tmp_path / "pre.json")
    items = tiny_images(5, size=24, seed=4)
    got = get_task(IMAGE).evaluate(h.runner(), h.tokenizer, items, 2, 0)["logits"]
    with torch.no_grad():
        want = net(torch.from_numpy(h.tokenizer(items)["pixel_values"])).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # preprocess.json beside the file is found by itself
    (tmp_path / "preprocess.json").write_text(json.dumps(PRE))
    assert ri.load(path, task=IMAGE).tokenizer == h.tokenizer


def test_engines_quantize_a_users_float_onnx_file(tmp_path):
    from reactinfer.backends import to_backend

    path = _export(UsersNet().eval(), tmp_path / "model.onnx", input_name="images")
    (tmp_path / "preprocess.json").write_text(json.dumps(PRE))
    h = ri.load(path, task=IMAGE)
    int8 = to_backend(h, "onnxruntime", precision="int8-static", calibration_items=8)
    assert int8.backend_options["precision"] == "int8-static"
    items = tiny_images(4, size=24, seed=5)
    ref = get_task(IMAGE).evaluate(h.runner(), h.tokenizer, items, 2, 0)["logits"]
    out = get_task(IMAGE).evaluate(int8.runner(), int8.tokenizer, items, 2, 0)["logits"]
    assert out.shape == ref.shape and np.isfinite(out).all()
    assert not np.array_equal(out, ref)  # quantized: not the float graph run again


def test_the_cli_takes_task_and_preprocess_for_an_onnx_file(tmp_path, image_dir, capsys):
    path = _export(UsersNet().eval(), tmp_path / "model.onnx")
    (tmp_path / "p.json").write_text(json.dumps(PRE))
    rc = main(["bench", str(path), "--task", IMAGE, "--preprocess", str(tmp_path / "p.json"),
               "--data", str(image_dir), "--latency-runs", "2", "--no-progress", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["task"] == IMAGE and report["quality"]["top1_agreement"] == 1.0
    assert main(["bench", str(path), "--no-progress"]) != 0
    assert "--task" in capsys.readouterr().err


def test_a_hub_id_is_looked_up_in_the_local_cache_only(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match="not in the local Hugging Face cache"):
        ri.load("someone/not-a-cached-model")


def test_a_task_outside_the_registry_is_refused_with_the_registered_ones():
    with pytest.raises(UserError) as e:
        ri.load(tiny_cnn(), task="segmentation")
    assert all(t in str(e.value) for t in task_names())


def test_an_onnx_file_is_offered_engine_actions_only(tmp_path):
    from reactinfer.planner.catalogue import catalogue, for_model

    path = _export(UsersNet().eval(), tmp_path / "model.onnx")
    (tmp_path / "preprocess.json").write_text(json.dumps(PRE))
    kept, left_out = for_model(catalogue(), ri.load(path, task=IMAGE))
    assert kept and all(a.backend is not None and not a.steps for a in kept)
    assert {"fold BatchNorm"} <= set(left_out)
    assert all("need the torch model" in why for why in left_out.values())
