"""Measure a model where it runs: latency percentiles at batch 1, throughput at a batch
size on real dynamic-length text, generation speed for LMs, memory, size, and quality
against the reference model on held-out data."""
from __future__ import annotations

import resource
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from tqdm.auto import tqdm

from ..core.backend import Batch, Runner, ScoringRunner
from ..core.bounds import check_at_least, check_max_drop
from ..core.errors import UserError
from ..core.handle import ModelHandle
from ..core.hardware import hardware_profile, package_versions
from ..data import model_label2id, texts_for
from ..models import load
from ..tasks import count_tokens, get_task, quality_drop, tokenize
from ..tasks import eval_batch as eval_batch_of
from ..tasks.causal_lm import GEN_PROMPT
from ..tasks.metrics import Metric, check_labelled, metric_value, resolve_metric, with_metric
from .sizing import PROBE_TEXTS, size_search

# Below this many held-out texts, quality (a mean over texts) and throughput are too
# noisy to trust: a report says so rather than printing them as if they were solid.
MIN_EVAL_TEXTS = 50

# The evaluation sample and the batch-1 latency samples when the caller does not choose
# (n_eval=None, latency_runs=None) are the task's: `Task.default_n_eval`, `latency_runs`.
LATENCY_WARMUP = 3  # untimed batch-1 calls before the timed ones


def _bar(progress: bool, desc: str, total: int, unit: str) -> tqdm:
    """One phase's progress bar on stderr (a no-op bar when progress is off)."""
    return tqdm(total=total, desc=desc, disable=not progress, unit=unit, leave=False)


class _Counted:
    """Wraps a runner to tick a progress bar once per batch (its `score`, when it has one,
    too: a causal LM's perplexity is scored in the engine)."""

    def __init__(self, runner: Runner, bar: tqdm):
        self.runner, self.bar = runner, bar
        if isinstance(runner, ScoringRunner):
            self.score = self._score

    def __call__(self, batch: Batch) -> np.ndarray:
        out = self.runner(batch)
        self.bar.update(len(next(iter(batch.values()))))
        return out

    def _score(self, batch: Batch) -> Any:
        out = self.runner.score(batch)  # type: ignore[attr-defined]
        self.bar.update(len(next(iter(batch.values()))))
        return out


class MeasurementCut(RuntimeError):
    """A measurement given up after its first batch: at that pace it would not finish within
    the time it was given (`measure(max_s=...)`)."""


class _Deadline:
    """Wraps a runner for the eval phase and times its first batch (`first_s`). With
    `max_s`: after that batch, extrapolate the whole measurement and give up if it cannot
    end within `max_s` of `t_start`. Texts run longest first, so the first batch is the
    slowest: `worth`, the whole measurement in first batches as the baseline measured it,
    scales it right; without it, every batch and latency run counts as the first's pace."""

    def __init__(self, runner: Any, t_start: float, max_s: float | None, n_texts: int,
                 latency_runs: int, worth: float | None):
        self.runner, self.t_start, self.max_s, self.worth = runner, t_start, max_s, worth
        self.n_texts, self.latency_runs = n_texts, latency_runs
        self.first_s: float | None = None
        if isinstance(runner, ScoringRunner):
            self.score = self._score

    def _check(self, n: int, t0: float) -> None:
        if self.first_s is not None:
            return
        self.first_s = time.perf_counter() - t0
        if self.max_s is None or n >= self.n_texts:
            return
        spent = time.perf_counter() - self.t_start
        rest = self.first_s * (self.worth - 1) if self.worth \
            else self.first_s / n * (self.n_texts - n + self.latency_runs)
        if spent + rest > self.max_s:
            raise MeasurementCut(
                f"measurement cut after its first batch ({self.first_s:.1f}s): at that pace "
                f"it would take ~{spent + rest:.0f}s, and {max(self.max_s, 0):.0f}s were left "
                "for it")

    def __call__(self, batch: Batch) -> Any:
        t0 = time.perf_counter()
        out = self.runner(batch)
        self._check(len(next(iter(batch.values()))), t0)
        return out

    def _score(self, batch: Batch) -> Any:
        t0 = time.perf_counter()
        out = self.runner.score(batch)
        self._check(len(next(iter(batch.values()))), t0)
        return out


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "n": len(ms)}


def latency_batch1(handle: ModelHandle, runner: Runner, texts: Sequence[str], n: int,
                   warmup: int = LATENCY_WARMUP, bar: tqdm | None = None) -> dict[str, float]:
    """One request at a time, tokenization included (what a caller waits for); `bar`
    ticks once per request."""
    if not texts:
        raise UserError("no texts to measure latency on")
    picks = [texts[i % len(texts)] for i in range(n + warmup)]
    samples = []
    for i, text in enumerate(picks):
        t0 = time.perf_counter()
        runner(tokenize(handle.tokenizer, [text], handle.max_length))
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    return percentiles(samples)


def generation_speed(handle: ModelHandle, runner: Any, new_tokens: int = 32,
                     repeats: int = 3, bar: tqdm | None = None) -> dict[str, float]:
    """Greedy decoding at batch 1 after a short prompt: tokens/s of new tokens; `bar`
    ticks once per decode (a warm-up, then `repeats` timed ones)."""
    prompt = handle.tokenizer(GEN_PROMPT)["input_ids"]
    runner.generate(prompt, 4)  # warm-up
    if bar is not None:
        bar.update(1)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = runner.generate(prompt, new_tokens)
        times.append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    n = len(out)
    best = float(np.median(times))
    return {"tokens_per_s": n / best, "ms_per_token": best / max(n, 1) * 1e3,
            "new_tokens": n, "prompt_tokens": len(prompt), "repeats": repeats}


def reference_for(handle: ModelHandle) -> ModelHandle | None:
    """The model `handle` was made from, when it can be reloaded here."""
    src = handle.source
    if src.get("kind") != "artifact":
        if handle.transforms or handle.model is None and src.get("kind") in ("builtin", "hf",
                                                                              "gguf"):
            return reference_for(handle.derive(source={"kind": "artifact", "origin": src}))
        return None  # an original model is its own reference
    origin = src.get("origin", {})
    ref = origin.get("ref")
    if origin.get("kind") == "builtin":
        return load(ref)
    if origin.get("kind") in ("hf", "gguf") and ref and Path(ref).exists():
        ref_handle = load(ref, task=handle.task)
        if ref_handle.source.get("sha256") == origin.get("sha256"):
            return ref_handle
    return None


def measure(handle: ModelHandle, texts: Sequence[str], batch_size: int = 32,
            latency_runs: int = 50, gen_tokens: int = 32, progress: bool = True,
            max_s: float | None = None, worth: float | None = None
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Speed, memory and size of `handle` on `texts`, and the task results quality needs.
    Quality itself is a comparison, done by the caller against a reference's results.
    `latency_runs=0`: no batch-1 latency runs, and no "latency_ms" in the report.
    With `progress`, each phase (prepare, eval, latency runs, generation) shows a bar on
    stderr. With `max_s`, a measurement that its first eval batch shows cannot end within
    `max_s` seconds raises MeasurementCut (a candidate far slower than expected); `worth`:
    how many first eval batches the whole measurement took on a model measured before
    (`first_batches_worth` of its report), which makes that prediction exact in shape."""
    t_start = time.perf_counter()
    if not texts:
        raise UserError("the evaluation data is empty")
    task = get_task(handle.task)
    eval_batch = eval_batch_of(handle.task, batch_size)  # LMs: (B, T, 49k) logits, small
    what = f"bench {handle.name} [{handle.backend}]"
    with _bar(progress, f"{what} prepare + warm-up", 2, "step") as bar:
        t0 = time.perf_counter()
        runner = handle.runner()
        prepare_s = time.perf_counter() - t0
        bar.update(1)
        # warm-up: first calls allocate, compile, and fill caches (reported apart: warmup_s)
        t0 = time.perf_counter()
        runner(tokenize(handle.tokenizer, texts[:min(len(texts), eval_batch)],
                        handle.max_length))
        warmup_s = time.perf_counter() - t0
        bar.update(1)

    with _bar(progress, f"{what} eval", len(texts), "text") as bar:
        t0 = time.perf_counter()
        timed = _Deadline(_Counted(runner, bar), t_start, max_s, len(texts), latency_runs, worth)
        results = task.evaluate(timed, handle.tokenizer, texts, eval_batch, handle.max_length)
        elapsed = time.perf_counter() - t0
    n_tokens = count_tokens(handle.tokenizer, texts, handle.max_length)  # None for images
    report: dict[str, Any] = {
        "model": handle.name, "task": handle.task, "backend": handle.backend,
        "backend_options": handle.backend_options, "transforms": list(handle.transforms),
        "batch_size": eval_batch, "n_eval": len(texts), "max_length": handle.max_length,
        "prepare_s": prepare_s, "warmup_s": warmup_s,
        "throughput": {"items_per_s": len(texts) / elapsed, "batch_size": eval_batch,
                       "seconds": elapsed},
    }
    if n_tokens is not None:
        report["throughput"]["tokens_per_s"] = n_tokens / elapsed
    if latency_runs > 0:  # 0: none (a caller whose objective never reads them, LMs)
        with _bar(progress, f"{what} latency @ batch 1", latency_runs + LATENCY_WARMUP,
                  "run") as bar:
            report["latency_ms"] = latency_batch1(handle, runner, texts, latency_runs, bar=bar)
    if task.generates and hasattr(runner, "generate") and gen_tokens > 0:
        repeats = 3
        with _bar(progress, f"{what} generation ({gen_tokens} tokens, warm-up + {repeats})",
                  repeats + 1, "run") as bar:
            report["generation"] = generation_speed(handle, runner, gen_tokens, repeats, bar)
        report["generation"]["kv_cache"] = getattr(runner, "kv_cache", True)
    if timed.first_s:  # what a later measurement's first batch is judged by (max_s)
        report["throughput"]["first_batch_s"] = timed.first_s
    if hasattr(runner, "device"):  # torch backends: where it ran ('cpu' or 'cuda')
        report["device"] = runner.device
    if hasattr(runner, "warmup_s"):  # torch.compile: the calls that compiled
        report["compile_s"] = runner.warmup_s
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["rss_mb"] = psutil.Process().memory_info().rss / 2**20
    report["size_mb"] = handle.size_bytes() / 2**20
    report["params"] = handle.num_parameters()
    return report, results


def _on_backend(handle: ModelHandle, texts: Sequence[str], backend: str | None,
                threads: int | None, precision: str | None, batch_size: int,
                max_drop: float | None = None, device: str | None = None,
                progress: bool = False, extra: dict[str, Any] | None = None
                ) -> tuple[ModelHandle, dict[str, Any] | None]:
    """Move `handle` to the asked backend, or measure and choose one ('auto'); `extra`
    holds more options of the named backend."""
    from ..backends import to_backend
    from ..core.backend import backend_options, get_backend
    from .choose import choose_backend

    extra = extra or {}
    if extra and backend in (None, "auto"):
        raise UserError("backend options (--backend-opt) need a named backend: add "
                        "--backend NAME (see `react backends`)")
    if backend == "auto":
        sample = texts[:16] if get_task(handle.task).generates else texts[:64]  # a quick look
        return choose_backend(handle, sample, batch_size, threads=threads,
                              precision=precision, max_drop=max_drop, device=device,
                              progress=progress)
    if backend is None and threads is None and precision is None and device is None:
        return handle, None
    name = backend or handle.backend
    opts = {**(handle.backend_options if name == handle.backend else {}), **extra}
    if threads is not None:
        opts["threads"] = threads
    if device is not None:
        if "device" not in backend_options(get_backend(name)):
            raise UserError(f"backend {name!r} has no device option; torch and torch-compile "
                            "have one (onnxruntime chooses with its `provider` option)")
        opts["device"] = device
    if precision is not None:
        key = get_backend(name).precision_option
        if key is None:
            raise UserError(f"backend {name!r} has no precision option (int8 on torch is a "
                            "compress transform); use --backend onnxruntime or llama.cpp")
        opts[key] = precision
    return to_backend(handle, name, **opts), None


def check_bench_args(batch_size: int, n_eval: int | str | None, latency_runs: int | None,
                     gen_tokens: int, threads: int | None, max_drop: float | None) -> None:
    """Refuse impossible settings before loading anything (a batch of 0 would fail deep
    inside the runner, a negative bound only after every backend was measured)."""
    check_at_least("--batch-size", batch_size)
    if isinstance(n_eval, str):
        if n_eval != "all":
            raise UserError(f"--n-eval must be at least 1 or 'all', got {n_eval!r}")
    else:
        check_at_least("--n-eval", n_eval)
    check_at_least("--latency-runs", latency_runs)
    check_at_least("gen_tokens", gen_tokens, 0)
    check_at_least("--threads", threads)
    check_max_drop(max_drop)


def small_sample_warning(n: int) -> str | None:
    """One line for a report whose figures come from too few texts to trust."""
    if n >= MIN_EVAL_TEXTS:
        return None
    return (f"only {n} eval text{'s' if n != 1 else ''}: quality and throughput figures are "
            f"noisy below {MIN_EVAL_TEXTS}; give more data (--data) or a larger --n-eval")


def _eval_sample(task: str, data: str | None, n_eval: int | str | None,
                 eval_texts: Sequence[str] | None, preprocess: Any = None,
                 label2id: dict[str, int] | None = None) -> tuple[list[str], dict[str, Any]]:
    """The texts to evaluate on, and what the report says about the choice."""
    if eval_texts is not None:  # the caller's own list, used whole
        texts = list(eval_texts)
        return texts, {"n_eval_available": len(texts), "n_eval_default": False}
    # images: the model's preprocess; texts' label names: the model's class names
    available = texts_for("eval", data, preprocess=preprocess, label2id=label2id)
    limit = (get_task(task).default_n_eval if n_eval is None
             else None if n_eval == "all" else int(n_eval))
    texts = available[:limit]
    return texts, {"n_eval_available": len(available),
                   "n_eval_default": n_eval is None and len(texts) < len(available)}


def bench(model: Any, batch_size: int = 32, data: str | None = None,
          n_eval: int | str | None = None, latency_runs: int | None = None,
          reference: Any = None, gen_tokens: int = 32, progress: bool = True,
          eval_texts: Sequence[str] | None = None, backend: str | None = None,
          threads: int | None = None, precision: str | None = None,
          max_drop: float | None = None, device: str | None = None,
          backend_options: dict[str, Any] | None = None,
          time_budget_s: float | None = None, metric: Any = None) -> dict[str, Any]:
    """Measure `model` (anything `load` takes). Quality is judged against `reference`,
    by default the model an artifact was made from, or the model itself.

    Evaluation texts: the held-out part of `data` (or of the built-in corpus); `n_eval`
    takes the first N of them, or "all"; by default (None) every one for encoders and
    classifiers, and the first `Task.default_n_eval` (64) for causal LMs, whose
    evaluation costs a full-vocabulary forward per text. `eval_texts` gives the texts
    directly instead. The report records `n_eval` (texts used), `n_eval_available` and
    `n_eval_default` (whether the default sample cut the set short).
    `latency_runs`: timed batch-1 requests (default 50; 20 for causal LMs).
    `gen_tokens`: new tokens per timed greedy decode for causal LMs (0 skips generation).
    `progress`: a bar on stderr for each phase (choosing a backend, prepare, eval, latency
    runs, generation, the reference's eval).

    `backend` runs it on that backend first (`to_backend`), or with 'auto' measures the
    available backends and precisions on a sample and picks the fastest within the quality
    bound (`max_drop`, default per task; the report's `backend_selection` holds every
    measurement and the reason); `threads`, `precision` and `device` (torch backends: auto,
    cpu, cuda) are the backend's options, and `backend_options` any others of the named
    backend (e.g. openvino's hint or fp32_layers; `react backends` lists them).

    `time_budget_s`: evaluate as many texts (of `n_eval`, by default all held-out ones) and
    latency runs as fit in about that many seconds, predicted from a probe on a few texts
    (the report's `time_budget`); generation-speed runs come on top. Every quality figure
    comes with its 95% confidence interval (`quality["ci95"]`).

    `metric`: the user's metric too ("accuracy", "f1" on labelled data, or a
    callable(outputs, items) -> float; tasks/metrics.py): the report's `metric` holds the
    model's value, and `quality["metric"]` the reference's value and the relative drop."""
    check_bench_args(batch_size, n_eval, latency_runs, gen_tokens, threads, max_drop)
    if time_budget_s is not None and not time_budget_s > 0:
        raise UserError(f"--time-budget-s must be positive, got {time_budget_s}")
    t_start = time.perf_counter()
    original = load(model)
    if time_budget_s is not None and n_eval is None:
        n_eval = "all"  # the budget sizes the sample
    mine, texts, sample = _bench_sample(original, data, n_eval, eval_texts, metric)
    if latency_runs is None:
        latency_runs = get_task(original.task).latency_runs
    handle, selection = _on_backend(original, texts, backend, threads, precision, batch_size,
                                    max_drop, device, progress, backend_options or {})
    sizing = None
    if time_budget_s is not None:
        with_ref = reference is not None or handle is not original or bool(handle.transforms) \
            or handle.source.get("kind") == "artifact"
        texts, latency_runs, sizing = fit_to_budget(
            handle, texts, batch_size, latency_runs,
            time_budget_s - (time.perf_counter() - t_start), 2.0 if with_ref else 1.0)
        sizing["budget_s"] = time_budget_s
    report, results = measure(handle, texts, batch_size, latency_runs, gen_tokens, progress)
    report.update(sample)
    if mine is not None:
        primary = get_task(original.task).primary_output
        report["metric"] = {"name": mine.name,
                            "value": metric_value(mine, primary, results, texts)}
    _note_choices(report, sizing, selection, len(texts))
    ref_handle = _reference_handle(original, handle, reference)
    report.update(_reference_quality(handle, ref_handle, results, texts, report["batch_size"],
                                     mine, progress))
    report["hardware"] = hardware_profile().to_dict()
    report["versions"] = package_versions()
    if sizing is not None:
        sizing["seconds"] = time.perf_counter() - t_start
    return report


def _bench_sample(original: ModelHandle, data: str | None, n_eval: int | str | None,
                  eval_texts: Sequence[str] | None, metric: Any
                  ) -> tuple[Metric | None, list[Any], dict[str, Any]]:
    """bench's first stage: the user's metric, and the items to evaluate on (checked to
    carry labels when the metric needs them)."""
    mine = resolve_metric(metric, original.task)
    texts, sample = _eval_sample(original.task, data, n_eval, eval_texts, original.tokenizer,
                                 model_label2id(original.model))
    if not texts:
        raise UserError("the evaluation data is empty")
    check_labelled(mine, texts, data)
    return mine, texts, sample


def _note_choices(report: dict[str, Any], sizing: dict[str, Any] | None,
                  selection: dict[str, Any] | None, n: int) -> None:
    """What the report says about how the budget, the backend and the sample were chosen."""
    if sizing is not None:
        report["time_budget"] = sizing
    if selection is not None:
        report["backend_selection"] = selection
    warning = small_sample_warning(n)
    if warning:
        report["eval_warning"] = warning


def _reference_handle(original: ModelHandle, handle: ModelHandle, reference: Any
                      ) -> ModelHandle | None:
    """What quality is judged against: the caller's reference, the model before this bench
    converted it, or the model an artifact was made from (None: the model itself)."""
    if reference is not None:
        return load(reference)
    if handle is not original and original.model is not None:  # converted here
        return reference_for(original) or original  # the model before conversion
    return reference_for(handle)


def _reference_quality(handle: ModelHandle, ref_handle: ModelHandle | None,
                       results: dict[str, Any], texts: Sequence[Any], batch_size: int,
                       mine: Metric | None, progress: bool) -> dict[str, Any]:
    """The report's quality entries: the reference's outputs on the same items, compared."""
    if ref_handle is None and handle.source.get("kind") == "artifact":
        return {"quality": None,
                "quality_note": "the source model could not be reloaded here; no reference"}
    task = get_task(handle.task)
    if ref_handle is None:
        ref_results, ref_name = results, f"{handle.name} (itself)"
    else:
        with _bar(progress, f"reference {ref_handle.name} [{ref_handle.backend}] eval",
                  len(texts), "text") as bar:
            ref_results = task.evaluate(_Counted(ref_handle.runner(), bar),
                                        ref_handle.tokenizer, texts, batch_size,
                                        ref_handle.max_length)
        ref_name = ref_handle.name
    quality = with_metric(task.compare(ref_results, results), mine, task.primary_output,
                          ref_results, results, texts)
    return {"quality": quality, "quality_drop": quality_drop(handle.task, quality),
            "reference": ref_name}


def fit_to_budget(handle: ModelHandle, texts: Sequence[str], batch_size: int,
                  latency_runs: int, room_s: float, text_cost: float = 1.0
                  ) -> tuple[list[str], int, dict[str, Any]]:
    """The first texts and the latency runs that measuring `handle` fits in `room_s`,
    predicted from a probe on PROBE_TEXTS texts (`sizing.size_search`), and a record of it."""
    t0 = time.perf_counter()
    probe, _ = measure(handle, texts[:PROBE_TEXTS], batch_size, 1, gen_tokens=0,
                       progress=False)
    probe_s = time.perf_counter() - t0
    n, runs = size_search(probe, len(texts), latency_runs, room_s - probe_s, text_cost)
    return list(texts[:n]), runs, {"room_s": room_s, "probe_s": probe_s, "n_texts": n,
                                   "n_texts_asked": len(texts), "latency_runs": runs}
