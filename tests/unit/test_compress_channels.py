"""CNN channel pruning (Torch-Pruning's DepGraph) and its recovery: KD on images and
BatchNorm recalibration, on tiny CNNs built here (a ResNet with residuals, an
EfficientNet-style net with depthwise convolutions and identity skips)."""
import numpy as np
import pytest
import torch

from reactinfer import Artifact, compress, load
from reactinfer.compression import Distill, PruneChannels, RecalibrateBatchNorm
from reactinfer.compression.channels import count_macs
from reactinfer.compression.distill import _batches, _forward, distill_loss, train
from reactinfer.core.errors import UserError
from reactinfer.core.images import ImagePreprocess
from reactinfer.core.transform import config_from_dict, registered_transforms
from reactinfer.data import texts_for
from reactinfer.models.cnn import EfficientNetLite, MBConv
from reactinfer.testing import tiny_cnn, tiny_images
from reactinfer.testing.tiny import tiny_image_handle

PRE = ImagePreprocess(size=16, resize=18, mean=(120.0,) * 3, std=(60.0,) * 3)


def tiny_mbnet(seed: int = 0) -> torch.nn.Module:
    """Stem, a depthwise block, then a stride-2 stage whose second block has an identity
    skip: residual AND depthwise coupling in a few thousand parameters."""
    torch.manual_seed(seed)
    return EfficientNetLite(num_classes=10, stages=((1, 3, 1, 8, 1), (4, 3, 2, 16, 2)),
                            stem=8, head=32).eval()


def convs(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    """Two class folders of small images (labels 0 and 1)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("imgs")
    for i, img in enumerate(tiny_images(40, size=16)):
        d = root / f"class{i % 2}"
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.png")
    return str(root)


def test_prune_channels_shrinks_a_resnet_and_keeps_residuals_consistent():
    h = tiny_image_handle()
    out = compress(h, PruneChannels(ratio=0.5))
    before, after = convs(h.model), convs(out.model)
    assert n_params(out.model) < 0.5 * n_params(h.model)
    assert all(after[n].out_channels < before[n].out_channels for n in before)
    for block in [m for m in out.model.modules() if hasattr(m, "shortcut")]:
        # the residual add sums bn2's output with the shortcut's: same channel count
        x = torch.randn(2, block.conv1.in_channels, 8, 8)
        assert block(x).shape[1] == block.bn2.num_features == block.conv2.out_channels
        assert block.bn1.num_features == block.conv1.out_channels == block.conv2.in_channels
    x = torch.randn(3, 3, 16, 16)
    assert out.model(x).shape == h.model(x).shape == (3, 10)
    report = out.metrics["prune_channels"]
    assert report["params_before"] == n_params(h.model)
    assert report["params_after"] == n_params(out.model)
    assert report["macs_after"] < report["macs_before"]
    assert h.model.conv1.out_channels == 8  # the input handle is untouched


def test_prune_channels_respects_depthwise_and_identity_skips():
    model = tiny_mbnet()
    h = load(model, task="image-classification", preprocess=PRE, name="mb")
    out = compress(h, PruneChannels(ratio=0.5, importance="l1"))
    assert n_params(out.model) < n_params(model)
    for m in out.model.modules():
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size != (1, 1) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels  # still depthwise
            assert m.weight.shape[1] == 1
    blocks = [b for b in out.model.modules() if isinstance(b, MBConv)]
    assert any(b.skip for b in blocks)
    for b in blocks:
        if b.skip:  # x + y: the block's output channels equal its input channels
            cin = b._expand_conv.in_channels if b.has_expand else b._depthwise_conv.in_channels
            assert b._project_conv.out_channels == cin
    x = torch.randn(2, 3, 16, 16)
    assert out.model(x).shape == (2, 10)
    assert torch.isfinite(out.model(x)).all()


def test_ignore_keeps_a_layer_whole_and_a_typo_is_refused():
    h = tiny_image_handle()
    out = compress(h, PruneChannels(ratio=0.5, ignore=("conv1",)))
    assert out.model.conv1.out_channels == h.model.conv1.out_channels
    with pytest.raises(UserError, match="no layer named"):
        compress(h, PruneChannels(ratio=0.5, ignore=("conv_one",)))


def test_round_to_keeps_channel_counts_multiples():
    h = load(tiny_cnn(width=16), task="image-classification", preprocess=PRE, name="w16")
    out = compress(h, PruneChannels(ratio=0.4, round_to=4))
    assert all(m.out_channels % 4 == 0 for m in convs(out.model).values())


def test_global_ranking_prunes_the_same_total_but_not_uniformly():
    h = tiny_image_handle()
    out = compress(h, PruneChannels(ratio=0.5, global_ranking=True))
    kept = [m.out_channels / b.out_channels
            for m, b in zip(convs(out.model).values(), convs(h.model).values(), strict=True)]
    assert min(kept) < max(kept) and all(k > 0 for k in kept)
    assert out.model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_configs_are_registered_round_trip_and_validate():
    names = registered_transforms()
    assert names["PruneChannels"] is PruneChannels
    assert names["RecalibrateBatchNorm"] is RecalibrateBatchNorm
    for cfg in (PruneChannels(ratio=0.25, importance="l1", ignore=("fc",), round_to=8),
                RecalibrateBatchNorm(n_samples=10, batch_size=5)):
        assert config_from_dict(cfg.to_dict()) == cfg
    for bad in ({"ratio": 0}, {"ratio": 1.0}, {"importance": "taylor"}, {"round_to": 0}):
        with pytest.raises(UserError):
            PruneChannels(**bad)
    with pytest.raises(UserError, match="convolutions"):
        compress(load(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(768, 4)),
                      task="image-classification", preprocess=PRE, name="mlp"),
                 PruneChannels())


def test_macs_count_sees_conv_subclasses():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1, groups=1),
                                torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 5 * 5, 2))
    # 25 positions: 4·3·9 + 4·1·9 MACs each; the linear 100·2
    assert count_macs(model, torch.zeros(1, 3, 5, 5)) == 25 * (4 * 27 + 4 * 9) + 200


def test_pruned_artifact_reloads_into_the_unpruned_architecture(tmp_path):
    h = load(tiny_mbnet(), task="image-classification", preprocess=PRE, name="mb")
    out = compress(h, PruneChannels(ratio=0.5))
    Artifact.save(out, tmp_path / "a")
    back = load(str(tmp_path / "a"), module=tiny_mbnet(seed=7))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(back.model(x), out.model(x), rtol=0, atol=0)
    assert back.transforms[-1]["type"] == "PruneChannels"


def test_image_kd_lowers_the_kd_loss_of_a_pruned_student(image_dir):
    teacher = tiny_image_handle()
    student = compress(teacher, PruneChannels(ratio=0.5)).model
    items = texts_for("train", image_dir, preprocess=teacher.tokenizer)
    batch = _batches(teacher, items, list(range(len(items))))
    assert set(batch) == {"pixel_values", "labels"}  # class folders give labels
    cfg = Distill(steps=30, batch_size=8, eval_every=10, lr=3e-3, data=image_dir,
                  progress=False, patience=10, alpha=1.0)

    def loss(model):
        with torch.no_grad():
            task = "image-classification"
            return float(distill_loss(task, cfg, _forward(model.eval(), task, batch),
                                      _forward(teacher.model, task, batch), batch))

    before = loss(student)
    report = train(teacher, teacher.model, student, cfg)
    assert report["steps"] == 30
    assert loss(student) < 0.8 * before


def test_recovery_recipe_runs_and_recalibration_matches_batch_statistics(image_dir):
    h = tiny_image_handle()
    student = (PruneChannels(ratio=0.5).to_dict(),)
    kd = compress(h, Distill(student=student, steps=2, batch_size=4, eval_every=1, lr=1e-3,
                             data=image_dir, progress=False))
    assert kd.metrics["distill"]["steps"] == 2
    assert kd.model.conv1.out_channels < h.model.conv1.out_channels
    out = compress(kd, RecalibrateBatchNorm(n_samples=1000, batch_size=1000, data=image_dir))
    assert out.metrics["batchnorm_recalibrated"] == sum(
        isinstance(m, torch.nn.BatchNorm2d) for m in out.model.modules())
    # one batch of every calibration image: the first BN holds exactly its conv's stats
    items = texts_for("calibration", image_dir, preprocess=h.tokenizer)
    x = torch.from_numpy(h.tokenizer(items)["pixel_values"])
    with torch.no_grad():
        y = out.model.conv1(x)  # (N, C, H, W)
    np.testing.assert_allclose(out.model.bn1.running_mean.numpy(), y.mean((0, 2, 3)).numpy(),
                               rtol=1e-4, atol=1e-5)
    assert not torch.equal(out.model.bn1.running_mean, kd.model.bn1.running_mean)
    with pytest.raises(UserError, match="image models"):
        from reactinfer.testing import tiny_handle

        compress(tiny_handle("classification"), RecalibrateBatchNorm())


def test_cli_compress_prunes_the_builtin_digits_cnn_and_the_artifact_reloads(tmp_path, capsys):
    import json

    from reactinfer.cli.main import main

    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps([{"type": "PruneChannels", "ratio": 0.5},
                                  {"type": "RecalibrateBatchNorm", "n_samples": 64}]))
    rc = main(["compress", "resnet18-digits", "--recipe", str(recipe), "-o",
               str(tmp_path / "a"), "--n-eval", "20"])
    out = capsys.readouterr().out
    assert rc == 0 and "top1_agreement" in out and "accuracy" in out
    back = load(str(tmp_path / "a"))  # a built-in's architecture is known: no module=
    assert back.model.conv1.out_channels == 8
    assert back.metrics["prune_channels"]["params_after"] == n_params(back.model)
    assert [t["type"] for t in back.transforms] == ["PruneChannels", "RecalibrateBatchNorm"]


def test_the_planner_action_for_cnns_is_a_recipe_that_runs(image_dir):
    from reactinfer.planner.catalogue import default_actions

    [action] = [a for a in default_actions() if a.family == "prune-channels"]
    assert action.tasks == ("image-classification",)
    steps = [dict(s, steps=2, data=image_dir) if s["type"] == "Distill" else s
             for s in action.steps]
    h = tiny_image_handle()
    out = compress(h, [config_from_dict(s) for s in steps])
    assert [t["type"] for t in out.transforms] == ["Distill", "RecalibrateBatchNorm"]
    assert out.transforms[0]["student"][0]["type"] == "PruneChannels"
    assert n_params(out.model) < n_params(h.model)
