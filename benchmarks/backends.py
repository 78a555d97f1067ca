"""Backends side by side, in one process, on this machine.

minilm:  sentence-transformers' own encode (torch) and its ONNX backend, vs each ReAct
         backend / precision: throughput at batch 32 on real dynamic-length eval text,
         latency at batch 1, quality vs the original; plus padding (pad-to-max vs dynamic
         vs length-bucketed) and a thread sweep.
smollm2: Hugging Face generate (fp32) vs llama.cpp on the packaged GGUF vs ReAct's best
         path (chosen by `choose_backend`): tokens/s at batch 1 for 64 new tokens after a
         short prompt, the cost of not reusing the KV cache, and perplexity on a slice of
         the eval corpus.

    PYTHONPATH=src python benchmarks/backends.py [--quick]

Writes benchmarks/results/backends.json and backends.md. Timings on a shared machine are
noisy: compare the ratios measured here, side by side, not absolute figures across runs.
"""
from __future__ import annotations

import argparse
import time
import traceback
from typing import Any

import numpy as np
from _common import RESULTS as OUT
from _common import hardware, timed, write_results

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.data import texts_for
from reactinfer.models.zoo import BUILTINS
from reactinfer.tasks import get_task, tokenize

# reactinfer.measure imports torch: it is imported where it is used, so --help stays fast


# -- minilm -----------------------------------------------------------------------------
def st_rows(texts, ref, n_lat):
    """sentence-transformers itself, torch encode and backend='onnx' (exported locally), each
    in a subprocess of its own environment (anchor_st.py; ONNX needs `make anchor-env`)."""
    from anchor_st import run_st_anchor

    rows = []
    for backend in ("torch", "onnx"):
        res = run_st_anchor(backend, texts, str(BUILTINS["minilm"].path()), latency_runs=n_lat)
        if "error" not in res:
            res["quality"] = get_task("embedding").compare({"embeddings": ref},
                                                           {"embeddings": res.pop("embeddings")})
        rows.append({"name": res.pop("engine"), **res})
    return rows


def react_row(label, handle, texts, ref, n_lat, convert_s=None):
    from reactinfer.measure.harness import latency_batch1

    task = get_task("embedding")
    runner, prep = timed(handle.runner)
    _, warm = timed(runner, tokenize(handle.tokenizer, texts[:32], handle.max_length))
    res, secs = timed(task.evaluate, runner, handle.tokenizer, texts, 32, handle.max_length)
    secs = min(secs, timed(task.evaluate, runner, handle.tokenizer, texts, 32,
                           handle.max_length)[1])  # best of 2: the machine is shared
    row = {"name": label, "backend": handle.backend, "options": handle.backend_options,
           "items_per_s": len(texts) / secs,
           "latency_ms": latency_batch1(handle, runner, texts, n_lat),
           "quality": task.compare({"embeddings": ref}, res),
           "size_mb": handle.size_bytes() / 2**20, "prepare_s": prep, "warmup_s": warm}
    if convert_s is not None:
        row["convert_s"] = convert_s
    if hasattr(runner, "warmup_s"):
        row["compile_s"] = runner.warmup_s
    return row


def padding_rows(handle, texts, label):
    """Same runner, three ways to batch: pad every batch to max_length, pad to the longest
    text in each batch (input order), and sort by length first (bucketing)."""
    runner = handle.runner()
    tok, ml = handle.tokenizer, handle.max_length
    out = []
    for mode in ("pad-to-max", "dynamic", "bucketed"):
        order = np.argsort([len(t) for t in texts])[::-1] if mode == "bucketed" \
            else np.arange(len(texts))
        t0, n_tok = time.perf_counter(), 0
        for i in range(0, len(texts), 32):
            chunk = [texts[j] for j in order[i:i + 32]]
            if mode == "pad-to-max":
                enc = tok(chunk, padding="max_length", truncation=True, max_length=ml,
                          return_tensors="np")
                batch = {k: np.asarray(v, np.int64) for k, v in enc.items()}
            else:
                batch = tokenize(tok, chunk, ml)
            n_tok += batch["input_ids"].size
            runner(batch)
        secs = time.perf_counter() - t0
        out.append({"backend": label, "mode": mode, "items_per_s": len(texts) / secs,
                    "padded_tokens": int(n_tok)})
    return out


def bench_minilm(n_texts, n_lat, with_compile):
    from reactinfer.measure import choose_backend, tune_threads

    texts = texts_for("eval", limit=n_texts)
    base = ri.load("minilm")
    ref = get_task("embedding").evaluate(base.runner(), base.tokenizer, texts, 32,
                                         base.max_length)["embeddings"]
    rows = st_rows(texts, ref, n_lat)
    configs = [("ReAct torch eager", "torch", {})]
    if with_compile:
        configs.append(("ReAct torch.compile", "torch-compile", {}))
    configs += [(f"ReAct onnxruntime {p}", "onnxruntime", {"precision": p})
                for p in ("fp32", "int8-dynamic", "int8-static", "fp16")]
    converted = {}
    for label, name, opts in configs:
        try:
            h, conv_s = timed(to_backend, base, name, **opts)
            rows.append(react_row(label, h, texts, ref, n_lat, conv_s))
            converted[label] = h
        except Exception as e:  # noqa: BLE001
            rows.append({"name": label, "error": f"{type(e).__name__}: {e}"[:400],
                         "trace": traceback.format_exc()[-800:]})
    pad = padding_rows(base, texts, "torch")
    if "ReAct onnxruntime fp32" in converted:
        pad += padding_rows(converted["ReAct onnxruntime fp32"], texts, "onnxruntime fp32")
    threads = tune_threads(converted.get("ReAct onnxruntime fp32", base), texts[:64])
    auto_h, decision = choose_backend(base, texts[:64], 32)
    return {"n_texts": len(texts), "rows": rows, "padding": pad, "threads": threads,
            "auto": decision}


# -- smollm2 ----------------------------------------------------------------------------
def gen_speed(runner: Any, prompt: list[int], n: int, repeats: int = 3, **kw: Any
              ) -> dict[str, Any]:
    """Best of `repeats` (the machine is shared: the fastest run is the least disturbed).
    Not harness.generation_speed (the median, from a handle): this one also times a raw
    llama-cpp-python model and passes `reuse_cache`."""
    runner.generate(prompt, 2, **kw)  # warm-up
    runs = [timed(runner.generate, prompt, n, **kw) for _ in range(repeats)]
    out, best = runs[-1][0], min(s for _, s in runs)
    return {"tokens_per_s": len(out) / best, "seconds": best, "new_tokens": len(out),
            "repeats": repeats}


class RawLlamaCpp:
    """llama-cpp-python used directly, as its users do (greedy, its own KV cache)."""

    def __init__(self, path):
        import os

        from llama_cpp import Llama

        n = os.cpu_count()
        self.llm = Llama(model_path=str(path), n_ctx=512, n_threads=n, n_threads_batch=n,
                         verbose=False)

    def generate(self, prompt, n):
        out = []
        for tok in self.llm.generate(prompt, top_k=1, top_p=1.0, temp=0.0, reset=True):
            out.append(tok)
            if len(out) == n:
                break
        return out


def bench_smollm2(n_new, n_ppl, ppl_len):
    from reactinfer.measure import choose_backend
    from reactinfer.measure.harness import GEN_PROMPT

    texts = texts_for("eval", limit=n_ppl)
    base, load_s = timed(ri.load, "smollm2")
    task = get_task("causal-lm")
    prompt = base.tokenizer(GEN_PROMPT)["input_ids"]

    def ppl(handle):
        return task.evaluate(handle.runner(), handle.tokenizer, texts, 4, ppl_len)

    ref = ppl(base)
    torch_ids = base.runner().generate(prompt, n_new)
    rows = [{"name": "Hugging Face generate (fp32 torch)", **gen_speed(base.runner(), prompt,
                                                                       n_new),
             "perplexity": task.perplexity(ref), "load_s": load_s}]
    raw = RawLlamaCpp(BUILTINS["smollm2"].path())
    rows.append({"name": "llama-cpp-python directly, packaged GGUF (Q4_1)",
                 **gen_speed(raw, prompt, n_new)})
    del raw
    packaged = to_backend(base, "llama.cpp", outtype="source")
    lc = packaged.runner()
    ids = lc.generate(prompt, n_new)
    q = task.compare(ref, ppl(packaged))
    rows.append({"name": "ReAct llama.cpp runner, packaged GGUF (Q4_1)",
                 **gen_speed(lc, prompt, n_new),
                 "perplexity": q["perplexity"], "perplexity_ratio": q["perplexity_ratio"],
                 "token_agreement": q["token_agreement"],
                 "same_greedy_tokens_as_torch": int(np.sum(np.array(ids) ==
                                                           np.array(torch_ids)))})
    rows.append({"name": "ReAct llama.cpp runner, packaged GGUF, KV cache NOT reused",
                 **gen_speed(lc, prompt, n_new, repeats=1, reuse_cache=False)})
    for outtype in ("f16", "q8_0", "q4_0"):
        h, conv_s = timed(to_backend, base, "llama.cpp", outtype=outtype)
        q = task.compare(ref, ppl(h))
        rows.append({"name": f"ReAct GGUF conversion {outtype} on llama.cpp", "convert_s": conv_s,
                     "size_mb": h.size_bytes() / 2**20, **gen_speed(h.runner(), prompt, n_new),
                     "perplexity": q["perplexity"], "perplexity_ratio": q["perplexity_ratio"],
                     "token_agreement": q["token_agreement"]})
    best, decision = choose_backend(base, texts[:8], 4, gen_tokens=16)
    rows.append({"name": f"ReAct best path, bound 1% ppl (auto: {best.backend} "
                         f"{best.backend_options.get('outtype')})",
                 **gen_speed(best.runner(), prompt, n_new)})
    loose, loose_decision = choose_backend(base, texts[:8], 4, gen_tokens=16, max_drop=0.1)
    rows.append({"name": f"ReAct best path, bound 10% ppl (auto: {loose.backend} "
                         f"{loose.backend_options.get('outtype')})",
                 **gen_speed(loose.runner(), prompt, n_new)})
    return {"n_new_tokens": n_new, "prompt_tokens": len(prompt), "ppl_texts": len(texts),
            "ppl_max_length": ppl_len, "rows": rows, "auto": decision,
            "auto_loose": loose_decision}


# -- report -----------------------------------------------------------------------------
def markdown(res):
    lines = [f"# Backends benchmark\n\n{res['hardware_summary']}  \n"
             f"one process, {res['seconds']:.0f} s in all; timings vary between runs "
             "(2 cores): read the ratios within this run.\n",
             "## minilm (batch 32 throughput, batch 1 latency)\n",
             "| engine | items/s | × ST torch | p50 ms | p95 ms | mean cos | top-10 recall | "
             "size MiB | convert s | warm-up s |", "|---|---|---|---|---|---|---|---|---|---|"]
    m = res["minilm"]
    st = next((r["items_per_s"] for r in m["rows"] if "items_per_s" in r), None)
    for r in m["rows"]:
        if "error" in r:
            lines.append(f"| {r['name']} | error: {r['error'][:160]} | | | | | | | | |")
            continue
        q, lat = r["quality"], r["latency_ms"]
        warm = r.get("compile_s", r.get("warmup_s"))
        lines.append(f"| {r['name']} | {r['items_per_s']:.1f} | {r['items_per_s'] / st:.2f} | "
                     f"{lat['p50']:.1f} | {lat['p95']:.1f} | {q['mean_cosine']:.5f} | "
                     f"{q['top10_recall']:.3f} | {r.get('size_mb', float('nan')):.1f} | "
                     f"{r.get('convert_s', 0):.1f} | {warm if warm is None else round(warm, 2)} |")
    lines += ["\n### padding (same runner, batch 32)\n", "| backend | mode | items/s | "
              "padded tokens |", "|---|---|---|---|"]
    lines += [f"| {p['backend']} | {p['mode']} | {p['items_per_s']:.1f} | {p['padded_tokens']} |"
              for p in m["padding"]]
    lines += ["\n### threads (onnxruntime fp32)\n", m["threads"]["reason"], "",
              "| threads | items/s |", "|---|---|"]
    lines += [f"| {t['threads']} | {t['items_per_s']:.1f} |" for t in m["threads"]["measurements"]]
    lines += [f"\n### auto selection\n\n{m['auto']['reason']}\n"]
    s = res["smollm2"]
    lines += [f"## smollm2 ({s['n_new_tokens']} new tokens after a {s['prompt_tokens']}-token "
              f"prompt, batch 1; perplexity on {s['ppl_texts']} eval texts, ≤ "
              f"{s['ppl_max_length']} tokens)\n",
              "| engine | tokens/s | × HF generate | perplexity | ppl ratio | token agreement |",
              "|---|---|---|---|---|---|"]
    hf = s["rows"][0]["tokens_per_s"]
    for r in s["rows"]:
        f = (lambda k, fmt, r=r: format(r[k], fmt) if k in r else "")  # noqa: E731
        lines.append(f"| {r['name']} | {r['tokens_per_s']:.1f} | {r['tokens_per_s'] / hf:.2f} | "
                     f"{f('perplexity', '.3f')} | {f('perplexity_ratio', '.4f')} | "
                     f"{f('token_agreement', '.3f')} |")
    lines += [f"\n### auto selection\n\n- bound 1%: {s['auto']['reason']}\n"
              f"- bound 10%: {s['auto_loose']['reason']}\n"]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer texts, no torch.compile")
    ap.add_argument("--no-compile", action="store_true")
    a = ap.parse_args()
    t0 = time.perf_counter()
    res = hardware()
    res["minilm"] = bench_minilm(64 if a.quick else 128, 10 if a.quick else 20,
                                 with_compile=not (a.quick or a.no_compile))
    res["smollm2"] = bench_smollm2(16 if a.quick else 64, 4 if a.quick else 8,
                                   128 if a.quick else 256)
    res["seconds"] = time.perf_counter() - t0
    write_results(OUT / "backends", res, markdown(res))


if __name__ == "__main__":
    main()
