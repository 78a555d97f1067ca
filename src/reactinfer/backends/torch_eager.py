"""PyTorch eager: the reference backend, runs any torch model ReAct can load."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backend import Batch, register_backend
from ..core.errors import UserError

if TYPE_CHECKING:
    import torch

    from ..core.handle import ModelHandle


def set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


class TorchRunner:
    """Runs the task-wrapped module under inference_mode; generation uses the KV cache."""

    def __init__(self, handle: ModelHandle, module: torch.nn.Module):
        from ..tasks import get_task

        self.handle = handle
        self.model = handle.model
        self.module = module if module is not None else get_task(handle.task).wrap(handle.model)
        self.module.eval()

    def __call__(self, batch: Batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(**{k: torch.from_numpy(v) for k, v in batch.items()})
        return out.float().numpy()

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        import torch

        if self.handle.task != "causal-lm":
            raise UserError(f"generate needs a causal-lm model, this is {self.handle.task}")
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        tok = self.handle.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False, use_cache=True, pad_token_id=pad)
        return out[0, len(prompt_ids):].tolist()


class TorchEagerBackend:
    name = "torch"
    description = "PyTorch eager (reference; any torch model; CPU, or CUDA when present)"

    def available(self) -> bool:
        return True

    def why_unavailable(self) -> str:
        return ""

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["embedding", "classification", "causal-lm"],
                "options": {"threads": "int"}, "files": [], "needs_torch_at_run_time": True}

    def supports(self, handle: ModelHandle) -> bool:
        return handle.model is not None

    def prepare(self, handle: ModelHandle, threads: int | None = None, **opts: Any) -> TorchRunner:
        if opts:
            raise UserError(f"torch backend: unknown option(s) {sorted(opts)}; known: threads")
        set_threads(threads)
        return TorchRunner(handle, None)


register_backend(TorchEagerBackend())
