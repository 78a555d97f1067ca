"""Batch embedding with `minilm` on Ray: 1 and 2 workers against a plain loop.

    PYTHONPATH=src python benchmarks/cluster_batch.py --rows 100000 --plain1-rows 8192

(the issue's scale: about 55 minutes on 2 cores; --rows 4096 takes about 4 minutes)

Measures, side by side in one run (timings on a shared machine only mean something as
ratios taken together):
- plain single-process loop (run_in_order) with 2 torch threads on all rows, and with 1
  thread on the first --plain1-rows rows (the per-row compute the scale-out model uses);
- `run_batch` (Ray Data actor pool) with 1 and 2 workers (1 CPU / 1 thread each);
- results across worker counts (max abs diff), and against the plain loop;
- the overheads the scale-out model in docs/cluster.md uses: actor start-up, per-row
  compute, per-row pipeline overhead (Ray Data scheduling + Arrow + object store), and
  the driver's per-row cost (grouping + writing part files);
- result compression of the embeddings (ratio, cosine).
- the machine's load average during each phase (other work on the machine shows up there).
Writes benchmarks/results/cluster.json and cluster.md.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from reactinfer.backends.torch_eager import set_threads
from reactinfer.cluster import ray_api
from reactinfer.cluster.aggregate import compression_report
from reactinfer.cluster.batch import run_batch
from reactinfer.core.hardware import hardware_profile
from reactinfer.data import load_corpus
from reactinfer.models import load
from reactinfer.tasks.base import run_in_order

RESULTS = Path(__file__).parent / "results"


def corpus_texts(n: int) -> list[str]:
    d = load_corpus()
    base = d["train"] + d["eval"] + d["calibration"]
    return [base[i % len(base)] for i in range(n)]


class LoadSampler:
    """Load average sampled every 5 s, reported per named phase."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    @contextmanager
    def phase(self, name: str):
        samples: list[float] = []
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(5.0):
                samples.append(os.getloadavg()[0])

        t = threading.Thread(target=run, daemon=True)
        t.start()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            stop.set()
            t.join()
            print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
            if samples:
                self.phases[name] = {"mean": float(np.mean(samples)), "max": max(samples)}


def plain(texts: list[str], threads: int, batch: int) -> tuple[float, np.ndarray]:
    set_threads(threads)
    h = load("minilm")
    run_in_order(h.runner(), h.tokenizer, texts[:64], batch, h.max_length)  # warm-up
    t = time.perf_counter()
    out = run_in_order(h.runner(), h.tokenizer, texts, batch, h.max_length)
    return time.perf_counter() - t, out


def ray_run(path: Path, out: Path, workers: int, batch: int, block: int) -> tuple[dict, np.ndarray]:
    import pyarrow.parquet as pq

    res = run_batch("minilm", path, out, workers=workers, batch_size=batch, block_rows=block,
                    progress=False)
    emb = np.array(pq.read_table(out, columns=["embedding"]).column("embedding").to_pylist(),
                   dtype=np.float32)
    return res.to_dict(), emb


def transport_costs(emb: np.ndarray, texts: list[str], block: int) -> dict[str, float]:
    """Per-row cost of moving one block through the object store, and of the driver's
    Parquet part write (measured in the running Ray session)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({"id": np.arange(block), "text": texts[:block],
                      "embedding": pa.array(list(emb[:block]), type=pa.list_(pa.float32()))})
    reps = 5
    t = time.perf_counter()
    for _ in range(reps):
        ray_api.get(ray_api.put(table))
    put_get = (time.perf_counter() - t) / reps / block
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        for i in range(reps):
            pq.write_table(table.drop_columns("text"), f"{d}/p{i}.parquet", compression="zstd")
        write = (time.perf_counter() - t) / reps / block
    return {"object_store_put_get_s_per_row": put_get, "part_write_s_per_row": write,
            "block_bytes": table.nbytes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--block-rows", type=int, default=512)
    ap.add_argument("--plain1-rows", type=int, default=None,
                    help="rows for the 1-thread plain loop (default: all)")
    a = ap.parse_args()
    sampler = LoadSampler()
    texts = corpus_texts(a.rows)
    tmp = Path(tempfile.mkdtemp(prefix="react-cluster-bench-"))
    path = tmp / "in.txt"
    path.write_text("\n".join(t.replace("\n", " ") for t in texts) + "\n")

    n1 = min(a.plain1_rows or len(texts), len(texts))
    with sampler.phase("plain loop, 1 thread"):
        t1, _ = plain(texts[:n1], 1, a.batch_size)
    with sampler.phase("plain loop, 2 threads"):
        t2, ref2 = plain(texts, 2, a.batch_size)
    set_threads(os.cpu_count() or 1)
    ray_api.init(num_cpus=os.cpu_count() or 2)
    try:
        # start-up: a one-block run is almost all actor start + model load
        small = tmp / "small.txt"
        small.write_text("\n".join(texts[:32]) + "\n")
        s0 = time.perf_counter()
        run_batch("minilm", small, tmp / "small.parquet", workers=1, batch_size=a.batch_size,
                  progress=False)
        startup = time.perf_counter() - s0
        with sampler.phase("Ray, 1 worker"):
            r1, e1 = ray_run(path, tmp / "w1.parquet", 1, a.batch_size, a.block_rows)
        with sampler.phase("Ray, 2 workers"):
            r2, e2 = ray_run(path, tmp / "w2.parquet", 2, a.batch_size, a.block_rows)
        transport = transport_costs(e1, texts, a.block_rows)
    finally:
        ray_api.shutdown()

    n = len(texts)
    row_compute = t1 / n1
    steady1 = max(r1["seconds"] - startup, 1e-9) / n  # per row, one worker, start-up removed
    result = {
        "rows": n, "batch_size": a.batch_size, "block_rows": a.block_rows,
        "hardware": hardware_profile().to_dict(),
        "plain_loop": {"threads_1": {"rows": n1, "seconds": t1, "rows_per_s": n1 / t1},
                       "threads_2": {"seconds": t2, "rows_per_s": n / t2}},
        "ray": {"workers_1": {"seconds": r1["seconds"], "rows_per_s": n / r1["seconds"]},
                "workers_2": {"seconds": r2["seconds"], "rows_per_s": n / r2["seconds"]}},
        "scaling_efficiency_2_vs_1": (r1["seconds"] / r2["seconds"]) / 2,
        "ray_2_workers_vs_plain_2_threads": t2 / r2["seconds"],
        "max_abs_diff_1_vs_2_workers": float(np.abs(e1 - e2).max()),
        "max_abs_diff_ray_vs_plain": float(np.abs(e1 - ref2).max()),
        "load_average": sampler.phases,
        "errors": r1["errors"] + r2["errors"],
        "overheads": {"startup_s": startup, "compute_s_per_row_1_thread": row_compute,
                      "ray_overhead_s_per_row": steady1 - row_compute, **transport},
        "compression": compression_report(e1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(result, indent=2, default=str))
    (RESULTS / "cluster.md").write_text(render(result))
    print(render(result))


def render(r: dict) -> str:
    p, ray, o = r["plain_loop"], r["ray"], r["overheads"]
    lines = [
        f"# Batch embedding with minilm on Ray ({r['rows']:,} corpus texts, batch "
        f"{r['batch_size']}, blocks of {r['block_rows']})", "",
        f"Machine: {r['hardware']['cpu_model']}, {r['hardware']['cores_logical']} logical "
        "cores; timings vary between runs: compare ratios within this run only.", "",
        "| run | seconds | rows/s |", "|---|---:|---:|",
        f"| plain loop, 1 thread ({p['threads_1'].get('rows', r['rows']):,} rows) | "
        f"{p['threads_1']['seconds']:.1f} | "
        f"{p['threads_1']['rows_per_s']:.1f} |",
        f"| plain loop, 2 threads (all rows) | {p['threads_2']['seconds']:.1f} | "
        f"{p['threads_2']['rows_per_s']:.1f} |",
        f"| Ray Data, 1 worker (incl. start-up) | {ray['workers_1']['seconds']:.1f} | "
        f"{ray['workers_1']['rows_per_s']:.1f} |",
        f"| Ray Data, 2 workers (incl. start-up) | {ray['workers_2']['seconds']:.1f} | "
        f"{ray['workers_2']['rows_per_s']:.1f} |", "",
        f"- scaling efficiency 2 vs 1 worker: {r['scaling_efficiency_2_vs_1']:.2f}",
        f"- Ray 2 workers vs plain loop with 2 threads: "
        f"{r['ray_2_workers_vs_plain_2_threads']:.2f}x",
        f"- max abs diff, 1 vs 2 workers: {r['max_abs_diff_1_vs_2_workers']:.3g}; "
        f"Ray vs plain loop: {r['max_abs_diff_ray_vs_plain']:.3g}; row errors: {r['errors']}",
        f"- start-up (actor + model load, one-block run): {o['startup_s']:.1f} s; compute "
        f"{o['compute_s_per_row_1_thread'] * 1e3:.2f} ms/row (1 thread); Ray overhead "
        f"{o['ray_overhead_s_per_row'] * 1e3:.2f} ms/row; object store put+get "
        f"{o['object_store_put_get_s_per_row'] * 1e6:.1f} µs/row; part write "
        f"{o['part_write_s_per_row'] * 1e6:.1f} µs/row", "",
        "- load average (1 min) during each phase, mean / max: " + "; ".join(
            f"{k} {v['mean']:.2f} / {v['max']:.2f}" for k, v in r.get("load_average", {}).items()),
        "",
        "| codec | bytes | ratio vs float32 | mean cosine | min cosine |",
        "|---|---:|---:|---:|---:|"]
    for name, c in r["compression"].items():
        lines.append(f"| {name} + zstd | {c['bytes']:,} | {c['ratio']:.2f} | "
                     f"{c['mean_cosine']:.6f} | {c['min_cosine']:.6f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
