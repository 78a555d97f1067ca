import json

import numpy as np
import pytest
import torch

from reactinfer import compress, load
from reactinfer.compression import Distill, DropLayers, recalibrate_batchnorm
from reactinfer.compression.distill import lr_at, train, validation_error
from reactinfer.core.errors import UserError
from reactinfer.data import texts_for
from reactinfer.testing import save_tiny_hf, tiny_handle, tiny_texts


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("d") / "texts.txt"
    words = " ".join(tiny_texts(10)).split()
    rng = np.random.default_rng(0)  # varied texts from the tiny vocabulary
    lines = [" ".join(rng.choice(words, rng.integers(4, 20))) for _ in range(400)]
    p.write_text("\n".join(lines))
    return str(p)


def test_distillation_lowers_loss_and_beats_undistilled_student(tmp_path, data):
    teacher = tiny_handle("embedding", layers=2, seed=0)
    student_dir = save_tiny_hf(tmp_path / "student", layers=1, seed=5)
    undistilled = load(student_dir).model
    held_out = texts_for("eval", data)
    err0, _ = validation_error(teacher, teacher.model, undistilled, held_out)
    cfg = Distill(student_model=str(student_dir), steps=80, eval_every=20, lr=3e-3, data=data,
                  progress=False, patience=10)
    out = compress(teacher, [cfg])
    report = out.metrics["distill"]
    err1, q = validation_error(teacher, teacher.model, out.model, held_out)
    assert err1 < err0 * 0.7, (err0, err1)  # quality on texts it never trained on rose
    assert report["best_error"] < report["initial_error"]
    assert out.model.config.num_hidden_layers == 1


@pytest.mark.parametrize("task", ["classification", "causal-lm"])
def test_logit_kd_reduces_the_kd_loss(task, data):
    from reactinfer.compression.distill import _batches, _forward, distill_loss

    teacher = tiny_handle(task, layers=2, seed=0)
    student = tiny_handle(task, layers=1, seed=3)
    texts = texts_for("eval", data)[:16]
    batch = _batches(teacher, texts, list(range(len(texts))))
    cfg = Distill(steps=60, eval_every=30, lr=3e-3, data=data, progress=False, patience=10,
                  alpha=1.0)

    def loss(model):
        with torch.no_grad():
            return float(distill_loss(task, cfg, _forward(model.eval(), task, batch),
                                      _forward(teacher.model, task, batch), batch))

    before = loss(student.model)
    model = student.model
    train(teacher, teacher.model, model, cfg)
    assert loss(model) < 0.8 * before


def test_student_from_recipe_and_interrupted_run_resumes(tmp_path, data):
    teacher = tiny_handle("embedding", layers=4)
    common = dict(student=({"type": "DropLayers", "keep": 0.5},), steps=40, eval_every=10,
                  lr=1e-3, data=data, progress=False, patience=100,
                  checkpoint_dir=str(tmp_path / "ck"))
    full = compress(teacher, [Distill(**{**common, "checkpoint_dir": str(tmp_path / "full")})])
    # a run stopped by its time budget leaves a checkpoint...
    part = compress(teacher, [Distill(**common, time_budget_s=1e-9)])
    assert part.metrics["distill"]["stopped"] == "time budget"
    state = tmp_path / "ck"
    # ...and one interrupted (Ctrl-C) right after its second checkpoint, at step 20
    student = compress(teacher, [DropLayers(keep=0.5)]).model
    cfg20 = Distill(**common)
    import reactinfer.compression.distill as dist
    orig = dist._save_checkpoint
    calls = []

    def save_then_stop(*a, **k):
        orig(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    dist._save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(teacher, teacher.model, student, cfg20)
    finally:
        dist._save_checkpoint = orig
    assert json.loads((state / "state.json").read_text())["step"] == 20
    resumed = compress(teacher, [Distill(**common)])  # same run: picks up at step 20
    assert resumed.metrics["distill"]["steps"] == 40
    assert [h["step"] for h in json.loads((state / "state.json").read_text())["history"]] == \
        [10, 20, 30, 40]
    a = full.model.state_dict()
    b = resumed.model.state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a if a[k].is_floating_point())


def test_checkpoint_of_other_run_is_refused(tmp_path, data):
    t = tiny_handle("embedding", layers=2)
    ck = str(tmp_path / "ck")
    compress(t, [Distill(student=({"type": "DropLayers", "keep": 0.5},), steps=2, eval_every=1,
                         data=data, progress=False, checkpoint_dir=ck)])
    with pytest.raises(UserError, match="different distillation run"):
        compress(t, [Distill(student=({"type": "DropLayers", "keep": 0.5},), steps=2, lr=1e-2,
                             eval_every=1, data=data, progress=False, checkpoint_dir=ck)])


def test_lr_schedules():
    c = Distill(steps=100, warmup=0.1, lr=1.0)
    assert lr_at(c, 0, None) == pytest.approx(0.1)
    assert lr_at(c, 9, None) == pytest.approx(1.0)
    assert lr_at(c, 10, None) == pytest.approx(1.0)
    assert lr_at(c, 55, None) == pytest.approx(0.5)
    assert lr_at(c, 99, None) < 0.01
    e = Distill(steps=100, warmup=0.0, lr=1.0, schedule="error", decay_k=4.0)
    assert lr_at(e, 50, 0.25) == pytest.approx(1 / (1 + 4 * 0.25))


@pytest.mark.parametrize("kw,match", [
    ({"schedule": "linear"}, "schedule must be one of"),
    ({"steps": 0}, "steps must be a positive integer"),
    ({"alpha": 1.5}, "alpha"),
    ({"student": ({"type": "QuantizeDynamicInt8"},)}, "structural steps"),
    ({"student": ({"type": "PruneFFN", "keep": 2},)}, "keep must be a fraction"),
    ({"student": ({"type": "DropLayers"},), "student_model": "x"}, "not both"),
])
def test_bad_distill_configs(kw, match):
    with pytest.raises(UserError, match=match):
        Distill(**kw)


def test_recovery_of_in_memory_model_needs_a_teacher():
    h = compress(tiny_handle("embedding", layers=2), [DropLayers(keep=0.5)])
    with pytest.raises(UserError, match="needs its teacher"):
        compress(h, [Distill(steps=1, progress=False)])


def test_batchnorm_recalibration_on_a_tiny_cnn():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
    net.eval()
    batches = [torch.randn(16, 3, 8, 8) * 3 + 1 for _ in range(5)]
    bn = net[1]
    assert recalibrate_batchnorm(net, batches) == 1
    with torch.no_grad():
        feats = torch.cat([net[0](b) for b in batches])  # (80, 8, 6, 6)
    torch.testing.assert_close(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4, rtol=1e-4)
    assert not net.training and bn.momentum == 0.1
