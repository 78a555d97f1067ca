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

from ..core.backend import Batch, Runner
from ..core.bounds import check_at_least, check_max_drop
from ..core.errors import UserError
from ..core.handle import ModelHandle
from ..core.hardware import hardware_profile, package_versions
from ..data import texts_for
from ..models import load
from ..tasks import get_task, tokenize
from ..tasks.causal_lm import GEN_PROMPT

# Below this many held-out texts, quality (a mean over texts) and throughput are too
# noisy to trust: a report says so rather than printing them as if they were solid.
MIN_EVAL_TEXTS = 50


class _Counted:
    """Wraps a runner to tick a progress bar once per batch."""

    def __init__(self, runner: Runner, bar: tqdm):
        self.runner, self.bar = runner, bar

    def __call__(self, batch: Batch) -> np.ndarray:
        out = self.runner(batch)
        self.bar.update(len(next(iter(batch.values()))))
        return out


def percentiles(samples_s: Sequence[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
            "p99": float(np.percentile(ms, 99)), "mean": float(ms.mean()), "n": len(ms)}


def latency_batch1(handle: ModelHandle, runner: Runner, texts: Sequence[str], n: int,
                   warmup: int = 3) -> dict[str, float]:
    """One request at a time, tokenization included (what a caller waits for)."""
    if not texts:
        raise UserError("no texts to measure latency on")
    picks = [texts[i % len(texts)] for i in range(n + warmup)]
    samples = []
    for i, text in enumerate(picks):
        t0 = time.perf_counter()
        runner(tokenize(handle.tokenizer, [text], handle.max_length))
        if i >= warmup:
            samples.append(time.perf_counter() - t0)
    return percentiles(samples)


def generation_speed(handle: ModelHandle, runner: Any, new_tokens: int = 32,
                     repeats: int = 3) -> dict[str, float]:
    """Greedy decoding at batch 1 after a short prompt: tokens/s of new tokens."""
    prompt = handle.tokenizer(GEN_PROMPT)["input_ids"]
    runner.generate(prompt, 4)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = runner.generate(prompt, new_tokens)
        times.append(time.perf_counter() - t0)
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
            latency_runs: int = 50, gen_tokens: int = 32, progress: bool = True
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Speed, memory and size of `handle` on `texts`, and the task results quality needs.
    Quality itself is a comparison, done by the caller against a reference's results."""
    if not texts:
        raise UserError("the evaluation data is empty")
    task = get_task(handle.task)
    # full-vocabulary LM logits are large (B, T, 49k): keep LM batches small
    eval_batch = min(batch_size, 8) if handle.task == "causal-lm" else batch_size
    t0 = time.perf_counter()
    runner = handle.runner()
    prepare_s = time.perf_counter() - t0
    # warm-up: first calls allocate, compile, and fill caches (reported apart: warmup_s)
    t0 = time.perf_counter()
    runner(tokenize(handle.tokenizer, texts[:min(len(texts), eval_batch)], handle.max_length))
    warmup_s = time.perf_counter() - t0

    with tqdm(total=len(texts), desc=f"bench {handle.name} [{handle.backend}]",
              disable=not progress, unit="text", leave=False) as bar:
        t0 = time.perf_counter()
        results = task.evaluate(_Counted(runner, bar), handle.tokenizer, texts, eval_batch,
                                handle.max_length)
        elapsed = time.perf_counter() - t0
    n_tokens = sum(int(np.sum(tokenize(handle.tokenizer, texts[i:i + 256],
                                       handle.max_length)["attention_mask"]))
                   for i in range(0, len(texts), 256))
    report: dict[str, Any] = {
        "model": handle.name, "task": handle.task, "backend": handle.backend,
        "backend_options": handle.backend_options, "transforms": list(handle.transforms),
        "batch_size": eval_batch, "n_eval": len(texts), "max_length": handle.max_length,
        "prepare_s": prepare_s, "warmup_s": warmup_s,
        "latency_ms": latency_batch1(handle, runner, texts, latency_runs),
        "throughput": {"items_per_s": len(texts) / elapsed, "tokens_per_s": n_tokens / elapsed,
                       "batch_size": eval_batch, "seconds": elapsed},
    }
    if handle.task == "causal-lm" and hasattr(runner, "generate") and gen_tokens > 0:
        report["generation"] = generation_speed(handle, runner, gen_tokens)
        report["generation"]["kv_cache"] = getattr(runner, "kv_cache", True)
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
                max_drop: float | None = None, device: str | None = None
                ) -> tuple[ModelHandle, dict[str, Any] | None]:
    """Move `handle` to the asked backend, or measure and choose one ('auto')."""
    from ..backends import to_backend
    from ..core.backend import backend_options, get_backend
    from .choose import choose_backend

    if backend == "auto":
        sample = texts[:16] if handle.task == "causal-lm" else texts[:64]  # a quick look
        return choose_backend(handle, sample, batch_size, threads=threads,
                              precision=precision, max_drop=max_drop, device=device)
    if backend is None and threads is None and precision is None and device is None:
        return handle, None
    name = backend or handle.backend
    opts = dict(handle.backend_options) if name == handle.backend else {}
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


def check_bench_args(batch_size: int, n_eval: int | None, latency_runs: int,
                     gen_tokens: int, threads: int | None, max_drop: float | None) -> None:
    """Refuse impossible settings before loading anything (a batch of 0 would fail deep
    inside the runner, a negative bound only after every backend was measured)."""
    check_at_least("--batch-size", batch_size)
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


def bench(model: Any, batch_size: int = 32, data: str | None = None, n_eval: int | None = None,
          latency_runs: int = 50, reference: Any = None, gen_tokens: int = 32,
          progress: bool = True, eval_texts: Sequence[str] | None = None,
          backend: str | None = None, threads: int | None = None,
          precision: str | None = None, max_drop: float | None = None,
          device: str | None = None) -> dict[str, Any]:
    """Measure `model` (anything `load` takes). Quality is judged against `reference`,
    by default the model an artifact was made from, or the model itself.

    `backend` runs it on that backend first (`to_backend`), or with 'auto' measures the
    available backends and precisions on a sample and picks the fastest within the quality
    bound (`max_drop`, default per task; the report's `backend_selection` holds every
    measurement and the reason); `threads`, `precision` and `device` (torch backends: auto,
    cpu, cuda) are the backend's options."""
    check_bench_args(batch_size, n_eval, latency_runs, gen_tokens, threads, max_drop)
    original = load(model)
    task = get_task(original.task)
    texts = list(eval_texts) if eval_texts is not None else texts_for("eval", data, n_eval)
    if not texts:
        raise UserError("the evaluation data is empty")
    handle, selection = _on_backend(original, texts, backend, threads, precision, batch_size,
                                    max_drop, device)
    report, results = measure(handle, texts, batch_size, latency_runs, gen_tokens, progress)
    if selection is not None:
        report["backend_selection"] = selection
    warning = small_sample_warning(len(texts))
    if warning:
        report["eval_warning"] = warning

    ref_handle: ModelHandle | None
    if reference is not None:
        ref_handle = load(reference)
    elif handle is not original and original.model is not None:  # converted here
        ref_handle = reference_for(original) or original  # the model before conversion
    else:
        ref_handle = reference_for(handle)
    if ref_handle is None and handle.source.get("kind") == "artifact":
        report["quality"] = None
        report["quality_note"] = "the source model could not be reloaded here; no reference"
    else:
        if ref_handle is None:
            ref_results, ref_name = results, f"{handle.name} (itself)"
        else:
            ref_results = task.evaluate(ref_handle.runner(), ref_handle.tokenizer, texts,
                                        report["batch_size"], ref_handle.max_length)
            ref_name = ref_handle.name
        quality = task.compare(ref_results, results)
        report["quality"] = quality
        report["quality_drop"] = task.drop(quality)
        report["reference"] = ref_name
    report["hardware"] = hardware_profile().to_dict()
    report["versions"] = package_versions()
    return report
