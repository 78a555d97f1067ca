"""Building models from recipes (candidates), reusing the handles of recipe prefixes."""
from __future__ import annotations

import json
from collections import OrderedDict

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

    def torch_handle(self, transforms: tuple[str, ...]) -> ModelHandle:
        for n in range(len(transforms), 0, -1):
            if transforms[:n] in self.cache:
                handle, done = self.cache[transforms[:n]], n
                self.cache.move_to_end(transforms[:n])
                break
        else:
            handle, done = self.base, 0
        for i in range(done, len(transforms)):
            cfg = json.loads(transforms[i])
            if "progress" in cfg:  # a long step (distillation) shows its bar when the run does
                cfg["progress"] = self.progress
            handle = compress(handle, [config_from_dict(cfg)])
            self.cache[transforms[:i + 1]] = handle
            while len(self.cache) > self.size:
                self.cache.popitem(last=False)
        return handle

    def build(self, cand: Candidate) -> ModelHandle:
        """The model for a recipe; the last few built are kept, because the best candidate
        and the Pareto variants are built again to be saved (distillation is not cheap)."""
        if cand.key in self.built:
            self.built.move_to_end(cand.key)
            return self.built[cand.key]
        handle = self.torch_handle(cand.transforms)
        if cand.backend != "torch" or cand.backend_options():
            from ..backends import to_backend

            handle = to_backend(handle, cand.backend, **cand.backend_options())
        self.built[cand.key] = handle
        while len(self.built) > self.size:
            self.built.popitem(last=False)
        return handle
