"""BatchNorm folding: each Conv2d whose only consumer is a BatchNorm2d takes the
normalisation into its weights and bias, and the BatchNorm becomes nn.Identity.

In eval mode BatchNorm is an affine map per channel, y = γ (x − μ) / √(σ² + ε) + β, so
with s = γ / √(σ² + ε) the pair conv → BN equals one conv with weights W·s (per output
channel) and bias (b − μ)·s + β: exact up to float rounding, one op fewer per pair, and
ordinary layers for every later step (int8, pruning, an exported graph). Free: no data,
no training.

The pairs are found on the traced graph (torch.fx, with every Conv2d and BatchNorm2d a
leaf), so a conv whose output is also used elsewhere, a module called twice, or a
BatchNorm that uses batch statistics is left as it is. A model that cannot be traced is
a UserError that says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..core.errors import UserError
from ..core.transform import TransformConfig, register_transform
from ._common import clone, need_model, set_module

if TYPE_CHECKING:
    import torch

    from ..core.handle import ModelHandle


@dataclass(frozen=True)
class FoldBatchNorm(TransformConfig):
    """Fold every BatchNorm2d that directly follows a Conv2d into it (recipe name
    `fold_bn`)."""

    kind: ClassVar[str] = "fold_bn"
    # the folded module's structure follows from the original's alone: an artifact of a
    # plain torch module replays this on the fresh architecture before loading the weights
    rebuild_on_load: ClassVar[bool] = True


def _tracer(leaves: tuple[type, ...]) -> Any:
    import torch.fx

    class Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: torch.nn.Module, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    return Tracer()


def conv_bn_pairs(model: torch.nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) of every Conv2d → BatchNorm2d pair that can be folded:
    the conv's output goes to the BatchNorm and nowhere else, each is called once, and the
    BatchNorm normalises with its running statistics."""
    import torch
    from torch import nn

    try:
        graph = _tracer((nn.Conv2d, nn.BatchNorm2d)).trace(model)
    except Exception as e:  # noqa: BLE001  fx raises many kinds for untraceable code
        raise UserError(f"fold_bn: {type(model).__name__} cannot be traced with torch.fx "
                        f"({type(e).__name__}: {e}); its BatchNorms cannot be located") from None
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[str(node.target)] = calls.get(str(node.target), 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[str(node.target)] != 1:
            continue
        bn = model.get_submodule(str(node.target))
        if not isinstance(bn, nn.BatchNorm2d) or bn.running_mean is None:
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" \
                or calls[str(src.target)] != 1 or len(src.users) != 1:
            continue
        conv = model.get_submodule(str(src.target))
        if isinstance(conv, nn.Conv2d) and conv.out_channels == bn.num_features:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_into(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    """Fold `bn`'s eval-mode affine map into `conv`'s weights and bias, in place (in
    float64, so the folded weights round once)."""
    import torch

    assert bn.running_mean is not None and bn.running_var is not None
    with torch.no_grad():
        var, mean = bn.running_var.double(), bn.running_mean.double()
        gamma = bn.weight.double() if bn.weight is not None else torch.ones_like(var)
        beta = bn.bias.double() if bn.bias is not None else torch.zeros_like(var)
        scale = gamma / torch.sqrt(var + bn.eps)
        w = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        b = conv.bias.double() if conv.bias is not None else torch.zeros_like(var)
        dtype = conv.weight.dtype
        conv.weight.copy_(w.to(dtype))
        conv.bias = torch.nn.Parameter(((b - mean) * scale + beta).to(dtype))


@register_transform(FoldBatchNorm)
def _fold_bn(handle: ModelHandle, cfg: FoldBatchNorm) -> ModelHandle:
    from torch import nn

    model = need_model(handle, "fold_bn")
    new = clone(model).eval()
    pairs = conv_bn_pairs(new)
    for conv_name, bn_name in pairs:
        conv, bn = new.get_submodule(conv_name), new.get_submodule(bn_name)
        assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
        fold_into(conv, bn)
        set_module(new, bn_name, nn.Identity())
    return handle.derive(model=new)
