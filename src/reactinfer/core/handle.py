"""ModelHandle: a model plus everything needed to run, measure and save it."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:
    import torch

    from .backend import Runner
    from .transform import TransformConfig

ONNX_FILE = "model.onnx"  # the name a handle's ONNX graph travels under in handle.files
TASKS = ("embedding", "causal-lm", "classification", "image-classification")
_REGISTERED: list[str] = []  # filled by tasks.register_task (the task registry)
_IMAGE_TASKS: set[str] = set()  # the registered tasks whose Task says `takes_images`


def register_task_name(name: str, takes_images: bool = False) -> None:
    if name not in _REGISTERED:
        _REGISTERED.append(name)
    if takes_images:
        _IMAGE_TASKS.add(name)


def takes_images(task: str | None) -> bool:
    """Whether `task`'s items are images (its Task's `takes_images`). For the layers that
    may not import the task registry (models/, core): they ask here, by name."""
    if task is not None and task not in _REGISTERED:
        from .plugins import load_builtin

        load_builtin("tasks")
    return task in _IMAGE_TASKS


def task_names() -> tuple[str, ...]:
    """Every registered task: what an error that lists the tasks names. Importing the task
    modules costs torch, so only the error paths (and the registry itself) call this."""
    from .plugins import load_builtin

    load_builtin("tasks")
    return tuple(_REGISTERED)


def check_task(task: str | None) -> None:
    """A task the registry knows (None: not given, decided elsewhere)."""
    if task is not None and task not in TASKS and task not in task_names():
        raise UserError(f"unknown task {task!r}; choose one of {', '.join(task_names())}")


@dataclasses.dataclass(eq=False)
class ModelHandle:
    """One model as ReAct sees it.

    `model` is a torch module (None for runtime-only handles such as an ONNX file);
    `transforms` lists the applied configs as dicts (the recipe); `backend` and
    `backend_options` say how it runs; `files` are runtime files a backend produced
    (an .onnx or .gguf) that an artifact must carry; `reference` describes the model
    quality is judged against (the original this one was made from).
    """

    task: str
    model: torch.nn.Module | None
    tokenizer: Any
    name: str
    source: dict[str, Any]
    max_length: int = 256
    transforms: tuple[dict[str, Any], ...] = ()
    backend: str = "torch"
    backend_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    files: dict[str, Path] = dataclasses.field(default_factory=dict)
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Float weights from before the first `replay_on_load` transform, and that index.
    checkpoint: torch.nn.Module | None = None
    replay_from: int | None = None
    _runner: Runner | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_task(self.task)

    # -- derivation -----------------------------------------------------------------
    def derive(self, **changes: Any) -> ModelHandle:
        """A new handle with some fields changed; the runner is rebuilt lazily."""
        changes.setdefault("_runner", None)
        return dataclasses.replace(self, **changes)

    def with_transform(self, cfg: TransformConfig, previous: ModelHandle) -> ModelHandle:
        """Record `cfg` as applied (called by `compress` after the handler ran)."""
        transforms = previous.transforms + (cfg.to_dict(),)
        checkpoint, replay_from = previous.checkpoint, previous.replay_from
        if type(cfg).replay_on_load and replay_from is None:
            checkpoint, replay_from = previous.model, len(previous.transforms)
        elif not type(cfg).replay_on_load and replay_from is not None:
            raise UserError(
                f"{type(cfg).__name__} cannot follow {previous.transforms[replay_from]['type']}: "
                "apply structural transforms (pruning, distillation, merging) before "
                "quantization")
        return dataclasses.replace(self, transforms=transforms, checkpoint=checkpoint,
                                   replay_from=replay_from, _runner=None)

    # -- running --------------------------------------------------------------------
    def runner(self) -> Runner:
        """The prepared runner for this handle's backend (built once, then reused)."""
        if self._runner is None:
            from .backend import get_backend

            backend = get_backend(self.backend)
            if not backend.supports(self):
                raise UserError(f"backend {self.backend!r} does not support this model "
                                f"({self.task}, {self.source.get('kind')})")
            self._runner = backend.prepare(self, **self.backend_options)
        return self._runner

    # -- facts ----------------------------------------------------------------------
    def num_parameters(self) -> int | None:
        if self.model is None:
            return None
        return sum(p.numel() for p in self.model.parameters())

    def size_bytes(self) -> int:
        """Bytes the weights take: runtime files if any, else the model's tensors."""
        if self.files:
            return sum(Path(p).stat().st_size for p in self.files.values())
        if self.model is None:
            return 0
        return state_dict_bytes(self.model)


def state_dict_bytes(model: torch.nn.Module) -> int:
    """Bytes of a module's state (packed / quantized tensors included)."""
    import torch

    total, seen = 0, set()
    for value in model.state_dict().values():
        tensors = value if isinstance(value, tuple) else (value,)  # packed (weight, bias)
        for t in tensors:
            if isinstance(t, torch.Tensor) and (t.data_ptr(), t.numel()) not in seen:
                seen.add((t.data_ptr(), t.numel()))  # tied weights (LM head = embedding) once
                total += t.numel() * t.element_size()
    return total
