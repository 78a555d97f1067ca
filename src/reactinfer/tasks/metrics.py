"""The user's metric: a quality the user cares about, bounded instead of agreement with the
original (NNCF's `validation_fn`, INC's `eval_func`).

A metric is a function `fn(outputs, items) -> float`, higher is better: `outputs` is the
task's primary output on the held-out items, in their order (`Task.primary_output`:
logits (N, C) for classifiers, embeddings (N, D) for encoders, per-text NLL (N,) for causal
LMs), `items` the items themselves (texts, or image items; a labelled item has `.label`,
its class id). Built-in metrics are registered by name (`accuracy`, `f1`); a Python
caller may pass any such callable instead.

The drop is RELATIVE, as `max_drop` is everywhere else (1 - agreement, 1 - cosine,
perplexity ratio - 1 are all relative to the original's own figure):

    drop = (reference - candidate) / |reference|     (reference - candidate when it is 0)

where `reference` is the metric of the original model and `candidate` that of the model
judged, on the same items. The quality dict of a comparison carries it under METRIC_KEY,
so every test of the bound (`tasks.base.within_bound`) reads it from the quality itself.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core.errors import UserError, UserTypeError

MetricFn = Callable[[np.ndarray, Sequence[Any]], float]
METRIC_KEY = "metric"  # quality[METRIC_KEY] = {"name", "reference", "candidate", "drop"}
LABELLED_TASKS = ("classification", "image-classification")  # outputs are logits (N, C)
_TINY = 1e-12  # below this a reference value is zero: the drop is taken as a difference


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    fn: MetricFn
    tasks: tuple[str, ...] | None = None  # None: any task (a user's callable)
    needs_labels: bool = False


_METRICS: dict[str, Metric] = {}


def register_metric(name: str, tasks: tuple[str, ...] | None = None,
                    needs_labels: bool = False) -> Callable[[MetricFn], MetricFn]:
    def add(fn: MetricFn) -> MetricFn:
        _METRICS[name] = Metric(name, fn, tasks, needs_labels)
        return fn
    return add


def metric_names() -> list[str]:
    return sorted(_METRICS)


def item_labels(items: Sequence[Any]) -> np.ndarray | None:
    """Class ids of the items, when every item has one (`.label`: image items from class
    subfolders, texts from JSONL with a `label` field)."""
    labels = [getattr(it, "label", None) for it in items]
    if not labels or any(label is None for label in labels):
        return None
    return np.asarray(labels, dtype=np.int64)


def _labels_for(logits: np.ndarray, items: Sequence[Any]) -> np.ndarray:
    labels = item_labels(items)
    if labels is None:
        raise UserError("this metric needs a label on every held-out item: give labelled "
                        "--data (image class subfolders, or JSONL with a 'label' field)")
    if len(labels) != len(logits):
        raise AssertionError(f"{len(labels)} labels for {len(logits)} outputs")
    n_classes = logits.shape[-1]
    if labels.min() < 0 or labels.max() >= n_classes:
        raise UserError(f"a label is {int(labels.max())} but the model has {n_classes} "
                        f"classes (ids 0..{n_classes - 1}): the data's labels do not match "
                        "the model's classes")
    return labels


@register_metric("accuracy", LABELLED_TASKS, needs_labels=True)
def accuracy(logits: np.ndarray, items: Sequence[Any]) -> float:
    """Share of items whose top-1 class is their label."""
    labels = _labels_for(logits, items)
    return float(np.mean(logits.argmax(-1) == labels))


@register_metric("f1", LABELLED_TASKS, needs_labels=True)
def macro_f1(logits: np.ndarray, items: Sequence[Any]) -> float:
    """Macro-averaged F1 over the classes that occur in the labels or the predictions
    (scikit-learn's `f1_score(average="macro")`): each class counts the same, so a
    model that gives up a rare class loses more than its share of items."""
    labels = _labels_for(logits, items)
    pred = logits.argmax(-1)
    scores = []
    for c in np.union1d(labels, pred):
        tp = float(np.sum((pred == c) & (labels == c)))
        wrong = float(np.sum((pred == c) != (labels == c)))  # false positives + negatives
        scores.append(2 * tp / (2 * tp + wrong))  # c occurs, so the sum is positive
    return float(np.mean(scores))


def metric_name(spec: str | MetricFn | None) -> str | None:
    """What identifies a metric in a run's settings: its name, or a callable's qualified
    name (a resumed run must pass the same function)."""
    if spec is None or isinstance(spec, str):
        return spec
    qual = getattr(spec, "__qualname__", None) or type(spec).__qualname__
    return f"{getattr(spec, '__module__', None) or '?'}.{qual}"


def resolve_metric(spec: str | MetricFn | Metric | None, task: str | None = None
                   ) -> Metric | None:
    """The metric `spec` names (a registered name, a callable, or None: agreement with the
    original), checked against the task when it is known."""
    if spec is None or isinstance(spec, Metric):
        metric = spec
    elif isinstance(spec, str):
        if spec not in _METRICS:
            raise UserError(f"unknown metric {spec!r}; choose one of "
                            f"{', '.join(metric_names())}, or pass metric=callable(outputs, "
                            "items) -> float from Python")
        metric = _METRICS[spec]
    elif callable(spec):
        metric = Metric(str(metric_name(spec)), spec)
    else:
        raise TypeError(f"metric must be a name ({', '.join(metric_names())}) or a "
                        f"callable(outputs, items) -> float, got {type(spec).__name__}")
    if metric is not None and task is not None and metric.tasks is not None \
            and task not in metric.tasks:
        raise UserError(f"metric {metric.name!r} applies to {' and '.join(metric.tasks)} "
                        f"models, not {task}; pass metric=callable(outputs, items) -> float "
                        "from Python for your own")
    return metric


def check_labelled(metric: Metric | None, items: Sequence[Any], data: str | None) -> None:
    """One clear line when the metric needs labels and the held-out items have none."""
    if metric is not None and metric.needs_labels and item_labels(items) is None:
        where = f"the data {data}" if data else "the built-in data for this model"
        raise UserError(f"--metric {metric.name} needs labelled data, and {where} has no "
                        "labels: give --data DIR with one subfolder per class (images) or "
                        "a JSONL file with a 'label' field on every line (texts)")


def metric_value(metric: Metric, primary: str, results: dict[str, np.ndarray],
                 items: Sequence[Any]) -> float:
    """The metric of one model's results (its `primary` output) on `items`."""
    value = metric.fn(results[primary], items)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserTypeError(f"metric {metric.name} must return a float (higher is better), "
                        f"got {type(value).__name__}")
    if not math.isfinite(value):
        raise UserError(f"metric {metric.name} returned {value}: it must be a finite number")
    return float(value)


def relative_drop(reference: float, candidate: float) -> float:
    """(reference - candidate) / |reference|; the plain difference when reference is 0."""
    diff = reference - candidate
    return diff / abs(reference) if abs(reference) > _TINY else diff


def with_metric(quality: dict[str, Any], metric: Metric | None, primary: str,
                reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                items: Sequence[Any]) -> dict[str, Any]:
    """`quality` (a task's comparison of `candidate` with `reference`) with the user's
    metric of both added under METRIC_KEY; unchanged without a metric."""
    if metric is None:
        return quality
    ref = metric_value(metric, primary, reference, items)
    cand = ref if candidate is reference else metric_value(metric, primary, candidate, items)
    quality[METRIC_KEY] = {"name": metric.name, "reference": ref, "candidate": cand,
                           "drop": relative_drop(ref, cand)}
    return quality


def metric_text(quality: dict[str, Any] | None) -> str:
    """'accuracy 0.9100 (original 0.9300, drop 0.0215)' for reports; '' without one."""
    m = (quality or {}).get(METRIC_KEY)
    if not m:
        return ""
    return (f"{m['name']} {m['candidate']:.4f} (original {m['reference']:.4f}, "
            f"drop {m['drop']:.4f})")
