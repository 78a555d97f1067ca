"""Hardware selection: measure the backends and precisions available here on a sample of the
evaluation texts, and pick the fastest within a small bound on the quality against the
original (the planner's test, `tasks.within_bound`: for embeddings top-10 recall too).
Every candidate's measurement is returned, so a report can show what chose the winner.

Speed is throughput at the batch size for encoders and classifiers, and greedy
generation tokens/s at batch 1 for causal LMs (what a chat or completion user waits on).
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..core.backend import GenerativeRunner, backend_options, list_backends
from ..core.bounds import check_max_drop
from ..core.errors import UserError

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

# What each backend is tried with, per task (precision first, then other options).
_GRID: dict[str, dict[str, list[dict[str, Any]]]] = {
    "torch": {"*": [{}]},
    "onnxruntime": {"embedding": [{"precision": p} for p in
                                  ("fp32", "int8-dynamic", "int8-static", "fp16")],
                    "classification": [{"precision": p} for p in
                                       ("fp32", "int8-dynamic", "int8-static", "fp16")],
                    # int8 of convolutions is not there yet (its quantizer handles MatMul)
                    "image-classification": [{"precision": "fp32"}]},
    "openvino": {task: [{"precision": p} for p in ("fp32", "bf16", "int8")]
                 for task in ("embedding", "classification")},
    "llama.cpp": {"causal-lm": [{"outtype": t} for t in ("source", "f16", "q8_0", "q4_0")]},
    "torch-compile": {"*": [{}]},
}
# Skipped unless asked for, with the reason recorded in the decision.
_SLOW = {"torch-compile": ("compiling takes minutes on a small CPU; measure it "
                          "alone with `react bench MODEL --backend torch-compile` (Python: "
                          "choose_backend(..., include=['torch-compile']))"),
         "onnxruntime/causal-lm": "the exported graph has no KV cache, so generation "
                                  "recomputes the prompt every token"}


def candidate_grid(handle: ModelHandle, precision: str | None = None,
                   include: Sequence[str] = ()) -> tuple[list[tuple[str, dict]], list[dict]]:
    """(backend, options) pairs worth measuring here, and the ones skipped with why."""
    from ..backends.llamacpp import unchanged_gguf
    from ..core.hardware import hardware_profile, native_bf16
    from ..tasks import get_task

    if handle.model is None:  # a runtime-only model (an .onnx file): nothing to convert
        return [(handle.backend, dict(handle.backend_options))], []
    out: list[tuple[str, dict]] = []
    skipped: list[dict[str, Any]] = []
    backends = list_backends()
    order = ["torch"] + [n for n in backends if n != "torch"]  # the reference first
    for name in order:
        backend = backends[name]
        if not backend.available():
            skipped.append({"backend": name, "why": backend.why_unavailable()})
            continue
        if not backend.supports(handle):
            continue
        grid = _GRID.get(name, {})
        options = grid.get(handle.task, grid.get("*", []))
        slow = _SLOW.get(name) or _SLOW.get(f"{name}/{handle.task}")
        if slow and name not in include:
            skipped.append({"backend": name, "why": slow})
            continue
        if name == "onnxruntime" and get_task(handle.task).generates:
            options = [{"precision": "fp32"}]
        if name == "openvino" and not native_bf16(hardware_profile().isa):
            skipped.append({"backend": name, "options": {"precision": "bf16"},
                            "why": "the CPU has no native bf16 (AVX-512 BF16 or AMX)"})
            options = [o for o in options if o.get("precision") != "bf16"]
        for opts in options:
            key = backend.precision_option
            if precision is not None and (key is None or opts.get(key) != precision):
                if name != "torch":  # the reference stays: it is what quality is judged by
                    continue
            if opts.get("outtype") == "source" and unchanged_gguf(handle) is None:
                continue
            out.append((name, opts))
    if len(out) <= 1 and precision is not None:
        raise UserError(f"no backend here offers precision {precision!r}; see `react backends`")
    return out, skipped


def _measure(handle: ModelHandle, texts: Sequence[str], batch_size: int,
             gen_tokens: int) -> tuple[float, str, dict[str, Any], dict]:
    from ..tasks import get_task, tokenize
    from ..tasks.causal_lm import GEN_PROMPT

    task = get_task(handle.task)
    t0 = time.perf_counter()
    runner = handle.runner()
    runner(tokenize(handle.tokenizer, list(texts[:batch_size]), handle.max_length))  # warm-up
    facts: dict[str, Any] = {"prepare_s": time.perf_counter() - t0}
    # best of a few runs: on a shared machine the fastest run is the least disturbed one
    secs = []
    for _ in range(1 if task.generates else 2):
        t0 = time.perf_counter()
        results = task.evaluate(runner, handle.tokenizer, texts, batch_size, handle.max_length)
        secs.append(time.perf_counter() - t0)
    facts["eval_items_per_s"] = len(texts) / min(secs)
    if task.generates:
        prompt = handle.tokenizer(GEN_PROMPT)["input_ids"]
        generator = cast(GenerativeRunner, runner)  # causal-LM runners generate
        generator.generate(prompt, 2)
        secs = []
        for _ in range(3):
            t0 = time.perf_counter()
            n = len(generator.generate(prompt, gen_tokens))
            secs.append(time.perf_counter() - t0)
        facts["gen_tokens_per_s"] = n / min(secs)
        return facts["gen_tokens_per_s"], "generated tokens/s", facts, results
    return facts["eval_items_per_s"], f"items/s at batch {batch_size}", facts, results


def choose_backend(handle: ModelHandle, texts: Sequence[str], batch_size: int = 32,
                   threads: int | None = None, precision: str | None = None,
                   max_drop: float | None = None, include: Sequence[str] = (),
                   gen_tokens: int = 16, device: str | None = None, progress: bool = False
                   ) -> tuple[ModelHandle, dict[str, Any]]:
    """Measure each candidate on `texts` and return (the chosen handle, the decision).
    `threads` goes to every candidate, `device` to those with a device option (torch);
    `progress` shows a bar on stderr that ticks once per candidate."""
    from tqdm.auto import tqdm

    from ..backends.convert import to_backend
    from ..tasks import eval_batch, get_task, within_bound

    check_max_drop(max_drop)
    if not texts:
        raise UserError("backend selection needs some evaluation texts")
    task = get_task(handle.task)
    bound = task.default_max_drop if max_drop is None else max_drop
    batch_size = eval_batch(handle.task, batch_size)  # LMs: (B, T, V) logits are large
    grid, skipped = candidate_grid(handle, precision, include)
    ref_results = None
    rows: list[dict[str, Any]] = []
    best: tuple[float, ModelHandle | None, dict] = (-1.0, None, {})
    candidates = tqdm(grid, desc=f"choosing a backend for {handle.name}", unit="candidate",
                      disable=not progress, leave=False)
    for name, opts in candidates:
        candidates.set_postfix_str(f"{name} {opts}")  # the one being converted and measured
        opts = {**opts, **({"threads": threads} if threads is not None else {})}
        if device is not None and "device" in backend_options(list_backends()[name]):
            opts["device"] = device
        row: dict[str, Any] = {"backend": name, "options": opts}
        try:
            t0 = time.perf_counter()
            cand = to_backend(handle, name, **opts)
            row["convert_s"] = time.perf_counter() - t0
            score, unit, facts, results = _measure(cand, texts, batch_size, gen_tokens)
        except (UserError, RuntimeError, ValueError, OSError) as e:  # record, try the rest
            rows.append({**row, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        if ref_results is None:  # the first candidate is the handle's own backend
            ref_results, row["reference"] = results, True
        quality = task.compare(ref_results, results)
        ok, why = within_bound(handle.task, quality, bound)  # the planner's test, every criterion
        row.update(score=score, unit=unit, quality=quality, quality_drop=task.drop(quality),
                   eligible=ok, bound=why, **facts)
        rows.append(row)
        if row["eligible"] and score > best[0]:
            best = (score, cand, row)
        del cand
    score, chosen, row = best
    if chosen is None:
        raise UserError("no backend could run this model here; see the errors with "
                        "`react backends`")
    base = rows[0].get("score") or score
    faster_rejected = [f"{r['backend']} {r['options']} ({r['bound']})" for r in rows
                       if r.get("score", 0) > score and not r.get("eligible")]
    reason = (f"{row['backend']} {row['options']}: {score:.1f} {row['unit']}, "
              f"{score / base:.2f}x {rows[0]['backend']}, {row['bound']}")
    if faster_rejected:
        reason += f"; faster but over the bound: {', '.join(faster_rejected)}"
    decision = {"chosen": {"backend": row["backend"], "options": chosen.backend_options},
                "reason": reason, "max_drop": bound, "n_texts": len(texts),
                "candidates": rows, "skipped": skipped}
    return chosen, decision
