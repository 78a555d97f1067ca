"""Weight-only int8 / int4 on `smollm2` (SmolLM2-135M, fp32 de-quantized from its GGUF):
perplexity ratio and greedy-token agreement against fp32 on held-out eval texts, and
greedy generation speed (tokens/s at batch 1, KV cache on).

    PYTHONPATH=src python benchmarks/compress_smollm2.py [--n-eval 48] [--threads 1]

Writes benchmarks/results/compress_smollm2.json and .md.
"""
from __future__ import annotations

import argparse
import time
from typing import Any

from _common import RESULTS as OUT
from _common import hardware, table_head, write_results

from reactinfer import load
from reactinfer.data import texts_for
from reactinfer.tasks import get_task


def techniques() -> list[tuple[str, list[Any]]]:
    from reactinfer.compression import QuantizeDynamicInt8, QuantizeWeightOnly

    return [
        ("fp32", []),
        ("weight-only int8 per-channel", [QuantizeWeightOnly(bits=8, group_size=None)]),
        ("weight-only int8 g32", [QuantizeWeightOnly(bits=8, group_size=32)]),
        ("weight-only int4 g32", [QuantizeWeightOnly(bits=4, group_size=32)]),
        ("weight-only int4 g64", [QuantizeWeightOnly(bits=4, group_size=64)]),
        ("dynamic int8 per-channel", [QuantizeDynamicInt8(per_channel=True)]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-eval", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--new-tokens", type=int, default=24)
    ap.add_argument("--max-length", type=int, default=128)
    a = ap.parse_args()
    import torch  # here, not above: --help stays fast

    from reactinfer import compress
    from reactinfer.measure.harness import generation_speed

    torch.set_num_threads(a.threads)
    base = load("smollm2")
    base = base.derive(max_length=a.max_length)
    task = get_task("causal-lm")
    texts = texts_for("eval", limit=a.n_eval)
    rows, ref = [], None
    for name, recipe in techniques():
        h = compress(base, recipe)
        runner = h.runner()
        t0 = time.perf_counter()
        res = task.evaluate(runner, h.tokenizer, texts, 8, h.max_length)
        seconds = time.perf_counter() - t0
        ref = ref or res
        q = task.compare(ref, res)
        gen = generation_speed(h, runner, a.new_tokens, repeats=2)
        row = {"name": name, "recipe": [c.to_dict() for c in recipe],
               "size_mb": h.size_bytes() / 2**20, "perplexity": q["perplexity"],
               "perplexity_ratio": q["perplexity_ratio"],
               "token_agreement": q["token_agreement"],
               "eval_seconds": seconds, "gen_tokens_per_s": gen["tokens_per_s"]}
        rows.append(row)
        print(f"{name:<30} ppl {q['perplexity']:.3f} ratio {q['perplexity_ratio']:.4f} "
              f"agree {q['token_agreement']:.3f} gen {gen['tokens_per_s']:.1f} tok/s "
              f"size {row['size_mb']:.0f} MB", flush=True)
    report = {"model": "smollm2", "n_eval": len(texts), "threads": a.threads,
              "max_length": a.max_length, "new_tokens": a.new_tokens, "rows": rows,
              **hardware(),
              "command": f"PYTHONPATH=src python benchmarks/compress_smollm2.py --n-eval "
                         f"{a.n_eval} --threads {a.threads} --new-tokens {a.new_tokens} "
                         f"--max-length {a.max_length}"}
    hw = report["hardware"]
    lines = [f"# smollm2 weight-only quantization: measured, {len(texts)} eval texts "
             f"(max {a.max_length} tokens), {a.threads} thread(s)", "",
             f"Command: `{report['command']}`  ",
             f"CPU: {hw.get('cpu_model')}; torch {report['versions'].get('torch')}", "",
             *table_head("technique", "size MB (in memory)", "perplexity", "ppl ratio",
                         "greedy-token agreement", "generation tok/s", "speed vs fp32")]
    for r in rows:
        lines.append(f"| {r['name']} | {r['size_mb']:.0f} | {r['perplexity']:.3f} | "
                     f"{r['perplexity_ratio']:.4f} | {r['token_agreement']:.3f} | "
                     f"{r['gen_tokens_per_s']:.1f} | "
                     f"{r['gen_tokens_per_s'] / rows[0]['gen_tokens_per_s']:.2f}x |")
    write_results(OUT / "compress_smollm2", report, "\n".join(lines) + "\n", echo=False)


if __name__ == "__main__":
    main()
