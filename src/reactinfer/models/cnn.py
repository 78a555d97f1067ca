"""Convolutional networks of the built-ins: EfficientNet-Lite0 and a ResNet-18 layout.

Plain nn.Conv2d / BatchNorm2d / ReLU(6) modules, so every later transform (BatchNorm
folding, channel pruning, int8) sees ordinary layers. Parameter names of EfficientNet
follow the published checkpoint (`_conv_stem`, `_blocks.N._expand_conv`, ...), so its
state_dict loads with no renaming; shapes are asserted on load.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding along one axis: (before, after). The output has
    ceil(size / stride) positions; an odd total pads one more AFTER (asymmetric on
    stride-2 convolutions of even inputs, which a symmetric nn.Conv2d padding cannot do)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """nn.Conv2d with TF "SAME" padding computed from the input's height and width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        kh, kw = self.kernel_size
        sh, sw = self.stride
        top, bottom = same_padding(x.shape[-2], kh, sh)
        left, right = same_padding(x.shape[-1], kw, sw)
        if top or bottom or left or right:
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3, momentum=0.01)  # TF's defaults, as the checkpoint


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → k×k depthwise → 1×1 project (no squeeze-excite in
    the Lite models); identity skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


# EfficientNet-Lite0 stages: (expand ratio, kernel, first stride, out channels, repeats)
LITE0_STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
                (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0: 3→32 stem (stride 2), 16 MBConv blocks, 320→1280 head, fc."""

    def __init__(self, num_classes: int = 1000, stages: tuple = LITE0_STAGES, stem: int = 32,
                 head: int = 1280):
        super().__init__()
        self._conv_stem = SameConv2d(3, stem, 3, 2, bias=False)
        self._bn0 = _bn(stem)
        blocks, cin = [], stem
        for expand, kernel, stride, cout, repeats in stages:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if i == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, head, 1, bias=False)
        self._bn1 = _bn(head)
        self._fc = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 224, 224) → (B, 1000)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))  # global average pool; dropout is a no-op in eval


class BasicBlock(nn.Module):
    """ResNet's basic block: two 3×3 conv + BN, a 1×1 conv + BN shortcut when the shape
    changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


@dataclass(frozen=True)
class ResNetConfig:
    """ResNet-18 layout sized for small inputs: a 3×3 stem with no max-pool (an 8×8 digit
    would vanish under ImageNet's 7×7 stride-2 stem + pool), four stages of two
    BasicBlocks at widths w, 2w, 4w, 8w with strides 1, 2, 2, 2 (8×8 → 1×1)."""

    in_channels: int = 1
    num_classes: int = 10
    width: int = 16
    blocks: tuple[int, ...] = (2, 2, 2, 2)


class ResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        w = cfg.width
        self.conv1 = nn.Conv2d(cfg.in_channels, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        layers, cin = [], w
        for i, n in enumerate(cfg.blocks):
            cout = w * 2 ** i
            layers.append(nn.Sequential(*[BasicBlock(cin if j == 0 else cout, cout,
                                                     2 if i and j == 0 else 1)
                                          for j in range(n)]))
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, cfg.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 8, 8) → (B, 10)
        x = F.relu(self.bn1(self.conv1(x)))
        return self.fc(self.layers(x).mean((2, 3)))


def load_checked(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Load `state` into `model`, every key present and every shape equal."""
    own = model.state_dict()
    missing, extra = set(own) - set(state), set(state) - set(own)
    assert not missing and not extra, f"missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}"
    for k, v in state.items():
        assert own[k].shape == v.shape, f"{k}: {tuple(own[k].shape)} vs {tuple(v.shape)}"
    model.load_state_dict(state)
    return model.eval()


def fit_to_state(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Resize the Conv2d, BatchNorm and Linear layers of `model` to the shapes in `state`
    (a channel-pruned checkpoint of the same architecture), in place: the channel counts
    (and a depthwise convolution's groups) follow the stored weights. Layers whose shapes
    already match are left alone; `load_checked` then checks every shape."""
    for name, m in model.named_modules():
        w = state.get(f"{name}.weight" if name else "weight")
        if w is None or not isinstance(m, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
            continue
        if tuple(w.shape) == tuple(m.weight.shape):
            continue
        if isinstance(m, nn.Conv2d):
            depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
            m.out_channels = w.shape[0]
            m.groups = w.shape[0] if depthwise else m.groups
            m.in_channels = w.shape[1] * m.groups
        elif isinstance(m, nn.Linear):
            m.out_features, m.in_features = w.shape
        else:
            m.num_features = w.shape[0]
        for pname, p in list(m.named_parameters(recurse=False)):
            if f"{name}.{pname}" in state:  # else a tied tensor: load_model reports it
                setattr(m, pname, nn.Parameter(torch.empty_like(state[f"{name}.{pname}"]),
                                               requires_grad=p.requires_grad))
        for bname, b in list(m.named_buffers(recurse=False)):
            key = f"{name}.{bname}"
            if b is not None and key in state and b.dim() > 0:
                m.register_buffer(bname, torch.empty_like(state[key]))
    return model
