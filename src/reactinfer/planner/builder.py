"""Building models from recipes (candidates), reusing the handles of recipe prefixes."""
from __future__ import annotations

import json
from collections import OrderedDict

from ..core.deadline import check as check_deadline
from ..core.handle import ModelHandle
from ..core.transform import compress, config_from_dict
from .actions import Candidate


class Builder:
    """Builds models from recipes, reusing the handles of recipe prefixes (small LRU)."""

    def __init__(self, base: ModelHandle, size: int = 6, progress: bool = False):
        self.base, self.progress = base, progress
        self.cache: OrderedDict[tuple[str, ...], ModelHandle] = OrderedDict()
        self.built: OrderedDict[str, ModelHandle] = OrderedDict()
        self.size = size
        # a recipe whose run depended on the clock (a time-budgeted distillation), as run:
        # key of the recipe asked → the recipe that repeats it exactly (`as_run`)
        self.as_run: dict[str, Candidate] = {}
        self.ran_prefix: dict[tuple[str, ...], tuple[str, ...]] = {}

    def torch_handle(self, transforms: tuple[str, ...]) -> ModelHandle:
        handle, _ = self._torch_handle(transforms)
        return handle

    def _torch_handle(self, transforms: tuple[str, ...]) -> tuple[ModelHandle, tuple[str, ...]]:
        """The model for `transforms`, and the transforms as run (`TransformConfig.as_run`:
        what a rebuild must ask for to get the same model)."""
        ran = list(transforms)
        for n in range(len(transforms), 0, -1):
            if transforms[:n] in self.cache:
                handle, done = self.cache[transforms[:n]], n
                self.cache.move_to_end(transforms[:n])
                ran[:n] = self.ran_prefix.get(transforms[:n], transforms[:n])
                break
        else:
            handle, done = self.base, 0
        for i in range(done, len(transforms)):
            cfg = json.loads(transforms[i])
            if "progress" in cfg:  # a long step (distillation) shows its bar when the run does
                cfg["progress"] = self.progress
            asked = config_from_dict(cfg)
            check_deadline(f"the {cfg['type']} step")
            handle = compress(handle, [asked])
            applied, full = handle.transforms[-1], asked.to_dict()
            changed = {k: v for k, v in applied.items() if full.get(k) != v}
            if changed:
                ran[i] = json.dumps({**json.loads(transforms[i]), **changed}, sort_keys=True)
            if tuple(ran[:i + 1]) != transforms[:i + 1]:
                self.ran_prefix[transforms[:i + 1]] = tuple(ran[:i + 1])
            self.cache[transforms[:i + 1]] = handle
            # the recipe as run names the same model: its children reuse it, not redo it
            self.cache[tuple(ran[:i + 1])] = handle
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return handle, tuple(ran)

    def build(self, cand: Candidate) -> ModelHandle:
        """The model for a recipe; the last few built are kept, because the best candidate
        and the Pareto variants are built again to be saved (distillation is not cheap)."""
        if cand.key in self.built:
            self.built.move_to_end(cand.key)
            return self.built[cand.key]
        handle, ran = self._torch_handle(cand.transforms)
        if cand.backend != "torch" or cand.backend_options():
            from ..backends import to_backend

            check_deadline(f"the {cand.backend} conversion")
            handle = to_backend(handle, cand.backend, **cand.backend_options())
        self.built[cand.key] = handle
        if ran != cand.transforms:
            as_run = self.as_run[cand.key] = Candidate(ran, cand.backend, cand.options)
            self.built[as_run.key] = handle
        while len(self.built) > self.size:
            self.built.popitem(last=False)
        return handle
