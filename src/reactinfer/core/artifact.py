"""Artifacts: a directory with manifest.json and weights in safe formats only.

    manifest.json       format version, task, source model + sha256, transforms (the
                        recipe), backend + options, every file with its sha256, metrics,
                        hardware profile, package versions
    model.safetensors   (+ config.json) float weights, from save_pretrained
    tokenizer files
    runtime files       e.g. model.onnx, model.gguf, model.xml + model.bin (OpenVINO
                        IR), written by a backend

Loading verifies every hash and refuses pickle formats; transforms marked
`replay_on_load` (e.g. int8 dynamic quantization) are re-applied to the stored float
weights, so no non-standard tensor format is ever stored.
"""
from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UserError
from .files import UNSAFE_SUFFIXES, is_unsafe, sha256_file
from .handle import ModelHandle
from .hardware import hardware_profile, package_versions

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_WEIGHT_SUFFIXES = (".safetensors", ".onnx", ".gguf", ".data", ".xml") + UNSAFE_SUFFIXES


class Artifact:
    """A saved model: `Artifact.save(handle, dir)` writes it, `reactinfer.load(dir)` reads
    it back, verified (the artifact loader lives with the other loaders, in models/)."""

    def __init__(self, path: str | Path, manifest: dict[str, Any]):
        self.path = Path(path)
        self.manifest = manifest

    @staticmethod
    def save(handle: ModelHandle, path: str | Path, metrics: dict[str, Any] | None = None,
             overwrite: bool = False) -> Artifact:
        return save_artifact(handle, path, metrics=metrics, overwrite=overwrite)

    @staticmethod
    def read_manifest(path: str | Path) -> dict[str, Any]:
        return read_manifest(path)


def _write_weights(handle: ModelHandle, out: Path) -> None:
    model = handle.checkpoint if handle.replay_from is not None else handle.model
    if model is None:
        return
    save_pretrained = getattr(model, "save_pretrained", None)  # a transformers model
    if save_pretrained is not None:
        save_pretrained(out, safe_serialization=True)
    else:  # a plain nn.Module: state dict only; load() needs module= for the architecture
        from safetensors.torch import save_model

        save_model(model, str(out / "model.safetensors"))


def save_artifact(handle: ModelHandle, path: str | Path, metrics: dict[str, Any] | None = None,
                  overwrite: bool = False) -> Artifact:
    """Write atomically: into a temporary sibling directory, then rename into place."""
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise UserError(f"{path} exists and is not empty; choose another directory or pass "
                        "overwrite=True (--overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        _write_weights(handle, tmp)
        if handle.tokenizer is not None:
            handle.tokenizer.save_pretrained(tmp)
        runtime_files = {}
        for name, src in handle.files.items():
            shutil.copyfile(src, tmp / name)
            runtime_files[name] = name
        for junk in tmp.glob("*"):  # save_pretrained may add files we do not want
            if is_unsafe(junk):
                junk.unlink()
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "name": handle.name,
            "task": handle.task,
            "max_length": handle.max_length,
            "source": handle.source,
            "transforms": list(handle.transforms),
            "replay_from": handle.replay_from,
            "backend": handle.backend,
            "backend_options": handle.backend_options,
            "runtime_files": runtime_files,
            "has_torch_weights": handle.model is not None,
            "module_class": None if handle.model is None or hasattr(handle.model, "save_pretrained")
            else type(handle.model).__name__,
            "files": files,
            "metrics": metrics if metrics is not None else handle.metrics,
            "hardware": hardware_profile().to_dict(),
            "versions": package_versions(),
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Artifact(path, manifest)


def root_source(source: dict[str, Any]) -> dict[str, Any]:
    """The source of the original model behind any chain of artifacts made from it."""
    while source.get("kind") == "artifact" and isinstance(source.get("origin"), dict):
        source = source["origin"]
    return source


def read_manifest(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{path} is not an artifact: {MANIFEST} is missing")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{mpath} is corrupt ({e}); re-create the artifact") from None
    for key in ("format_version", "task", "files"):
        if key not in manifest:
            raise ArtifactError(f"{mpath} lacks {key!r}; re-create the artifact")
    if manifest["format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {manifest['format_version']}; this "
                            f"ReAct reads up to {FORMAT_VERSION}: upgrade reactinfer")
    return manifest


def verify_artifact(path: str | Path) -> dict[str, Any]:
    """Check every listed file's sha256 and refuse unsafe or unlisted weight files."""
    path = Path(path)
    manifest = read_manifest(path)
    for p in path.iterdir():
        if is_unsafe(p):
            raise ArtifactError(f"{p} is a pickle-capable format; artifacts hold only "
                                "safetensors, ONNX, OpenVINO IR, GGUF and JSON. Remove it.")
        if p.suffix in _WEIGHT_SUFFIXES and p.name not in manifest["files"]:
            raise ArtifactError(f"{p.name} is not listed in the manifest; the artifact was "
                                "modified after it was saved")
    for name, digest in manifest["files"].items():
        f = path / name
        if Path(name).name != name:
            raise ArtifactError(f"manifest lists {name!r}, which is outside the artifact")
        if not f.is_file():
            raise ArtifactError(f"{path} is incomplete: {name} is missing")
        if sha256_file(f, cached=False) != digest:
            raise ArtifactError(f"{name} in {path} does not match its sha256 in the manifest: "
                                "the file is corrupt or was tampered with")
    return manifest
