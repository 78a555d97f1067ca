"""Structured channel pruning for CNNs: whole output channels of convolutions are removed
(with the BatchNorm channels and the next layers' input channels that depend on them), so
the network is physically smaller and faster in dense kernels, not masked.

Dependency-aware: Torch-Pruning's DepGraph traces the model once on an example input and
groups every coupled dimension: a residual add ties the channels of all the branches it
sums, a depthwise convolution ties its input and output channels (and its groups). A
group is scored as one (the L2 or L1 norm of all the weights it touches, summed over the
group) and its lowest-scoring channels go together. The classifier head (every Linear)
keeps its outputs, the classes; its inputs shrink with the last convolution.

Recovery is separate and composes in a recipe: `Distill` (logit KD from the original on
the train images) then `RecalibrateBatchNorm` (running statistics re-estimated on the
calibration images), e.g.

    [PruneChannels(ratio=0.3), Distill(steps=400, lr=1e-3), RecalibrateBatchNorm()]

A pruned model stores plain tensors of the new shapes; the artifact loader resizes the
architecture's layers to them (models/cnn.fit_to_state), so it reloads with no code.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import UserError
from ..core.images import ImagePreprocess
from ..core.transform import TransformConfig, register_transform
from ._common import check_choice, check_names, clone, need_model, resolve_names

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

CHANNEL_IMPORTANCE = ("l2", "l1")  # norm of the weights a channel group touches


@dataclasses.dataclass(frozen=True)
class PruneChannels(TransformConfig):
    """Remove the `ratio` fraction of output channels of every prunable convolution
    (uniformly per layer, or ranked over the whole network with `global_ranking`),
    respecting residual and depthwise coupling. `ignore`: module names or globs left
    whole (the classifier head always is); `round_to`: channel counts kept a multiple of
    it (8 or 16 suits SIMD kernels)."""
    ratio: float = 0.3
    importance: str = "l2"
    ignore: tuple[str, ...] = ()
    round_to: int = 1
    global_ranking: bool = False

    def validate(self) -> None:
        if not isinstance(self.ratio, (int, float)) or isinstance(self.ratio, bool) \
                or not 0 < self.ratio < 1:
            raise UserError(f"PruneChannels: ratio (fraction of channels removed) must be in "
                            f"(0, 1), got {self.ratio!r}")
        check_choice("PruneChannels", "importance", self.importance, CHANNEL_IMPORTANCE)
        check_names("PruneChannels", "ignore", self.ignore)
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise UserError(f"PruneChannels: round_to must be a positive integer, "
                            f"got {self.round_to!r}")


def example_input(handle: ModelHandle) -> torch.Tensor:
    """One zero image of the shape the model takes, from its ImagePreprocess."""
    pre = handle.tokenizer
    if not isinstance(pre, ImagePreprocess):
        raise UserError(f"channel pruning needs an image model with its preprocessing; "
                        f"{handle.name} is a {handle.task} model")
    n = 1 if pre.channels == "L" else 3
    return torch.zeros(1, n, pre.size, pre.size)  # (1, C, H, W)


def count_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on `x` (batch 1) in the convolutions and
    linears, read from the shapes they actually produce (subclasses such as SameConv2d
    included, which Torch-Pruning's counter misses)."""
    total = [0]

    def conv(m: torch.nn.Conv2d, _inp: Any, out: torch.Tensor) -> None:
        kh, kw = m.kernel_size
        total[0] += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def lin(m: torch.nn.Linear, _inp: Any, out: torch.Tensor) -> None:
        total[0] += out[0].numel() * m.in_features

    hooks = [m.register_forward_hook(conv if isinstance(m, torch.nn.Conv2d) else lin)
             for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    try:
        with torch.inference_mode():
            model.eval()(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total[0]


def size_of(model: torch.nn.Module, x: torch.Tensor) -> dict[str, int]:
    return {"params": sum(p.numel() for p in model.parameters()), "macs": count_macs(model, x)}


@register_transform(PruneChannels)
def _prune_channels(handle: ModelHandle, cfg: PruneChannels) -> ModelHandle:
    import torch_pruning as tp

    model = need_model(handle, "PruneChannels")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if not names:
        raise UserError(f"PruneChannels needs convolutions; {type(model).__name__} has no "
                        "Conv2d layer")
    x = example_input(handle)
    new = clone(model).eval()
    before = size_of(new, x)
    with torch.no_grad():
        y0 = new(x)
    skip = resolve_names(new, cfg.ignore, [n for n, _ in new.named_modules() if n],
                         "PruneChannels ignore")
    ignored = [m for n, m in new.named_modules()
               if n in skip or isinstance(m, torch.nn.Linear)]
    imp = tp.importance.MagnitudeImportance(p=2 if cfg.importance == "l2" else 1)
    pruner = tp.pruner.MetaPruner(new, x, importance=imp, pruning_ratio=cfg.ratio,
                                  ignored_layers=ignored, global_pruning=cfg.global_ranking,
                                  round_to=cfg.round_to if cfg.round_to > 1 else None)
    pruner.step()
    with torch.no_grad():
        y1 = new(x)
    assert y1.shape == y0.shape, (y0.shape, y1.shape)  # the head keeps its classes
    after = size_of(new, x)
    report = {f"{k}_{when}": v for when, d in (("before", before), ("after", after))
              for k, v in d.items()}
    metrics = {**handle.metrics, "prune_channels": report}
    return handle.derive(model=new.eval(), metrics=metrics)
