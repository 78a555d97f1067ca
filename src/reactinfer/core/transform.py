"""Transform configs and their registry.

A transform is a frozen, versioned, JSON-serialisable dataclass config plus a handler
registered for that config type (DESIGN.md, "How a technique plugs in"):

    @dataclass(frozen=True)
    class PruneFFN(TransformConfig):
        keep: float = 0.5

    @register_transform(PruneFFN)
    def _prune_ffn(handle: ModelHandle, cfg: PruneFFN) -> ModelHandle: ...

Handlers must not mutate the handle they receive (the planner rolls back by keeping
the old one); they return a new handle, usually via `handle.derive(model=...)`.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from .errors import UserError
from .plugins import load_builtin

if TYPE_CHECKING:
    from .handle import ModelHandle

Handler = Callable[["ModelHandle", Any], "ModelHandle"]
C = TypeVar("C", bound="TransformConfig")


@dataclasses.dataclass(frozen=True)
class TransformConfig:
    """Base of every transform config. Subclasses are frozen dataclasses.

    `kind` is the name used in recipes (defaults to the class name). `replay_on_load`
    marks transforms whose result is not stored as plain float weights (e.g. int8
    dynamic quantization): the artifact stores the weights before them and replays
    them when it is loaded. `rebuild_on_load` marks transforms that change a plain torch
    module's structure in a way its structure alone decides (BatchNorm folding).

    Versions are per instance, as in torchao: `VERSION` is what this ReAct writes, and
    `version` is the meaning a config was written for. When a handler's meaning changes,
    bump `VERSION` and either override `migrate` (rewrite an old config's fields into the
    new meaning) or let the handler read `cfg.version` and keep the old behaviour for
    old configs. Either way recipes and artifacts written before the bump still load.
    """

    kind: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1
    replay_on_load: ClassVar[bool] = False
    # the module's structure after it follows from the structure before it alone (BatchNorm
    # folding): loading an artifact of a plain torch module applies it to the fresh
    # architecture first, so the stored weights fit
    rebuild_on_load: ClassVar[bool] = False
    # the part of a transformer family it reshapes ("layers", "ffn", "heads"): it needs the
    # model's family adapter (models.arch) to allow it, and the planner leaves it out for a
    # model whose family has none
    family_part: ClassVar[str | None] = None
    version: int = dataclasses.field(default=0, kw_only=True)  # 0: this ReAct's VERSION

    def __post_init__(self) -> None:
        if self.version == 0:
            object.__setattr__(self, "version", type(self).VERSION)
        if not isinstance(self.version, int) or not 1 <= self.version <= type(self).VERSION:
            raise UserError(f"{type(self).kind_name()} version {self.version!r} is not one "
                            f"this ReAct knows (1 to {type(self).VERSION}): a newer ReAct "
                            "wrote it; upgrade reactinfer")
        self.validate()

    @classmethod
    def migrate(cls, fields: dict[str, Any], version: int) -> tuple[dict[str, Any], int]:
        """Rewrite the fields of a config written at an older `version`; return the fields
        and the version they now mean. The default keeps them as written (the handler
        sees `cfg.version`)."""
        return fields, version

    def validate(self) -> None:
        """Raise UserError for bad values, before any work is done."""

    def to_dict(self) -> dict[str, Any]:
        return {"type": type(self).kind_name(), **dataclasses.asdict(self)}

    def as_run(self, result: ModelHandle) -> TransformConfig:
        """The config that replays what this one did to give `result`, recorded in the
        model's recipe. Itself, unless the run depended on the clock (a step with a time
        budget records the work it actually did, so a rebuild does exactly that)."""
        return self

    @classmethod
    def kind_name(cls) -> str:
        return cls.kind or cls.__name__


_REGISTRY: dict[str, tuple[type[TransformConfig], Handler]] = {}


def register_transform(cfg_type: type[C]) -> Callable[[Handler], Handler]:
    """Register `handler` as the way to apply configs of `cfg_type`."""
    if not (dataclasses.is_dataclass(cfg_type) and issubclass(cfg_type, TransformConfig)):
        raise TypeError(f"{cfg_type!r} must be a TransformConfig dataclass")

    def deco(handler: Handler) -> Handler:
        name = cfg_type.kind_name()
        if name in _REGISTRY and _REGISTRY[name][0] is not cfg_type:
            raise ValueError(f"transform kind {name!r} is registered twice")
        _REGISTRY[name] = (cfg_type, handler)
        return handler

    return deco


def registered_transforms() -> dict[str, type[TransformConfig]]:
    load_builtin("transforms")
    return {name: cfg for name, (cfg, _) in sorted(_REGISTRY.items())}


def config_from_dict(d: dict[str, Any]) -> TransformConfig:
    """Rebuild a config from its `to_dict()` form (as stored in recipes and manifests)."""
    load_builtin("transforms")
    if not isinstance(d, dict) or "type" not in d:
        raise UserError(f"a recipe entry must be an object with a 'type' field, got {d!r}")
    d = dict(d)
    name = d.pop("type")
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UserError(f"unknown transform type {name!r}; known: {known}")
    cfg_type, _ = _REGISTRY[name]
    version = d.pop("version", cfg_type.VERSION)  # a hand-written recipe may leave it out
    if not isinstance(version, int) or version > cfg_type.VERSION or version < 1:
        raise UserError(f"{name} is version {version!r}; this ReAct reads versions 1 to "
                        f"{cfg_type.VERSION}: upgrade reactinfer, or re-create the recipe")
    if version < cfg_type.VERSION:
        d, version = cfg_type.migrate(d, version)
    d["version"] = version
    fields = {f.name for f in dataclasses.fields(cfg_type)}
    unknown = set(d) - fields
    if unknown:
        raise UserError(f"{name}: unknown field(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    try:
        kwargs: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cfg_type(**kwargs)
    except TypeError as e:
        raise UserError(f"{name}: {e}") from None


def load_recipe(path: str) -> list[TransformConfig]:
    """Read a recipe file: a JSON list of config objects."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise UserError(f"recipe file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise UserError(f"recipe file {path} is not valid JSON: {e}") from None
    if not isinstance(data, list):
        raise UserError(f"recipe file {path} must hold a JSON list of transform configs")
    return [config_from_dict(d) for d in data]


def apply_transform(handle: ModelHandle, cfg: TransformConfig) -> ModelHandle:
    load_builtin("transforms")
    entry = _REGISTRY.get(type(cfg).kind_name())
    if entry is None or entry[0] is not type(cfg):
        raise UserError(f"no handler registered for {type(cfg).__name__}")
    new = entry[1](handle, cfg)
    if new is handle:
        raise AssertionError(f"handler for {type(cfg).__name__} returned its input handle")
    return new.with_transform(cfg.as_run(new), previous=handle)


def compress(handle: ModelHandle, configs: TransformConfig | Sequence[TransformConfig]
             | Iterable[TransformConfig]) -> ModelHandle:
    """Apply configs in order and return the new handle (the input is left unchanged)."""
    if isinstance(configs, TransformConfig):
        configs = [configs]
    configs = list(configs)
    for cfg in configs:
        if not isinstance(cfg, TransformConfig):
            raise TypeError(f"compress() takes TransformConfig objects, got {type(cfg).__name__}")
    for cfg in configs:
        handle = apply_transform(handle, cfg)
    return handle
