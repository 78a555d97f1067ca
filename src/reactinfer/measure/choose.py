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

from ..core.backend import EngineConfig, GenerativeRunner, backend_options, list_backends
from ..core.bounds import check_max_drop
from ..core.errors import UserError
from ..core.hardware import NATIVE_HALF

if TYPE_CHECKING:
    from ..core.handle import ModelHandle


def auto_grid(task: str, isa: dict[str, bool], include: Sequence[str] = ()
              ) -> tuple[list[EngineConfig], list[dict[str, Any]]]:
    """The engine configurations declared for `task` (Backend.engine_configs) that this
    installation and a CPU with `isa` run, the reference (torch) first, and the ones
    skipped with why: an engine not installed, a half precision the CPU lacks natively, a
    slow one not in `include`, a backend that declares none for the task."""
    out: list[EngineConfig] = []
    skipped: list[dict[str, Any]] = []
    backends = list_backends()
    order = ["torch"] + [n for n in backends if n != "torch"]  # the reference first
    for name in order:
        backend = backends[name]
        if not backend.available():
            skipped.append({"backend": name, "why": backend.why_unavailable()})
            continue
        configs = [c for c in backend.engine_configs() if task in c.tasks]
        if not configs and task in backend.not_for:
            skipped.append({"backend": name, "why": backend.not_for[task]})
        for c in configs:
            missing = c.missing_native(isa)
            if missing:
                skipped.append({"backend": name, "options": dict(c.options),
                                "why": f"the CPU has no native {missing} "
                                       f"({' or '.join(NATIVE_HALF[missing])})"})
            elif c.slow and name not in include:
                skipped.append({"backend": name, "options": dict(c.options), "why": c.slow})
            else:
                out.append(c)
    return out, skipped


def candidate_grid(handle: ModelHandle, precision: str | None = None,
                   include: Sequence[str] = ()) -> tuple[list[tuple[str, dict]], list[dict]]:
    """(backend, options) pairs worth measuring here, and the ones skipped with why."""
    from ..backends.llamacpp import unchanged_gguf
    from ..core.hardware import hardware_profile

    if handle.model is None:  # a runtime-only model (an .onnx file): nothing to convert
        return [(handle.backend, dict(handle.backend_options))], []
    configs, skipped = auto_grid(handle.task, hardware_profile().isa, include)
    backends = list_backends()
    out: list[tuple[str, dict]] = []
    for c in configs:
        backend = backends[c.backend]
        if not backend.supports(handle):
            continue
        key = backend.precision_option
        if precision is not None and (key is None or c.options.get(key) != precision):
            if c.backend != "torch":  # the reference stays: it is what quality is judged by
                continue
        if c.options.get("outtype") == "source" and unchanged_gguf(handle) is None:
            continue
        out.append((c.backend, dict(c.options)))
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
