"""PyTorch eager: the reference backend, runs any torch model ReAct can load, on the CPU
or on a CUDA GPU (`device`: auto, cpu, cuda; see device.py)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backend import Backend, Batch, Decoding, EngineConfig, register_backend
from ..core.errors import UserError
from .device import DEVICES, place, resolve_device

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
    """Runs the task-wrapped module under inference_mode on `device` ('cpu' or 'cuda');
    batches go to the device and come back as float32 numpy; generation uses the KV cache.
    Subclasses change how the wrapped module runs by overriding `build`."""

    def __init__(self, handle: ModelHandle, device: str = "cpu"):
        from ..tasks import get_task

        assert handle.model is not None  # supports() admitted only handles with a model
        self.handle = handle
        self.device = device
        self.model: Any = place(handle.model, device)  # a copy on a GPU: handle.model stays put
        self.module = self.build(get_task(handle.task).wrap(self.model).eval())

    def build(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def __call__(self, batch: Batch) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.module(**{k: torch.from_numpy(v).to(self.device)
                                 for k, v in batch.items()})
        return out.float().cpu().numpy()

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Causal LMs: per position, the NLL of the next token and the argmax, with the LM
        head applied to a block of positions at a time (no (B, T, V) logits)."""
        import torch

        from ..tasks.causal_lm import torch_next_token_scores

        with torch.inference_mode():
            return torch_next_token_scores(
                self.model, torch.from_numpy(batch["input_ids"]).to(self.device),
                torch.from_numpy(batch["attention_mask"]).to(self.device))

    def decode(self, prompt_ids: list[int]) -> Decoding:
        """With the KV cache: the prompt once, then one new token per step."""
        import torch

        from ..tasks import get_task

        if not get_task(self.handle.task).generates:
            raise UserError(f"generate needs a causal-lm model, this is {self.handle.task}")
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([list(prompt_ids)], device=self.device),
                             use_cache=True)
        while True:
            tok = yield out.logits[0, -1].float().cpu().numpy()
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([[int(tok)]], device=self.device),
                                 past_key_values=out.past_key_values, use_cache=True)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        import torch

        from ..tasks import get_task

        if not get_task(self.handle.task).generates:
            raise UserError(f"generate needs a causal-lm model, this is {self.handle.task}")
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device)
        tok = self.handle.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        with torch.inference_mode():
            out = self.model.generate(ids, attention_mask=torch.ones_like(ids),
                                      max_new_tokens=max_new_tokens, min_new_tokens=max_new_tokens,
                                      do_sample=False, use_cache=True, pad_token_id=pad)
        return out[0, len(prompt_ids):].tolist()


class TorchEagerBackend(Backend):
    name = "torch"
    description = "PyTorch eager (reference; any torch model; CPU, or CUDA when present)"

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["embedding", "classification", "causal-lm", "image-classification"],
                "options": {"threads": "int", "device": list(DEVICES)}, "files": [],
                "needs_torch_at_run_time": True}

    def engine_configs(self) -> list[EngineConfig]:
        # the reference: what quality is judged by. Its other number formats are transforms
        # of the torch model (CastHalf, QuantizeDynamicInt8), not backend options
        return [EngineConfig(self.name, "torch", ("embedding", "classification", "causal-lm",
                                                  "image-classification"), lossless=True)]

    def prepare(self, handle: ModelHandle, threads: int | None = None, device: str = "auto",
                **opts: Any) -> TorchRunner:
        if opts:
            raise UserError(f"torch backend: unknown option(s) {sorted(opts)}; "
                            "known: threads, device")
        assert handle.model is not None  # supports() admitted only handles with a model
        set_threads(threads)
        return TorchRunner(handle, resolve_device(device, handle.model))


register_backend(TorchEagerBackend())
