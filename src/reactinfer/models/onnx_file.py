"""A bare `.onnx` file as a model: ReAct writes the task and max length into the ONNX
model's metadata_props at export, so the file loads on its own (tokenizer files, or an
image model's preprocess.json, beside it); a user's own ONNX file says its task with
`task=`. The engine that runs it is the onnxruntime backend; this module only reads the file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.files import sha256_file
from ..core.handle import ONNX_FILE, ModelHandle, check_task, takes_images, task_names
from ..core.images import (
    IMAGE_TASK,
    PREPROCESS_FILE,
    ImagePreprocess,
    as_preprocess,
    read_preprocess,
)
from .image_checks import check_onnx_image
from .loaders import DEFAULT_MAX_LENGTH, register_loader

META_PREFIX = "reactinfer."


def write_metadata(path: Path, meta: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    existing = {p.key: p for p in model.metadata_props}
    for key, value in meta.items():
        k = META_PREFIX + key
        prop = existing.get(k) or model.metadata_props.add()
        prop.key, prop.value = k, str(value)
    onnx.save(model, str(path))


def read_metadata(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key[len(META_PREFIX):]: p.value for p in model.metadata_props
            if p.key.startswith(META_PREFIX)}


@register_loader("onnx", lambda p: p.is_file() and p.suffix == ".onnx")
def load_onnx(path: Path, task: str | None = None, name: str | None = None,
              source: dict | None = None, tokenizer: Any = None, preprocess: Any = None,
              **opts: Any) -> ModelHandle:
    """An ONNX model of any registered task. The task comes from `task=` or from the
    metadata ReAct writes at export. A text model's tokenizer is `tokenizer=` or the
    tokenizer files beside the file; an image model's preprocessing is `preprocess=` (an
    ImagePreprocess, a dict of its fields, or a JSON file) or `preprocess.json` beside the
    file. Other keyword arguments become the onnxruntime backend's options (checked when
    it prepares a runner)."""
    path = Path(path)
    meta = read_metadata(path)
    task = task or meta.get("task")
    if task is None:
        raise UserError(f"{path} does not say which task it runs (no ReAct metadata): pass "
                        f"task= (--task: {', '.join(task_names())})")
    check_task(task)
    if takes_images(task):
        tokenizer = _image_preprocess(path, preprocess)
        check_onnx_image(path, tokenizer)
    elif preprocess is not None:
        raise UserError(f"preprocess is for {IMAGE_TASK} models, not {task}")
    elif tokenizer is None:
        tokenizer = _tokenizer_beside(path)
    precision = meta.get("precision", "fp32")
    max_length = int(meta.get("max_length", DEFAULT_MAX_LENGTH.get(task, 256)))
    return ModelHandle(task=task, model=None, tokenizer=tokenizer, name=name or path.stem,
                       source=source or {"kind": "onnx", "ref": str(path.resolve()),
                                         "sha256": sha256_file(path)},
                       max_length=max_length, backend="onnxruntime",
                       backend_options={"precision": precision, **opts},
                       files={ONNX_FILE: path})


def _tokenizer_beside(path: Path) -> Any:
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(path.parent, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"no tokenizer beside {path}: save the tokenizer files "
                        f"(tokenizer.json, tokenizer_config.json) in {path.parent} ({e})") from None


def _image_preprocess(path: Path, preprocess: Any) -> ImagePreprocess:
    """`preprocess` as given (a JSON file's path too), else preprocess.json beside `path`."""
    if isinstance(preprocess, (str, Path)):
        return read_preprocess(Path(preprocess))
    if preprocess is not None:
        return as_preprocess(preprocess)
    if (path.parent / PREPROCESS_FILE).is_file():
        return read_preprocess(path.parent / PREPROCESS_FILE)
    raise UserError(f"{path} is an image model: say how it wants its images with "
                    f"preprocess= (--preprocess FILE.json) or a {PREPROCESS_FILE} beside it "
                    "(fields: size, resize, mean, std, channels)")
