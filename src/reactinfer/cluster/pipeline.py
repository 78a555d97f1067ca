"""Pipeline (model) parallelism: a model's transformer layers split into stages on
different actors, micro-batches streamed through them.

    driver: tokenize micro-batch m ─► stage 0 (embeddings + layers[0:a])
                                      ─► stage 1 (layers[a:b]) ─► … ─► last stage
                                         (layers[…:L] + mean pooling + L2 norm)

Stage k+1 gets stage k's output as a Ray object reference, so micro-batch m+1 runs in
stage 0 while m runs in stage 1 (actors execute calls in submission order), and
hidden states move through the object store, not through the driver. Each stage is a
copy of the model with only its slice of layers (the others are physically removed),
so memory per actor shrinks with the number of stages.

Outputs equal the unsplit model's: the same modules run the same ops on the same
float32 tensors; the only possible difference is CPU kernel blocking when the stage
actors use a different thread count than the reference (we measure it: max abs diff,
tolerance 1e-5 in the tests, 0.0 observed with equal thread counts).

Supported: encoders whose family adapter (models.arch) lists their model type as
splittable (BERT, RoBERTa, XLM-R: embeddings → layers → pooling), for the embedding task.
The adapter says where the layers, the embeddings and the pooler are.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.errors import UserError
from ..models.arch import adapter_for, find_adapter, model_kind, splittable_types
from . import ray_api
from .aggregate import ordered_gather

if TYPE_CHECKING:
    import torch

    from ..core.handle import ModelHandle


def _even_bounds(n_layers: int, n_stages: int) -> list[tuple[int, int]]:
    if not 1 <= n_stages <= n_layers:
        raise UserError(f"stages must be between 1 and the number of layers ({n_layers}), "
                        f"got {n_stages}")
    edges = np.linspace(0, n_layers, n_stages + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


def _pass_embeddings() -> torch.nn.Module:
    import torch

    class PassEmbeddings(torch.nn.Module):
        """Later stages: the hidden states arrive ready-made (as inputs_embeds)."""

        def forward(self, inputs_embeds: torch.Tensor | None = None, **_: Any
                    ) -> torch.Tensor | None:
            return inputs_embeds

    return PassEmbeddings()


def split_model(model: torch.nn.Module, n_stages: int) -> list[torch.nn.Module]:
    """Copies of an encoder, stage k keeping only its layers (and the embeddings for
    stage 0; no pooler anywhere: we mean-pool)."""
    import torch

    arch = adapter_for(model, "pipeline parallelism")
    layers = arch.blocks(model)
    bounds = _even_bounds(len(layers), n_stages)
    stages = []
    for k, (a, b) in enumerate(bounds):
        arch.set_blocks(model, torch.nn.ModuleList())  # don't deepcopy the whole stack n times
        stage = copy.deepcopy(model)
        arch.set_blocks(model, layers)
        arch.set_blocks(stage, torch.nn.ModuleList(copy.deepcopy(layers[i]) for i in range(a, b)))
        body = arch.body(stage)
        for attr in arch.stage_drop:
            setattr(body, attr, None)
        if k > 0:
            setattr(body, arch.stage_embeddings, _pass_embeddings())
        stages.append(stage.eval())
    return stages


class StageWorker:
    """One pipeline stage on one actor: hidden states in, hidden states (or, for the
    last stage, pooled and normalised embeddings) out."""

    def __init__(self, module: torch.nn.Module, first: bool, last: bool, threads: int = 1):
        from ..backends.torch_eager import set_threads

        set_threads(threads)
        self.module, self.first, self.last = module.eval(), first, last
        self.busy = 0.0

    def forward(self, x: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        t = time.perf_counter()
        mask = torch.from_numpy(x["attention_mask"])
        with torch.inference_mode():
            if self.first:
                kw = {k: torch.from_numpy(x[k]) for k in ("input_ids", "token_type_ids") if k in x}
                hidden = self.module(attention_mask=mask, **kw)[0]
            else:
                hidden = self.module(inputs_embeds=torch.from_numpy(x["hidden"]),
                                     attention_mask=mask)[0]  # (B, T, H)
            if self.last:  # exactly the embedding task's MeanPooled
                m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, H)
                out = {"embeddings": torch.nn.functional.normalize(pooled.float(), p=2, dim=-1)
                       .numpy(), "idx": x["idx"]}
            else:
                out = {"hidden": hidden.numpy(), "attention_mask": x["attention_mask"],
                       "idx": x["idx"]}
        self.busy += time.perf_counter() - t
        return out

    def stats(self) -> dict[str, float]:
        return {"busy_s": self.busy}


def split_stages(handle: ModelHandle, n_stages: int) -> list[Any]:
    from ..tasks import get_task

    if get_task(handle.task).primary_output != "embeddings" or handle.model is None:
        raise UserError("pipeline parallelism supports torch embedding encoders "
                        f"(BERT family); this model is {handle.task}")
    arch = find_adapter(handle.model)
    if arch is None or not arch.can_split(handle.model):
        raise UserError(f"no pipeline splitter for model type {model_kind(handle.model)!r}; "
                        f"supported: {', '.join(splittable_types())}")
    return split_model(handle.model, n_stages)


def run_pipeline(handle: ModelHandle, texts: Sequence[str], stages: int = 2,
                 micro_batch: int = 16, threads_per_stage: int = 1, max_in_flight: int = 4,
                 ray_address: str | None = None) -> dict[str, Any]:
    """Embeddings of `texts` (input order) computed by a `stages`-stage pipeline."""
    from ..tasks.base import iter_batches

    modules = split_stages(handle, stages)
    texts = list(texts)
    with ray_api.session(ray_address):
        cls = ray_api.actor_class(StageWorker, num_cpus=threads_per_stage)
        actors = [cls.remote(m, k == 0, k == len(modules) - 1, threads_per_stage)
                  for k, m in enumerate(modules)]
        t0 = time.perf_counter()
        pending: list[Any] = []
        done: list[dict[str, np.ndarray]] = []
        for idx, batch in iter_batches(handle.tokenizer, texts, micro_batch, handle.max_length):
            ref: Any = dict(batch, idx=idx)
            for a in actors:  # chained refs: stage k+1 waits on stage k's output, not on us
                ref = a.forward.remote(ref)
            pending.append(ref)
            if len(pending) >= max_in_flight:  # bound the micro-batches alive in the store
                ready, pending = ray_api.wait(pending, num_returns=1)
                done += ray_api.get(ready)
        done += ray_api.get(pending)
        wall = time.perf_counter() - t0
        stats = ray_api.get([a.stats.remote() for a in actors])
        for a in actors:
            ray_api.kill(a, no_restart=True)
    out = ordered_gather([(d["idx"], d["embeddings"]) for d in done], len(texts))
    layers = [len(adapter_for(m).blocks(m)) for m in modules]
    return {"embeddings": out, "wall_s": wall, "stages": [
        {"layers": n, "busy_s": round(s["busy_s"], 4),
         "utilisation": round(s["busy_s"] / wall, 3) if wall > 0 else 0.0}
        for n, s in zip(layers, stats, strict=True)]}
