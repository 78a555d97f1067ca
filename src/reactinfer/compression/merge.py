"""Merging checkpoints of one architecture, Θ = Σ αᵢ θᵢ (αᵢ ≥ 0, Σ αᵢ = 1), flat or as
recursive tree (only O(log N) checkpoints in memory at once), and output ensembles
(mean of embeddings / logits, majority vote) over several models as one Runner."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.errors import UserError
from ..core.transform import TransformConfig, register_transform
from ..tasks import get_task
from ._common import clone, need_model

if TYPE_CHECKING:
    from ..core.backend import Batch, Runner
    from ..core.handle import ModelHandle

StateDict = dict[str, torch.Tensor]


def check_alphas(alphas: Sequence[float], n: int, what: str = "merge") -> None:
    if len(alphas) != n:
        raise UserError(f"{what}: {n} models need {n} weights (alphas), got {len(alphas)}")
    if any(not isinstance(a, (int, float)) or isinstance(a, bool) or a < 0 or math.isnan(a)
           for a in alphas):
        raise UserError(f"{what}: weights must be numbers >= 0, got {list(alphas)}")
    if not math.isclose(sum(alphas), 1.0, abs_tol=1e-6):
        raise UserError(f"{what}: weights must sum to 1, got {list(alphas)} "
                        f"(sum {sum(alphas):.6g})")


@dataclasses.dataclass(frozen=True)
class MergeWeights(TransformConfig):
    """Average this model's parameters with those of `models` (paths, artifact
    directories or built-in names of the same architecture). `alphas[0]` weighs this
    model, `alphas[i]` weighs `models[i-1]`; default: equal weights."""
    models: tuple[str, ...] = ()
    alphas: tuple[float, ...] = ()
    tree: bool = False

    def validate(self) -> None:
        if not self.models or not all(isinstance(m, str) and m for m in self.models):
            raise UserError("MergeWeights: models must list at least one model to merge with")
        if self.alphas:
            check_alphas(self.alphas, len(self.models) + 1, "MergeWeights")


def _check_same(ref: StateDict, other: StateDict, label: str) -> None:
    missing, extra = sorted(set(ref) - set(other)), sorted(set(other) - set(ref))
    if missing or extra:
        raise UserError(f"merge: {label} has different parameters: missing {missing[:3]}, "
                        f"extra {extra[:3]}; merge only checkpoints of one architecture")
    for k, v in ref.items():
        if v.shape != other[k].shape:
            raise UserError(f"merge: {label} has {k} of shape {tuple(other[k].shape)}, the "
                            f"first model {tuple(v.shape)}; merge only same-shaped checkpoints")


def _float_state(model: torch.nn.Module) -> StateDict:
    return {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


def merge_state_dicts(states: Sequence[StateDict], alphas: Sequence[float] | None = None
                      ) -> StateDict:
    """Θ = Σ αᵢ θᵢ over float tensors; integer buffers (e.g. position ids) come from the
    first checkpoint. With α = (1, 0, …) the result is the first checkpoint exactly."""
    if not states:
        raise UserError("merge: no checkpoints given")
    alphas = list(alphas) if alphas is not None else [1 / len(states)] * len(states)
    check_alphas(alphas, len(states))
    for i, s in enumerate(states[1:], 1):
        _check_same(states[0], s, f"checkpoint {i}")
    out: StateDict = {}
    for k, v in states[0].items():
        if not v.is_floating_point():
            out[k] = v.clone()
            continue
        if alphas[0] == 1.0:  # exact: no rounding from 1·θ + 0·θ'
            out[k] = v.clone()
            continue
        acc = torch.zeros_like(v, dtype=torch.float64)
        for a, s in zip(alphas, states, strict=True):
            if a:
                acc += a * s[k].double()
        out[k] = acc.to(v.dtype)
    return out


def tree_merge(sources: Sequence[Callable[[], StateDict] | StateDict],
               alphas: Sequence[float] | None = None) -> StateDict:
    """Recursive merge: each half is merged on its own, then the two halves are merged
    with their summed weights, so the result equals the flat weighted mean while only
    about log2(N) checkpoints are held at once when `sources` are loader callables."""
    if not sources:
        raise UserError("merge: no checkpoints given")
    alphas = list(alphas) if alphas is not None else [1 / len(sources)] * len(sources)
    check_alphas(alphas, len(sources))
    first: list[StateDict] = []

    def get(i: int) -> StateDict:
        s = sources[i]
        state = s() if callable(s) else s
        if first:
            _check_same(first[0], state, f"checkpoint {i}")
        else:  # keep only names and shapes of the first, to check the others against
            first.append({k: torch.empty(v.shape, dtype=v.dtype, device="meta")
                          for k, v in state.items()})
        return state

    def rec(lo: int, hi: int) -> tuple[float, StateDict]:
        if hi - lo == 1:
            return alphas[lo], get(lo)
        mid = (lo + hi) // 2
        (a1, s1), (a2, s2) = rec(lo, mid), rec(mid, hi)
        total = a1 + a2
        if total == 0:
            return 0.0, s1
        return total, merge_state_dicts([s1, s2], [a1 / total, a2 / total])

    return rec(0, len(sources))[1]


def merge_models(models: Sequence[torch.nn.Module], alphas: Sequence[float] | None = None,
                 tree: bool = False) -> torch.nn.Module:
    """A copy of `models[0]` holding the weighted average of all their parameters."""
    states = [_float_state(m) for m in models]
    merged = tree_merge(states, alphas) if tree else merge_state_dicts(states, alphas)
    out = clone(models[0])
    out.load_state_dict(merged, strict=False)
    return out.eval()


@register_transform(MergeWeights)
def _merge(handle: ModelHandle, cfg: MergeWeights) -> ModelHandle:
    from ..models import load

    model = need_model(handle, "MergeWeights")
    alphas = cfg.alphas or tuple([1 / (len(cfg.models) + 1)] * (len(cfg.models) + 1))
    own = _float_state(model)

    def loader(ref: str) -> Callable[[], StateDict]:
        def fn() -> StateDict:
            other = load(ref, task=handle.task)
            if other.model is None:
                raise UserError(f"MergeWeights: {ref} has no torch weights to merge")
            return _float_state(other.model)
        return fn

    sources: list[Any] = [own] + [loader(r) for r in cfg.models]
    if cfg.tree:
        merged = tree_merge(sources, alphas)
    else:
        merged = merge_state_dicts([own] + [s() for s in sources[1:]], alphas)
    new = clone(model)
    new.load_state_dict(merged, strict=False)
    return handle.derive(model=new.eval())


# -- output ensembles --------------------------------------------------------------------------

ENSEMBLE_MODES = ("mean", "vote")


class EnsembleRunner:
    """One Runner over several: the mean of their outputs (embeddings re-normalised), or
    for classification a majority vote (returned as vote counts, ties broken by the mean
    probability, so argmax is the voted class)."""

    def __init__(self, runners: Sequence[Runner], task: str, mode: str = "mean",
                 weights: Sequence[float] | None = None):
        if len(runners) < 1:
            raise UserError("an ensemble needs at least one model")
        if mode not in ENSEMBLE_MODES:
            raise UserError(f"ensemble mode must be one of {', '.join(ENSEMBLE_MODES)}, "
                            f"got {mode!r}")
        if mode == "vote" and not get_task(task).votes:
            raise UserError(f"majority vote needs classification models; this is {task}: "
                            "use mode='mean'")
        self.weights = list(weights) if weights is not None else [1 / len(runners)] * len(
            runners)
        check_alphas(self.weights, len(runners), "ensemble")
        self.runners, self.task, self.mode = list(runners), task, mode

    def __call__(self, batch: Batch) -> np.ndarray:
        outs = [r(batch) for r in self.runners]
        shapes = {o.shape for o in outs}
        if len(shapes) != 1:
            raise UserError(f"ensemble members disagree on output shape: {sorted(shapes)}")
        if self.mode == "vote":
            probs = [np.exp(o - o.max(-1, keepdims=True)) for o in outs]
            mean_p = sum(w * p / p.sum(-1, keepdims=True)
                         for w, p in zip(self.weights, probs, strict=True))
            votes = sum(w * np.eye(o.shape[-1], dtype=np.float32)[o.argmax(-1)]
                        for w, o in zip(self.weights, outs, strict=True))
            return (votes + 1e-3 * mean_p).astype(np.float32)  # (B, C)
        mean = sum(w * o.astype(np.float64) for w, o in zip(self.weights, outs, strict=True))
        if get_task(self.task).primary_output == "embeddings":  # unit vectors stay unit
            mean = mean / np.linalg.norm(mean, axis=-1, keepdims=True).clip(1e-12)
        return np.asarray(mean, dtype=np.float32)

    def generate(self, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy decoding on the mean logits (no KV cache: each step reruns the prefix)."""
        if not get_task(self.task).generates:
            raise UserError(f"generate needs causal-lm models, this ensemble is {self.task}")
        ids = list(prompt_ids)
        for _ in range(max_new_tokens):
            x = np.asarray([ids], dtype=np.int64)
            logits = self({"input_ids": x, "attention_mask": np.ones_like(x)})  # (1, T, V)
            ids.append(int(logits[0, -1].argmax()))
        return ids[len(prompt_ids):]


def ensemble(handles: Sequence[Any], mode: str = "mean",
             weights: Sequence[float] | None = None) -> EnsembleRunner:
    """A Runner over several models (anything `load` takes) of one task and tokenizer."""
    from ..models import load

    hs = [load(h) for h in handles]
    if not hs:
        raise UserError("an ensemble needs at least one model")
    tasks = {h.task for h in hs}
    if len(tasks) != 1:
        raise UserError(f"ensemble members must share one task, got {sorted(tasks)}")
    return EnsembleRunner([h.runner() for h in hs], hs[0].task, mode, weights)
