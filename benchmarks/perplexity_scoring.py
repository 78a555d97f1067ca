"""Perplexity scoring: full-vocabulary logits (before) vs scoring by blocks in the engine
(after), side by side in one process on the same runner, alternating batch by batch.

    PYTHONPATH=src python benchmarks/perplexity_scoring.py --backend torch|llama.cpp \
        [--model smollm2] [--n-texts 16] [--batch-size 8] [--rounds 2] [--out results.json]

"before" is what `CausalLMTask.evaluate` did until scoring moved into the engines: the
runner's (B, T, V) logits, reduced in one go (`_full_logits_stats`, kept here verbatim).
"after" is `next_token_scores(runner, batch)`. Per path: seconds per eval text (summed over
alternating batches and rounds) and the most RSS one batch's scoring added (sampled every
2 ms), plus the largest difference in per-text NLL between the two.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np
import psutil

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.core.hardware import hardware_profile
from reactinfer.data import texts_for
from reactinfer.tasks import iter_batches


def _full_logits_stats(logits: np.ndarray, input_ids: np.ndarray, mask: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reduction before this change: the whole (B, T-1, V) at once."""
    x = logits[:, :-1].astype(np.float32)
    target = input_ids[:, 1:]
    valid = (mask[:, 1:] * mask[:, :-1]).astype(bool)
    m = x.max(-1, keepdims=True)
    lse = np.log(np.exp(x - m).sum(-1)) + m[..., 0]
    picked = np.take_along_axis(x, target[..., None], -1)[..., 0]
    return np.where(valid, lse - picked, 0.0).sum(1), valid.sum(1), x.argmax(-1)


class _PeakRSS:
    """The most RSS above the level at entry while the block runs."""

    def __enter__(self) -> _PeakRSS:
        self.proc = psutil.Process()
        self.base = self.peak = self.proc.memory_info().rss
        self.stop = False
        self.thread = threading.Thread(target=self._poll)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        self.stop = True
        self.thread.join()
        self.growth_mb = (self.peak - self.base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="torch")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--n-texts", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out")
    a = ap.parse_args()
    from reactinfer.tasks.causal_lm import _per_row, next_token_scores  # torch: after --help

    h = ri.load(a.model)
    if a.backend != "torch":
        h = to_backend(h, a.backend)
    runner = h.runner()
    texts = texts_for("eval", None)[:a.n_texts]
    if getattr(h.tokenizer, "pad_token", None) is None:
        h.tokenizer.pad_token = h.tokenizer.eos_token
    h.tokenizer.padding_side = "right"
    batches = list(iter_batches(h.tokenizer, texts, a.batch_size, h.max_length))
    runner(batches[-1][1])  # warm-up
    seconds = {"before": 0.0, "after": 0.0}
    growth = {"before": 0.0, "after": 0.0}
    nll: dict[str, np.ndarray] = {k: np.zeros(len(texts)) for k in seconds}
    for r in range(a.rounds):
        for i, (idx, batch) in enumerate(batches):
            order = ["before", "after"] if (r + i) % 2 == 0 else ["after", "before"]
            for path in order:
                with _PeakRSS() as peak:
                    t0 = time.perf_counter()
                    if path == "before":
                        n, _, _ = _full_logits_stats(runner(batch), batch["input_ids"],
                                                  batch["attention_mask"])
                    else:
                        n, _, _ = _per_row(*next_token_scores(runner, batch),
                                           batch["attention_mask"])
                    seconds[path] += time.perf_counter() - t0
                growth[path] = max(growth[path], peak.growth_mb)
                nll[path][idx] = n
    per_text = {k: v / (a.rounds * len(texts)) for k, v in seconds.items()}
    result = {
        "model": a.model, "backend": a.backend, "vocab": int(h.tokenizer.vocab_size),
        "max_length": h.max_length, "n_texts": len(texts), "batch_size": a.batch_size,
        "rounds": a.rounds, "s_per_text": per_text,
        "after_vs_before_speed": per_text["before"] / per_text["after"],
        "max_rss_growth_per_batch_mb": growth,
        "max_nll_rel_diff": float(np.max(np.abs(nll["after"] - nll["before"])
                                         / np.maximum(np.abs(nll["before"]), 1e-9))),
        "cpu": hardware_profile().summary(),
    }
    print(json.dumps(result, indent=1))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
