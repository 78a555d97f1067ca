"""What the planner knows about convolutional networks: the facts its Thoughts reason with
(convolutions, the share of depthwise work, BatchNorms that fold) and the priors that
follow from them. Every step is still measured here and kept only if it pays.

- BatchNorm folds into the preceding convolution for free: exact, no data, no training.
  Eager PyTorch runs each BatchNorm as its own pass over the activations; ONNX Runtime and
  OpenVINO fold it themselves when they compile the graph, so folding pays on torch.
- Depthwise convolutions (groups = channels) do few multiply-adds per byte moved: they are
  memory-bound, and int8 dot products (VNNI, AMX) speed them up far less than dense
  convolutions; depthwise-heavy networks (MobileNet, EfficientNet-Lite) also lose more
  quality in int8 (MobileNetV2 −2.1% top-1 under INC).
- Channel pruning removes whole filters: it changes the function, and needs recovery
  training (distillation, then BatchNorm recalibration) to win back quality.
"""
from __future__ import annotations

from typing import Any

# eager PyTorch: removing the BatchNorm passes (one per conv) is worth about this much on a
# CNN's forward; engines that compile the graph fold BatchNorm themselves (×1.0)
FOLD_SPEED = {"torch": 1.15, "torch-compile": 1.05}
# int8 on a depthwise convolution gains about this over fp32 (memory-bound)
DEPTHWISE_INT8 = 1.1
ENGINE_NOTE = {
    "onnxruntime": "ONNX Runtime fuses Conv + BatchNorm + ReLU/Clip into single kernels "
                   "(MLAS NCHWc convolutions) and is lossless in fp32.",
    "openvino": "OpenVINO compiles the graph for this CPU's ISA (oneDNN convolutions with "
                "fused BatchNorm and activations, blocked layouts) and is lossless in fp32.",
}


def conv_facts(handle: Any) -> dict[str, Any]:
    """Convolution facts of an image model, from one forward pass on a blank image of its
    input size: counts, the depthwise share of the convolution multiply-adds, and the
    BatchNorms that fold. Empty where the model has no convolutions or cannot run."""
    import torch

    from ..compression import conv_bn_pairs
    from ..core.errors import UserError

    model, pre = handle.model, handle.tokenizer
    size, channels = getattr(pre, "size", None), {"L": 1}.get(getattr(pre, "channels", ""), 3)
    if model is None or size is None:
        return {}
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    if not convs:
        return {}
    macs: dict[str, float] = {"depthwise": 0.0, "dense": 0.0}

    def hook(m: torch.nn.Conv2d, _: Any, out: torch.Tensor) -> None:
        depthwise = m.groups > 1 and m.groups == m.in_channels
        per_out = m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        macs["depthwise" if depthwise else "dense"] += per_out * out.numel()

    hooks = [m.register_forward_hook(hook) for m in convs]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, channels, size, size))
    except Exception:  # noqa: BLE001  facts only order the search; the trials tell the rest
        return {}
    finally:
        for h in hooks:
            h.remove()
    try:
        folds = len(conv_bn_pairs(model))
    except UserError:
        folds = 0
    total = macs["depthwise"] + macs["dense"]
    return {"convs": len(convs),
            "depthwise": sum(m.groups > 1 and m.groups == m.in_channels for m in convs),
            "depthwise_share": macs["depthwise"] / total if total else 0.0,
            "conv_gmacs": total / 1e9,
            "batchnorms": sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()),
            "foldable": folds}


def describe(facts: dict[str, Any]) -> str:
    """The convolution facts, in words."""
    return (f"The model has {facts['convs']} convolutions ({facts['conv_gmacs']:.2f} GMACs per "
            f"image), {facts['depthwise']} of them depthwise, doing "
            f"{facts['depthwise_share']:.0%} of the convolution multiply-adds.")


def fold_expect(facts: dict[str, Any], engine: str) -> tuple[float, str]:
    """BatchNorm folding on a candidate running on `engine`."""
    n = facts.get("foldable", 0)
    if not n:
        return 1.0, ("No BatchNorm directly follows a convolution here: folding has nothing "
                     "to fold; one measurement to confirm.")
    g = FOLD_SPEED.get(engine, 1.0)
    where = (f"eager PyTorch runs each of them as its own pass over the activations, so "
             f"removing them should give about ×{g:.2f}" if g > 1 else
             f"{engine} folds BatchNorm itself when it compiles the graph, so little gain is "
             "expected here")
    return g, (f"{describe(facts)} {n} BatchNorms directly follow convolutions: folding them "
               "into the convolution weights and bias is exact (up to float rounding) and free "
               "(no data, no training), so it is tried first; "
               f"{where}. Unlike channel pruning, which removes filters and needs recovery "
               "training (distillation, then BatchNorm recalibration) to win back quality, "
               "folding changes no output.")


def int8_weigh(facts: dict[str, Any], gain: float) -> tuple[float, str]:
    """int8's expected gain on a CNN: dense convolutions gain `gain`, depthwise ones about
    DEPTHWISE_INT8 (Amdahl over their shares of the multiply-adds)."""
    share = facts.get("depthwise_share", 0.0)
    if gain <= 1:
        return gain, ""
    dw = min(DEPTHWISE_INT8, gain)
    g = 1 / ((1 - share) / gain + share / dw)
    note = (f" {describe(facts)} Depthwise convolutions are memory-bound and gain about "
            f"×{dw:.1f} from int8 where dense ones gain ×{gain:.1f}, so int8 is expected at "
            f"×{g:.2f} over fp32 for this model; depthwise-heavy networks also lose more "
            "top-1 in int8.")
    return g, note
