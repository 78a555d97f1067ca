"""Throughput of the image built-ins on torch eager vs ONNX Runtime fp32, side by side.

    PYTHONPATH=src python benchmarks/vision_backends.py [--rounds 5] [--threads 1]

Both runners are prepared in one process; rounds alternate (torch, onnxruntime, torch, ...)
so machine load hits both alike; the ratio is the median of per-round ratios. Quality of
the ONNX model against torch on the same batch is printed too.
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.data import texts_for
from reactinfer.tasks import tokenize
from reactinfer.tasks.image_classification import image_quality


def _timed(runner, batch) -> float:
    t0 = time.perf_counter()
    runner(batch)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", nargs="+", default=["resnet18-digits", "efficientnet-lite0"])
    a = ap.parse_args()
    for name in a.models:
        h = ri.load(name)
        items = texts_for("eval", preprocess=h.tokenizer)
        n = 64 if h.tokenizer.size <= 32 else 8
        batch = tokenize(h.tokenizer, items[:n], 0)
        torch_h = to_backend(h, "torch", threads=a.threads)
        ort_h = to_backend(h, "onnxruntime", precision="fp32", threads=a.threads)
        runners = {"torch": torch_h.runner(), "onnxruntime": ort_h.runner()}
        outs = {k: r(batch) for k, r in runners.items()}  # warm-up, and the outputs
        secs: dict[str, list[float]] = {k: [] for k in runners}
        for _ in range(a.rounds):
            for k, r in runners.items():
                secs[k].append(_timed(r, batch))
        ratio = float(np.median(np.asarray(secs["torch"]) / np.asarray(secs["onnxruntime"])))
        q = image_quality(outs["torch"], outs["onnxruntime"])
        print(f"{name}: batch {n}, {a.threads} thread(s), {a.rounds} alternating rounds: "
              f"torch {n / np.median(secs['torch']):.1f} images/s, onnxruntime fp32 "
              f"{n / np.median(secs['onnxruntime']):.1f} images/s, ratio x{ratio:.2f}; "
              f"top-1 agreement {q['top1_agreement']:.3f}, KL {q['kl_divergence']:.1e}")


if __name__ == "__main__":
    main()
