"""Loading models: built-in names, Hugging Face directories, GGUF and ONNX files,
artifacts, and in-memory torch modules, through one registry of loaders."""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core.cache import kept
from ..core.errors import UserError
from ..core.files import is_unsafe, sha256_file, sha256_files
from ..core.handle import ModelHandle, check_task, takes_images, task_names
from ..core.images import as_preprocess
from .hf import hf_from_pretrained
from .zoo import BUILTINS

# load()'s keyword arguments that say how to load a model: the verbs that take anything
# load() takes (optimize, serve, compress) pass these on to it
LOAD_KEYS = ("task", "tokenizer", "preprocess", "max_length", "name", "module", "labels")

# image models have no tokens: their handle's max_length is unused
DEFAULT_MAX_LENGTH = {"embedding": 256, "classification": 256, "causal-lm": 512,
                      "image-classification": 0}


@dataclass(frozen=True)
class Loader:
    kind: str
    matches: Callable[[Path], bool]
    load: Callable[..., ModelHandle]


_LOADERS: list[Loader] = []


def register_loader(kind: str, matches: Callable[[Path], bool]) -> Callable:
    def deco(fn: Callable[..., ModelHandle]) -> Callable[..., ModelHandle]:
        _LOADERS.append(Loader(kind, matches, fn))
        return fn

    return deco


def _task_from_config(config: Any, directory: Path) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "ForCausalLM" in archs:
        return "causal-lm"
    if "ForSequenceClassification" in archs:
        return "classification"
    return "embedding"


def _max_length(directory: Path, task: str, config: Any) -> int:
    st = directory / "sentence_bert_config.json"
    if st.exists():
        return int(json.loads(st.read_text()).get("max_seq_length", DEFAULT_MAX_LENGTH[task]))
    limit = getattr(config, "max_position_embeddings", None) or DEFAULT_MAX_LENGTH[task]
    return min(int(limit), DEFAULT_MAX_LENGTH[task])


def load_hf_dir(directory: Path, task: str | None = None, name: str | None = None,
                source: dict | None = None, **_: Any) -> ModelHandle:
    """A Hugging Face model directory with safetensors weights (pickle is refused)."""
    import transformers

    directory = Path(directory)
    unsafe = [p.name for p in directory.iterdir() if is_unsafe(p)]
    weights = sorted(directory.glob("*.safetensors"))
    if not weights:
        hint = f" (found {', '.join(unsafe)}: pickle formats are refused)" if unsafe else ""
        raise UserError(f"{directory} has no .safetensors weights{hint}; save the model with "
                        "save_pretrained(..., safe_serialization=True)")
    try:
        config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError) as e:
        raise UserError(f"{directory} is not a Hugging Face model directory: {e}") from None
    task = task or _task_from_config(config, directory)
    check_task(task)
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = hf_from_pretrained(task, directory, local_files_only=True, use_safetensors=True,
                               torch_dtype="auto")
    model.eval()
    if source is None:
        source = {"kind": "hf", "ref": str(directory.resolve()),
                  "sha256": sha256_files(weights)}
    return ModelHandle(task=task, model=model, tokenizer=tokenizer, name=name or directory.name,
                       source=source, max_length=_max_length(directory, task, config))


def load_gguf(path: Path, task: str | None = None, name: str | None = None,
              source: dict | None = None, **_: Any) -> ModelHandle:
    """A GGUF causal LM; transformers de-quantizes it to float32 torch weights."""
    if task not in (None, "causal-lm"):
        raise UserError(f"a GGUF file holds a causal LM; task {task!r} does not fit")
    path = Path(path)
    if source is None:
        source = {"kind": "gguf", "ref": str(path.resolve()), "sha256": sha256_file(path)}
    tokenizer = gguf_tokenizer(path, source["sha256"])
    model = gguf_torch_model(path, source["sha256"])
    # No runtime file: the handle runs (and saves) its float torch weights; llama.cpp finds
    # the unchanged GGUF through `source` (backends.gguf_convert.source_gguf) when it can
    # use it as is, and a transformed model must not carry the stale file into an artifact.
    return ModelHandle(task="causal-lm", model=model, tokenizer=tokenizer,
                       name=name or path.stem, source=source,
                       max_length=_max_length(path.parent, "causal-lm", model.config))


def gguf_file_handle(model: str | Path) -> ModelHandle | None:
    """A GGUF causal LM (a built-in name such as smollm2, or a .gguf path) WITHOUT torch
    weights: its tokenizer, and a `source` through which an engine that runs the GGUF file
    itself (llama.cpp) finds it. No de-quantising, no torch: serving the file as is starts
    in about a second. None when `model` names no GGUF file."""
    name = str(model)
    if name in BUILTINS:
        path = BUILTINS[name].path()
        if path.suffix != ".gguf":
            return None
        source = {"kind": "builtin", "ref": name, "sha256": sha256_file(path)}
    else:
        path = Path(model).expanduser()
        if not (path.is_file() and path.suffix == ".gguf"):
            return None
        name = path.stem
        source = {"kind": "gguf", "ref": str(path.resolve()), "sha256": sha256_file(path)}
    return ModelHandle(task="causal-lm", model=None, name=name, source=source,
                       tokenizer=gguf_tokenizer(path, source["sha256"]),
                       max_length=DEFAULT_MAX_LENGTH["causal-lm"])


def gguf_tokenizer(path: Path, sha256: str) -> Any:
    """The Hugging Face tokenizer (and chat template) stored in a GGUF file's metadata.

    transformers reads it with gguf-py, which walks every string of the vocabulary and
    merges (about 7 s for smollm2's 49k tokens, and it imports torch). Converted once, it
    is kept in the cache (core/cache.py: `tokenizers/<the GGUF's sha256 and the versions
    that save it>/`, verified on every load) and read back with `PreTrainedTokenizerFast`
    in about 0.3 s, without torch."""
    import tokenizers
    import transformers

    def derive() -> Any:
        try:
            return transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name,
                                                              local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"could not read GGUF file {path}: {e}") from None

    # saved by these transformers and tokenizers: other versions may not read it back
    key = f"{sha256}-transformers-{transformers.__version__}-tokenizers-{tokenizers.__version__}"
    return kept("tokenizers", key, derive, lambda tok, d: tok.save_pretrained(d),
                lambda d: transformers.PreTrainedTokenizerFast.from_pretrained(
                    d, local_files_only=True))


def gguf_torch_model(path: Path, sha256: str) -> Any:
    """A GGUF file's causal LM de-quantized to float32 torch weights.

    transformers' GGUF reader takes ~25 s for smollm2 (135M parameters; it parses the
    vocabulary again and builds a name map per tensor). Converted once, the float model is
    kept in the cache (core/cache.py: under `gguf-torch/`, keyed by the GGUF's sha256 and
    the transformers version; safetensors and config.json, verified on every load) and
    read back in a few seconds: the same tensors, bit for bit. Not kept where the cache's
    disk would be left with less than twice its size free."""
    import torch
    import transformers

    def derive() -> Any:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                path.parent, gguf_file=path.name, local_files_only=True,
                torch_dtype=torch.float32, **_dequantize_gguf_kwargs(),
                **_gguf_config_kwargs(path))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"could not read GGUF file {path}: {e}") from None
        return drop_dense_quantizer_marker(model)

    def save(model: Any, d: Path) -> None:
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        if shutil.disk_usage(d).free < 2 * size:
            raise OSError(f"{size / 2**20:.0f} MiB of weights would fill the disk")
        model.save_pretrained(d, safe_serialization=True)

    def read(d: Path) -> Any:
        return transformers.AutoModelForCausalLM.from_pretrained(
            d, local_files_only=True, use_safetensors=True, torch_dtype=torch.float32)

    # the conversion is transformers': another version may convert otherwise
    key = f"{sha256}-transformers-{transformers.__version__}"
    return kept("gguf-torch", key, derive, save, read).eval()


def _gguf_config_kwargs(path: Path) -> dict[str, Any]:
    """Config values the file states and transformers' GGUF reader drops. Its qwen3 map
    has no `attention.key_length`, so every Qwen3 GGUF is read with the default head_dim
    (128) and one with another head size fails to load ("ckpt weights ... did not match")."""
    import transformers

    from .gguf_meta import gguf_scalars

    meta = gguf_scalars(path)
    arch = meta.get("general.architecture")
    head_dim = meta.get(f"{arch}.attention.key_length")
    mapping = transformers.CONFIG_MAPPING  # lazy: its .get() answers None for every key
    config_cls = mapping[arch] if isinstance(arch, str) and arch in mapping else None
    if head_dim is None or config_cls is None or not hasattr(config_cls(), "head_dim"):
        return {}  # a family whose config has no head_dim derives it from the sizes
    return {"head_dim": int(head_dim)}


def _dequantize_gguf_kwargs() -> dict[str, Any]:
    """Ask for plain float weights. transformers 5 can keep GGUF blocks packed (GgufLinear,
    when the `kernels` package is installed), which our transforms, GGUF conversion and
    artifacts cannot handle; transformers 4 always de-quantizes and has no GgufConfig."""
    import transformers

    config_cls = getattr(transformers, "GgufConfig", None)
    if config_cls is None or "dequantize" not in inspect.signature(config_cls).parameters:
        return {}
    return {"quantization_config": config_cls(dequantize=True)}


def drop_dense_quantizer_marker(model: Any) -> Any:
    """Clear transformers' "quantized with gguf" marker from a de-quantized model.

    transformers 5 marks every model loaded with `gguf_file=` as quantized (`hf_quantizer`,
    `config.quantization_config`), even when every weight was de-quantized to float, and
    `save_pretrained` then refuses it ("quantized with gguf and is not serializable"); a
    config.json saved with the marker would also ask for a GGUF file on reload. The weights
    are ordinary float tensors, so the marker is wrong: drop it. A model with packed
    (non-float) weights keeps it, and transformers' own error says why it cannot be saved.
    """
    import torch

    quantizer = getattr(model, "hf_quantizer", None)
    method = getattr(getattr(quantizer, "quantization_config", None), "quant_method", None)
    if quantizer is None or str(getattr(method, "value", method)) != "gguf":
        return model
    # weights only: integer buffers (position ids) are ordinary in a float model
    packed = getattr(quantizer, "packed_modules", None)
    if packed or not all(torch.is_floating_point(p) for p in model.parameters()):
        return model
    quantizer.remove_quantization_config(model)
    return model


register_loader("artifact", lambda p: p.is_dir() and (p / "manifest.json").exists())(
    lambda p, **kw: _load_artifact(p, **kw))
register_loader("hf", lambda p: p.is_dir() and (p / "config.json").exists())(load_hf_dir)
register_loader("gguf", lambda p: p.is_file() and p.suffix == ".gguf")(load_gguf)


def _load_artifact(path: Path, **kw: Any) -> ModelHandle:
    from .artifact_loader import load_artifact

    return load_artifact(path, **kw)


# "organisation/name" as the Hugging Face hub spells a model id (no leading . / ~)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def hub_cache_dir(model_id: str) -> Path:
    """The snapshot of a hub model id in the local Hugging Face cache (HF_HOME), never a
    download: ReAct reaches no hub at run time."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # transformers brings it; without it no cache can be read
        raise UserError(f"{model_id!r} is no file or directory, and huggingface_hub is not "
                        "installed to look it up in the local cache") from None
    try:
        return Path(snapshot_download(model_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise UserError(f"{model_id!r} is not in the local Hugging Face cache (ReAct never "
                        "downloads): fetch it once where there is network, e.g. "
                        f"`huggingface-cli download {model_id}`, or give its directory"
                        ) from None


def load_builtin(name: str, **kw: Any) -> ModelHandle:
    spec = BUILTINS[name]
    path = spec.path()
    if kw.get("task") not in (None, spec.task):
        raise UserError(f"built-in {name!r} is a {spec.task} model, not {kw['task']}")
    weights = path if path.is_file() else next(path.glob("*.safetensors"))
    source = {"kind": "builtin", "ref": name, "sha256": sha256_file(weights)}
    if takes_images(spec.task):
        from .vision import CNN_BUILTINS

        cnn = CNN_BUILTINS[name]
        return ModelHandle(task=spec.task, model=cnn.build(path), tokenizer=cnn.preprocess,
                           name=name, source=source, max_length=0)
    loader = load_gguf if path.suffix == ".gguf" else load_hf_dir
    kw = {k: v for k, v in kw.items() if k not in ("task", "name", "source")}
    return loader(path, task=spec.task, name=name, source=source, **kw)


def load(model: Any, task: str | None = None, labels: Any = None, **kw: Any) -> ModelHandle:
    """Load a model: a built-in name (`minilm`, `smollm2`), a Hugging Face directory or a
    model id found in the local Hugging Face cache, a `.gguf` or `.onnx` file, an artifact
    directory, a `ModelHandle` (returned as is), or a `torch.nn.Module` (give `task` and
    `tokenizer`; an image classifier takes `preprocess=ImagePreprocess(...)`).
    `labels`: an image classifier's class names (a list, index = class id), kept in every
    artifact made from it and answered by the server; one per class the model gives."""
    handle = _load(model, task, **kw)
    if labels is None:
        return handle
    from .image_checks import with_labels

    return with_labels(handle, labels)


def _load(model: Any, task: str | None = None, **kw: Any) -> ModelHandle:
    check_task(task)
    if isinstance(model, ModelHandle):
        return model
    try:
        import torch

        if isinstance(model, torch.nn.Module):
            return _from_module(model, task=task, **kw)
    except ImportError:
        pass
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"load() takes a name, a path or a torch.nn.Module, "
                        f"not {type(model).__name__}")
    if str(model) in BUILTINS:
        return load_builtin(str(model), task=task, **kw)
    path = Path(model).expanduser()
    if not path.exists() and HUB_ID.fullmatch(str(model)):
        path = hub_cache_dir(str(model))
    if not path.exists():
        raise UserError(f"unknown model {str(model)!r}: not a built-in "
                        f"({', '.join(BUILTINS)}) and no such file or directory")
    for loader in _LOADERS:
        if loader.matches(path):
            return loader.load(path, task=task, **kw)
    raise UserError(f"{path} is not a model ReAct can load: expected a Hugging Face directory "
                    "(config.json + .safetensors), an artifact (manifest.json), a .gguf or "
                    "an .onnx file")


def _from_module(module: Any, task: str | None, tokenizer: Any = None, name: str = "module",
                 max_length: int | None = None, preprocess: Any = None, **_: Any
                 ) -> ModelHandle:
    import torch

    if task is None:
        raise UserError(f"loading a torch.nn.Module needs task= ({', '.join(task_names())})")
    if takes_images(task):
        if preprocess is None:
            raise UserError("an image model needs preprocess= (an ImagePreprocess or a dict: "
                            "size, resize, mean, std, channels)")
        tokenizer = as_preprocess(preprocess)
    elif preprocess is not None:
        raise UserError(f"preprocess= is for image-classification models, not {task}")
    if tokenizer is None:
        raise UserError("loading a torch.nn.Module needs tokenizer= (a Hugging Face tokenizer)")
    if task in ("image-classification", "classification"):  # eval: BatchNorm stays as trained
        from .image_checks import check_module_output

        module.eval()
        check_module_output(module, task, preprocess=tokenizer, tokenizer=tokenizer,
                            max_length=max_length or DEFAULT_MAX_LENGTH[task])
    h = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if isinstance(value, torch.Tensor):
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    module = drop_dense_quantizer_marker(module).eval()  # a GGUF-loaded transformers model
    return ModelHandle(task=task, model=module, tokenizer=tokenizer, name=name,
                       source={"kind": "module", "ref": type(module).__name__,
                               "sha256": h.hexdigest()},
                       max_length=max_length or DEFAULT_MAX_LENGTH[task])
