"""sentence-transformers' own encode, as an anchor for ReAct's figures.

Run as a subprocess (so its own environment can differ: its ONNX and OpenVINO backends need
optimum / optimum-intel, which pin an older transformers, so they live in .venv-anchor —
`make anchor-env`):

    python benchmarks/anchor_st.py --model-dir DIR --texts texts.json \
        --backend torch|onnx|openvino \
        --out result.json [--emb emb.npy] [--batch-size 32] [--latency-runs 50] [--threads N]

Writes throughput at the batch size on all texts (encode sorts by length itself), latency
at batch 1 (p50/p95/p99), and optionally the embeddings for a quality check.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ANCHOR = ROOT / ".venv-anchor" / "bin" / "python"
ANCHOR_PYTHON = {"torch": Path(sys.executable), "onnx": ANCHOR, "openvino": ANCHOR}


def run_st_anchor(backend: str, texts: list[str], model_dir: str, latency_runs: int = 50,
                  rounds: int = 1, batch_size: int = 32) -> dict:
    """Run this script in a subprocess (its backend's environment) and return its result
    with the embeddings; an anchor that cannot run returns {"engine", "error"}."""
    python = ANCHOR_PYTHON[backend]
    label = f"sentence-transformers ({backend})"
    if not python.exists():
        return {"engine": label, "error": f"no {python.parent.parent.name}: run `make anchor-env`"}
    tmp = Path(tempfile.mkdtemp(prefix="react-anchor-"))
    (tmp / "texts.json").write_text(json.dumps(texts))
    cmd = [str(python), __file__, "--model-dir", model_dir, "--texts", str(tmp / "texts.json"),
           "--backend", backend, "--out", str(tmp / "out.json"), "--emb", str(tmp / "emb.npy"),
           "--rounds", str(rounds), "--latency-runs", str(latency_runs),
           "--batch-size", str(batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        return {"engine": label, "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
    res = json.loads((tmp / "out.json").read_text())
    res["embeddings"] = np.load(tmp / "emb.npy", allow_pickle=False)
    shutil.rmtree(tmp, ignore_errors=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--backend", default="torch", choices=tuple(ANCHOR_PYTHON))
    p.add_argument("--out", required=True)
    p.add_argument("--emb")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int)
    a = p.parse_args()
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    from sentence_transformers import SentenceTransformer

    if a.threads:
        torch.set_num_threads(a.threads)
    texts = json.load(open(a.texts, encoding="utf-8"))
    model_dir = a.model_dir
    if a.backend != "torch":  # it exports next to the model: work on a copy
        model_dir = shutil.copytree(a.model_dir, tempfile.mkdtemp() + "/m")
    import sentence_transformers

    t0 = time.perf_counter()
    model = SentenceTransformer(model_dir, device="cpu", backend=a.backend, local_files_only=True)
    load_s = time.perf_counter() - t0
    model.encode(texts[:a.batch_size], batch_size=a.batch_size)  # warm-up
    times = []
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        emb = model.encode(texts, batch_size=a.batch_size, convert_to_numpy=True)
        times.append(time.perf_counter() - t0)
    lat = []
    for i in range(a.latency_runs + 3):
        t0 = time.perf_counter()
        model.encode([texts[i % len(texts)]], batch_size=1)
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat[3:]) * 1e3
    out = {"engine": f"sentence-transformers {sentence_transformers.__version__} ({a.backend})",
           "items_per_s": len(texts) / float(np.median(times)), "rounds": a.rounds,
           "latency_ms": {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)),
                          "p99": float(np.percentile(ms, 99))},
           "load_s": load_s, "threads": torch.get_num_threads(), "n": len(texts)}
    json.dump(out, open(a.out, "w"))
    if a.emb:
        np.save(a.emb, np.asarray(emb, dtype=np.float32))


if __name__ == "__main__":
    main()
