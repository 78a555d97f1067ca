"""An artifact directory as a model: verify every file's hash (core/artifact.py), then
build the handle. Transforms marked `replay_on_load` are re-applied to the stored float
weights, so no non-standard tensor format is ever stored."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..core.artifact import verify_artifact
from ..core.errors import UserError
from ..core.handle import ONNX_FILE, ModelHandle, takes_images
from ..core.images import PREPROCESS_FILE, ImagePreprocess
from ..core.transform import compress, config_from_dict
from .hf import hf_from_pretrained

log = logging.getLogger(__name__)


def _rebuild(module: Any, task: str, transforms: list[dict[str, Any]]) -> Any:
    """The fresh architecture with the recipe's structure-only transforms applied (e.g.
    BatchNorm folding), so the stored weights fit it."""
    configs = [c for c in map(config_from_dict, transforms) if type(c).rebuild_on_load]
    if not configs:
        return module
    return compress(ModelHandle(task=task, model=module.eval(), tokenizer=None,
                                name="architecture", source={}),
                    configs).model


def load_artifact(path: str | Path, module: Any = None, **_: Any) -> ModelHandle:
    """Load a verified artifact; `module=` gives the architecture of a plain torch module."""

    path = Path(path)
    manifest = verify_artifact(path)
    task = manifest["task"]
    model: Any = None
    tokenizer: Any = None  # a Hugging Face tokenizer, or an image model's ImagePreprocess
    if (path / "tokenizer_config.json").exists():
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    elif (path / PREPROCESS_FILE).exists():  # an image model: its preprocessing
        tokenizer = ImagePreprocess.from_dir(path)
    origin = manifest.get("source", {})
    if module is None and origin.get("kind") == "builtin" and takes_images(task):
        from .vision import CNN_BUILTINS  # the architecture of a built-in CNN is known

        module = CNN_BUILTINS[origin["ref"]].arch()
    if manifest.get("has_torch_weights", True) and (path / "model.safetensors").exists() \
            or any(n.startswith("model-") for n in manifest["files"]):
        if manifest.get("module_class"):
            if module is None and ONNX_FILE in manifest.get("runtime_files", {}):
                return _graph_handle(path, manifest, tokenizer)
            if module is None:
                raise UserError(f"{path} holds the weights of a plain torch module "
                                f"({manifest['module_class']}); pass module=<an instance> to "
                                "load() to give the architecture")
            from safetensors.torch import load_file, load_model

            from .cnn import fit_to_state

            module = _rebuild(module, task, manifest.get("transforms", []))
            weights = str(path / "model.safetensors")
            # a channel-pruned CNN stores smaller tensors: its layers take their shapes
            fit_to_state(module, load_file(weights))
            load_model(module, weights)
            model = module.eval()
        else:
            model = hf_from_pretrained(task, path, local_files_only=True, use_safetensors=True,
                                       torch_dtype="auto").eval()
    transforms = manifest.get("transforms", [])
    replay_from = manifest.get("replay_from")
    handle = ModelHandle(
        task=task, model=model, tokenizer=tokenizer, name=manifest.get("name", path.name),
        source={"kind": "artifact", "ref": str(path.resolve()),
                "origin": manifest.get("source", {})},
        max_length=manifest.get("max_length", 256),
        transforms=tuple(transforms[:replay_from] if replay_from is not None else transforms),
        backend=manifest.get("backend", "torch"),
        backend_options=manifest.get("backend_options", {}),
        files={k: path / v for k, v in manifest.get("runtime_files", {}).items()},
        metrics=manifest.get("metrics", {}),
    )
    if replay_from is not None:
        backend, options, files = handle.backend, handle.backend_options, handle.files
        handle = compress(handle.derive(backend="torch", backend_options={}),
                          [config_from_dict(d) for d in transforms[replay_from:]])
        handle = handle.derive(backend=backend, backend_options=options, files=files)
    return handle


def _graph_handle(path: Path, manifest: dict[str, Any], tokenizer: Any) -> ModelHandle:
    """A plain torch module's artifact loaded without the module: the ONNX graph saved
    beside its weights (checked equal to the module when it was saved), on ONNX Runtime."""
    log.warning("%s: running the ONNX graph saved with %s's weights on onnxruntime; pass "
                "module=<an instance> to load() for the torch weights", path,
                manifest["module_class"])
    return ModelHandle(
        task=manifest["task"], model=None, tokenizer=tokenizer,
        name=manifest.get("name", path.name),
        source={"kind": "artifact", "ref": str(path.resolve()),
                "origin": manifest.get("source", {})},
        max_length=manifest.get("max_length", 256),
        transforms=tuple(manifest.get("transforms", [])), backend="onnxruntime",
        backend_options={"precision": "fp32"},
        files={ONNX_FILE: path / manifest["runtime_files"][ONNX_FILE]},
        metrics=manifest.get("metrics", {}))
