"""Two follow-up checks to gpu.py, on CUDA (not a benchmark of record):

1. fp16 / bf16 batch-1 latency had a p95 near 70 ms against a p50 near 5 ms. Is it a
   one-time cost per new input shape? Batch-1 latency over the same 100 texts twice
   (pass 1 meets each length for the first time, pass 2 has seen them all), per dtype.
2. How fast is tokenization alone (length-sorted batches, as the end-to-end figures)?

    PYTHONPATH=src python benchmarks/gpu_probe.py [--minilm DIR] [--out DIR]

Writes gpu_probe.json to --out (default benchmarks/results); `gpu.py --render` adds it to
gpu.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import write_results
from gpu import OUT, halved, load_minilm

from reactinfer.backends import to_backend
from reactinfer.data import texts_for
from reactinfer.tasks import iter_batches, tokenize


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", help="HF directory of all-MiniLM-L6-v2 (fp16 is upcast)")
    ap.add_argument("--out", default=str(OUT))
    a = ap.parse_args()
    from reactinfer.measure.harness import latency_batch1  # imports torch: after --help

    base, _ = load_minilm(a.minilm)
    texts = texts_for("eval")
    out: dict = {"command": "PYTHONPATH=src python benchmarks/gpu_probe.py "
                            + " ".join(sys.argv[1:])}
    for dt in ("fp32", "fp16", "bf16"):
        h = to_backend(halved(base, dt), "torch", device="cuda")
        r = h.runner()
        for bs in (1, 32):
            r(tokenize(h.tokenizer, texts[:bs], h.max_length))
        p1 = latency_batch1(h, r, texts[:100], 100, warmup=0)
        p2 = latency_batch1(h, r, texts[:100], 100, warmup=0)
        lens = {int(tokenize(h.tokenizer, [t], 256)["input_ids"].shape[1]) for t in texts[:100]}
        out[dt] = {"pass1": p1, "pass2_same_texts": p2, "distinct_lengths": len(lens)}
        print(dt, json.dumps(out[dt]), flush=True)
    for bs in (32, 128):
        t0 = time.perf_counter()
        n = sum(len(i) for i, _ in iter_batches(base.tokenizer, texts, bs, 256))
        out[f"tokenize_only_items_per_s@{bs}"] = n / (time.perf_counter() - t0)
    write_results(Path(a.out) / "gpu_probe", out, indent=1)


if __name__ == "__main__":
    main()
