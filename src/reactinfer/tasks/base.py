"""What every task shares: tokenizing into batches, and the task registry.

A task knows how to wrap a model so one forward call returns its primary output
(`wrap`), how to run a set of texts and keep what quality needs (`evaluate`), and how
to compare a candidate's results with the reference's (`compare`, `drop`).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..core.errors import UserError
from ..core.handle import check_task, register_task_name
from ..core.images import ImagePreprocess
from ..core.plugins import load_builtin
from .metrics import METRIC_KEY
from .stats import CI_KEY

if TYPE_CHECKING:
    import torch

    from ..core.backend import Batch, Runner

Results = dict[str, np.ndarray]


TOKEN_KEYS = ("input_ids", "attention_mask", "token_type_ids")


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> Batch:
    """Tokenize with dynamic padding: pad to the longest text in this batch only. An image
    model's "tokenizer" is its ImagePreprocess: the items are images, the batch pixels."""
    if isinstance(tokenizer, ImagePreprocess):
        return tokenizer(texts)
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=max_length,
                    return_tensors="np")
    return {k: np.asarray(enc[k], dtype=np.int64) for k in TOKEN_KEYS if k in enc}


def pad_rows(tokenizer: Any, rows: dict[str, list[list[int]]]) -> Batch:
    """A batch from unpadded token rows, padded to the longest row as `tokenize` pads
    (the tokenizer's side and pad ids), so the two give the same arrays."""
    lengths = [len(r) for r in rows["input_ids"]]
    width = max(lengths)
    fill = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0)}
    left = getattr(tokenizer, "padding_side", "right") == "left"
    batch = {}
    for key, seqs in rows.items():
        if fill[key] is None:
            raise UserError("the tokenizer has no pad token: batches of texts of different "
                            "lengths cannot be padded")
        out = np.full((len(seqs), width), fill[key], dtype=np.int64)
        for r, (seq, n) in enumerate(zip(seqs, lengths, strict=True)):
            if left:
                out[r, width - n:] = seq
            else:
                out[r, :n] = seq
        batch[key] = out
    return batch


def iter_batches(tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int,
                 sort_by_length: bool = True) -> Iterator[tuple[np.ndarray, Batch]]:
    """Yield (indices, batch). Sorting by length first (length bucketing) means each batch
    pads to similar lengths, which is most of the speed on real, varied text. The length is
    the token count: every text is tokenized once, unpadded, then each batch is padded to
    its longest row. (sentence-transformers sorts by characters, a loose proxy: on the
    built-in eval texts it pads about a fifth more tokens; benchmarks/minilm_limit.py.)"""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}")
    if not sort_by_length or isinstance(tokenizer, ImagePreprocess):  # images: one size
        for start in range(0, len(texts), batch_size):
            idx = np.arange(start, min(start + batch_size, len(texts)))
            yield idx, tokenize(tokenizer, [texts[int(i)] for i in idx], max_length)
        return
    if not texts:
        return
    enc = tokenizer(list(texts), truncation=True, max_length=max_length)
    rows = {k: enc[k] for k in TOKEN_KEYS if k in enc}
    lengths = np.array([len(r) for r in rows["input_ids"]])
    order = np.argsort(-lengths, kind="stable")  # longest first; ties keep input order
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        yield idx, pad_rows(tokenizer, {k: [v[i] for i in idx] for k, v in rows.items()})


class Task(Protocol):
    """What the rest of the library asks of a task, so that adding one touches tasks/
    only: measure/, planner/, serving/ and cluster/ read these, never the task's name."""

    name: str
    quality_name: str  # the score `drop` is taken from, for reports
    primary_output: str  # the key of `evaluate`'s results a user's metric gets (metrics.py)
    takes_images: bool  # items are images (pixel batches, no tokens to count), not texts
    item_noun: str  # what reports call the items: "texts", "images"
    # A generative LM: it decodes text (generate, the server's decode loop), and its
    # logits are per position (B, T, V), so evaluation batches stay small.
    generates: bool
    serve_output: str  # the output tensor a KServe v2 answer names
    votes: bool  # outputs are class logits that ensembles may majority-vote (text classifiers)
    bounds_recall: bool  # `within_bound` also holds top-10 neighbour recall to `recall_floor`
    # The largest `drop` a candidate may show when the user gives no bound (bench --backend
    # auto): 1 - mean cosine for embeddings, perplexity ratio - 1 for LMs, 1 - top-1
    # agreement for classifiers.
    default_max_drop: float
    default_n_eval: int | None  # eval items bench takes by default (None: all)
    latency_runs: int  # batch-1 latency runs bench takes by default
    max_eval_batch: int | None  # the largest evaluation batch (None: the user's batch size)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """A module whose forward(input_ids, attention_mask[, token_type_ids]) returns
        the task's primary output tensor."""
        ...

    def evaluate(self, runner: Runner, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> Results: ...

    def compare(self, reference: Results, candidate: Results) -> dict[str, Any]:
        """Quality figures, and their 95% confidence intervals under `ci95` (stats.py)."""
        ...

    def drop(self, quality: dict[str, Any]) -> float:
        """Relative quality drop against the reference (0 = identical)."""
        ...


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> Task:
    _TASKS[task.name] = task
    register_task_name(task.name, takes_images=task.takes_images)
    return task


def get_task(name: str) -> Task:
    if name not in _TASKS:
        load_builtin("tasks")  # the task modules register themselves on import
    check_task(name)
    return _TASKS[name]


def run_in_order(runner: Runner, tokenizer: Any, texts: Sequence[str], batch_size: int,
                 max_length: int) -> np.ndarray:
    """Run per-item outputs (B, ...) over all texts, returned in input order."""
    out: np.ndarray | None = None
    for idx, batch in iter_batches(tokenizer, texts, batch_size, max_length):
        y = runner(batch)
        if out is None:
            out = np.empty((len(texts),) + y.shape[1:], dtype=np.float32)
        out[idx] = y
    if out is None:
        raise UserError("no texts to run: the data is empty")
    return out


def sample_batch(tokenizer: Any, max_length: int) -> Batch:
    """A small batch to trace an export with: two texts of different length (so the trace
    sees real padding), or two blank images of the model's input size."""
    if isinstance(tokenizer, ImagePreprocess):
        blank = np.zeros((tokenizer.size, tokenizer.size, 3), np.uint8)
        return tokenizer([blank, blank])
    return tokenize(tokenizer, ["The quick brown fox jumps over the lazy dog.", "Hi"],
                    max_length)


def count_tokens(tokenizer: Any, texts: Sequence[Any], max_length: int) -> int | None:
    """Non-padding tokens over all texts (None for images: no tokens to count)."""
    if isinstance(tokenizer, ImagePreprocess):
        return None
    return sum(int(np.sum(tokenize(tokenizer, texts[i:i + 256], max_length)["attention_mask"]))
               for i in range(0, len(texts), 256))


def quality_drop(task: str, quality: dict[str, Any]) -> float:
    """The drop the bound is on: of the user's metric when the quality has one (metrics.py),
    else of the task's quality score against the original."""
    if METRIC_KEY in quality:
        return float(quality[METRIC_KEY]["drop"])
    return get_task(task).drop(quality)


def within_bound(task: str, quality: dict[str, Any], max_drop: float) -> tuple[bool, str]:
    """The user's bound on the task's quality score, plus, for embeddings, neighbour recall
    (mean cosine alone can hide re-ordered search results). One test for every place that
    keeps or picks a model: the planner, `bench --backend auto`, the reports. When the
    quality holds the user's metric (metrics.py), its drop alone is bounded: the user's
    metric replaces agreement with the original, as NNCF's `validation_fn` does.

    The point estimates decide (docs/bench.md says why); when the quality holds 95%
    confidence intervals (`quality["ci95"]`), the reason says whether the decision holds
    with that confidence or whether an interval straddles the limit."""
    if METRIC_KEY in quality:
        m = quality[METRIC_KEY]
        what = f"{m['name']} drop {m['drop']:.4f} ({m['candidate']:.4f} vs {m['reference']:.4f})"
        return (m["drop"] <= max_drop,
                f"{what} {'≤' if m['drop'] <= max_drop else '>'} bound {max_drop}")
    drop = get_task(task).drop(quality)
    drop_ci = drop_interval(task, quality)
    if drop > max_drop:
        return False, f"quality drop {drop:.4f} > bound {max_drop}" + _ci_note(
            drop_ci, max_drop, "drop")
    if get_task(task).bounds_recall:
        floor = recall_floor(max_drop)
        recall_ci = quality.get(CI_KEY, {}).get("top10_recall")
        if quality["top10_recall"] < floor:
            return False, f"top-10 recall {quality['top10_recall']:.3f} < {floor:.3f}" + \
                _ci_note(recall_ci, floor, "top-10 recall")
        return True, f"quality drop {drop:.4f} ≤ {max_drop}" + _ci_note(
            drop_ci, max_drop, "drop") + _ci_note(recall_ci, floor, "top-10 recall")
    return True, f"quality drop {drop:.4f} ≤ {max_drop}" + _ci_note(drop_ci, max_drop, "drop")


def bound_decided(task: str, quality: dict[str, Any], max_drop: float) -> bool:
    """Whether `within_bound` holds at 95% confidence: every interval of the quality (the
    drop's; for embeddings, top-10 recall's too) lies on the right side of its limit.
    Without intervals, the point estimates decide."""
    if not within_bound(task, quality, max_drop)[0]:
        return False
    drop_ci = drop_interval(task, quality)
    if drop_ci is not None and drop_ci[1] > max_drop:
        return False
    recall_ci = quality.get(CI_KEY, {}).get("top10_recall") \
        if get_task(task).bounds_recall and METRIC_KEY not in quality else None
    return recall_ci is None or recall_ci[0] >= recall_floor(max_drop)


def drop_interval(task: str, quality: dict[str, Any]) -> list[float] | None:
    """The 95% confidence interval of the task's quality drop, from the interval of its
    quality score (None when the quality has none, or bounds the user's metric: a metric
    callable gives one figure, no per-item values to take an interval from)."""
    if METRIC_KEY in quality:
        return None
    t = get_task(task)
    ci = quality.get(CI_KEY, {}).get(t.quality_name)
    if ci is None:
        return None
    ends = sorted(t.drop({**quality, t.quality_name: v}) for v in ci)
    return [float(ends[0]), float(ends[1])]


def _ci_note(ci: list[float] | None, limit: float, what: str) -> str:
    """'; 95% CI [a, b]' and whether it lies on one side of `limit` or straddles it."""
    if ci is None:
        return ""
    lo, hi = ci
    side = ("straddles the limit: not decided at 95% confidence" if lo <= limit <= hi
            else "decided at 95% confidence")
    return f" ({what} 95% CI [{lo:.4f}, {hi:.4f}] {side})"


def eval_batch(task: str, batch_size: int) -> int:
    """The batch size `task` is evaluated at: the user's, capped by `Task.max_eval_batch`."""
    cap = get_task(task).max_eval_batch
    return batch_size if cap is None else min(batch_size, cap)


def recall_floor(max_drop: float) -> float:
    """Embeddings: the least top-10 neighbour recall `within_bound` accepts.

    It is the bound read in recall terms: a drop of `max_drop` in mean cosine allows five
    times that share of the top-10 neighbours to change, so a 1% cosine drop allows 5% of
    them (half a neighbour in ten per query; the default 0.005 allows 2.5%). The factor is
    a chosen exchange rate, not derived (the planner's first version, commit 1b0c559, set
    it without a stated reason). Its purpose is to make re-ordered search results fail
    even where the cosine passes: recall moves far faster than cosine (minilm int8: mean
    cosine 0.9977, a 0.23% drop, with top-10 recall 0.94, 6% of neighbours changed;
    docs/backends.md), so for quantized encoders the floor is usually the binding test."""
    return max(0.0, 1 - 5 * max_drop)
