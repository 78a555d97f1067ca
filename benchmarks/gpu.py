"""GPU (CUDA) vs CPU on one machine, side by side, in one process.

minilm (real weights) on the torch backend (eager) and torch-compile, fp32 / fp16 / bf16
on CUDA (half precision through the CastHalf transform), against the same machine's CPU
(torch eager, fp32): throughput at batch 32 and 128 on the evaluation corpus (end to end,
tokenization included, as `react bench` measures it; and model-only, on batches tokenized
beforehand), p50 latency at batch 1, quality (mean cosine vs the CPU fp32 embeddings).
ONNX Runtime: whether its CUDA provider is there; its figures if so, else its CPU fp32.
LLM-shaped: a Llama with SmolLM2-135M's exact config and RANDOM weights (speed only:
generation always makes the asked number of tokens), greedy tokens/s at batch 1 for
64 new tokens, fp32 / fp16 / bf16 on CUDA vs fp32 on the CPU.

    PYTHONPATH=src python benchmarks/gpu.py [--minilm DIR] [--llm DIR] [--out DIR] [--quick]
    PYTHONPATH=src python benchmarks/gpu.py --make-carry DIR   # what a bare GPU box needs
    PYTHONPATH=src python benchmarks/gpu.py --render           # gpu.md again from the JSON

--minilm: a Hugging Face directory of all-MiniLM-L6-v2 (default: the built-in package);
fp16 weights there are upcast to fp32 first (the GPU machine gets an fp16 copy, half the
bytes to carry) and the results say so. --llm: a directory with SmolLM2-135M's config.json
and tokenizer (default: read from the built-in GGUF). --make-carry DIR writes both (DIR/minilm,
DIR/smollm2, 48 MB) from the installed built-ins. Writes gpu.json and gpu.md to --out
(default benchmarks/results), after every row, so a cut-off run keeps what it measured;
gpu.md also takes in gpu_serve.md (serve_gpu.py) and gpu_probe.json (gpu_probe.py) found
beside it.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS as OUT
from _common import timed, write_results

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.core import ModelHandle
from reactinfer.core.hardware import hardware_profile
from reactinfer.data import texts_for
from reactinfer.tasks import get_task, iter_batches, tokenize

# torch, and what imports it, is imported where it is used: `--help` stays fast


def has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


# -- models ----------------------------------------------------------------------------------
def load_minilm(path: str | None) -> tuple[ModelHandle, str]:
    import torch
    from safetensors.torch import load_file, save_file

    if path is None:
        return ri.load("minilm"), "the built-in package's fp32 weights"
    src = Path(path)
    weights = load_file(src / "model.safetensors")
    if not any(v.dtype == torch.float16 for v in weights.values()):
        return ri.load(src, task="embedding", name="minilm"), f"fp32 weights from {src}"
    tmp = Path(tempfile.mkdtemp(prefix="minilm-fp32-"))
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, tmp / f.name)
    save_file({k: v.float() if v.is_floating_point() else v for k, v in weights.items()},
              tmp / "model.safetensors", metadata={"format": "pt"})
    return (ri.load(tmp, task="embedding", name="minilm"),
            ("an fp16 copy of the built-in fp32 weights (carried to the GPU machine at half "
            "the size), upcast to fp32 there: every row, the CPU reference included, uses "
            "these fp16-rounded values"))


def load_llm(path: str | None) -> tuple[ModelHandle, dict]:
    import torch
    import transformers

    if path is None:
        from reactinfer.models.zoo import BUILTINS

        gguf = BUILTINS["smollm2"].path()
        kw = {"gguf_file": gguf.name, "local_files_only": True}
        config = transformers.AutoConfig.from_pretrained(gguf.parent, **kw)
        tok = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kw)
    else:
        config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
        tok = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).float().eval()
    shape = {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size",
                                             "intermediate_size", "num_attention_heads",
                                             "num_key_value_heads", "vocab_size")}
    shape["params"] = sum(p.numel() for p in model.parameters())
    return ri.load(model, task="causal-lm", tokenizer=tok, name="llama-smollm2-135m-shape",
                   max_length=256), shape


def make_carry(dest: Path) -> None:
    """An fp16 copy of the built-in minilm (safetensors, config, tokenizer) and SmolLM2-135M's
    config and tokenizer read from the built-in GGUF: what gpu.py needs on a machine without
    our built-in model packages, in about 48 MB."""
    import transformers
    from safetensors.torch import load_file, save_file

    from reactinfer.models.zoo import BUILTINS

    src, mini = BUILTINS["minilm"].path(), dest / "minilm"
    mini.mkdir(parents=True, exist_ok=True)
    for f in src.rglob("*"):
        if f.is_file() and f.name not in ("model.safetensors", "README.md"):
            (mini / f.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, mini / f.relative_to(src))
    weights = load_file(src / "model.safetensors")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()},
              mini / "model.safetensors", metadata={"format": "pt"})
    gguf = BUILTINS["smollm2"].path()
    kw = {"gguf_file": gguf.name, "local_files_only": True}
    transformers.AutoConfig.from_pretrained(gguf.parent, **kw).save_pretrained(dest / "smollm2")
    transformers.AutoTokenizer.from_pretrained(gguf.parent, **kw).save_pretrained(dest / "smollm2")


def halved(handle: ModelHandle, dtype: str) -> ModelHandle:
    from reactinfer.compression import CastHalf, compress

    return handle if dtype == "fp32" else compress(handle, [CastHalf(dtype)])


# -- measurements ----------------------------------------------------------------------------
def peak_reset() -> None:
    import torch

    if has_gpu():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if has_gpu() else None


def embed_row(label: str, handle: ModelHandle, texts: list[str], ref: np.ndarray | None,
              a: argparse.Namespace) -> tuple[dict, np.ndarray]:
    from reactinfer.measure.harness import latency_batch1

    task = get_task("embedding")
    peak_reset()
    runner, prep = timed(handle.runner)
    device = getattr(runner, "device", handle.backend_options.get("provider", "cpu"))
    # warm-up on every shape class timed below (torch.compile specializes batch 1 apart)
    t0 = time.perf_counter()
    for bs in (*a.batches, 1):
        runner(tokenize(handle.tokenizer, texts[:bs], handle.max_length))
        runner(tokenize(handle.tokenizer, texts[-bs:], handle.max_length))
    warm = time.perf_counter() - t0
    repeats = 2 if device == "cpu" else 3
    row = {"name": label, "backend": handle.backend, "options": dict(handle.backend_options),
           "device": device, "transforms": [t["type"] + "(" + t.get("dtype", "") + ")"
                                            for t in handle.transforms],
           "prepare_s": prep, "warmup_s": warm, "throughput": {}, "model_only": {}}
    out: np.ndarray | None = None
    for bs in a.batches:
        secs = []
        for _ in range(repeats):
            res, s = timed(task.evaluate, runner, handle.tokenizer, texts, bs, handle.max_length)
            secs.append(s)
            out = res["embeddings"] if bs == a.batches[0] else out
        row["throughput"][str(bs)] = len(texts) / min(secs)
        batches = [b for _, b in iter_batches(handle.tokenizer, texts, bs, handle.max_length)]
        secs = []
        for _ in range(repeats):
            _, s = timed(lambda bb=batches: [runner(b) for b in bb])
            secs.append(s)
        row["model_only"][str(bs)] = len(texts) / min(secs)
    row["latency_ms"] = latency_batch1(handle, runner, texts, a.latency_runs)
    if hasattr(runner, "warmup_s"):
        row["compile_s"] = runner.warmup_s
    row["gpu_peak_mib"] = peak_mib() if device == "cuda" else None
    assert out is not None  # a.batches is never empty
    if ref is not None:
        row["quality"] = task.compare({"embeddings": ref}, {"embeddings": out})
    return row, out


def gen_row(label: str, handle: ModelHandle, a: argparse.Namespace) -> dict:
    from reactinfer.measure.harness import generation_speed

    peak_reset()
    runner: Any  # the torch backend's runner: it has .device
    runner, prep = timed(handle.runner)
    g = generation_speed(handle, runner, new_tokens=a.gen_tokens, repeats=3)
    return {"name": label, "device": runner.device,
            "transforms": [t["type"] + "(" + t.get("dtype", "") + ")" for t in handle.transforms],
            "prepare_s": prep, **g,
            "gpu_peak_mib": peak_mib() if runner.device == "cuda" else None}


# -- run -------------------------------------------------------------------------------------
def environment() -> dict:
    import torch
    import transformers

    hw = hardware_profile()
    env: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "transformers": transformers.__version__,
                           "cpu": hw.cpu_model, "cores_logical": hw.cores_logical,
                           "torch_cpu_threads": torch.get_num_threads(), "gpu": hw.gpu_name,
                           "gpu_memory_gb": hw.gpu_memory_gb,
                           "float32_matmul_precision": torch.get_float32_matmul_precision()}
    try:
        import onnxruntime as ort

        env["onnxruntime"] = ort.__version__
        env["ort_providers"] = ort.get_available_providers()
    except ImportError as e:
        env["onnxruntime"] = f"not importable: {e}"
        env["ort_providers"] = []
    try:
        env["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            check=False, capture_output=True, text=True, timeout=20).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["driver"] = None
    return env


def guarded(results: dict, key: str, label: str, fn, *args) -> Any:
    """Run one row; an error is recorded in the results, and the rest still run."""
    print(f"[{time.strftime('%H:%M:%S')}] {key}: {label}", flush=True)
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001 - a benchmark records what failed and goes on
        traceback.print_exc()
        results.setdefault("errors", []).append({"section": key, "row": label,
                                                 "error": f"{type(e).__name__}: {e}"[:500]})
        return None
    finally:
        gc.collect()
        if has_gpu():
            import torch

            torch.cuda.empty_cache()


def minilm_setup(results: dict, save, a: argparse.Namespace) -> dict:
    """The CPU fp32 reference row; returns what the other minilm sections need."""
    base, note = load_minilm(a.minilm)
    results["minilm_weights"] = note
    texts = texts_for("eval", limit=a.n_texts)
    results["n_texts"] = len(texts)
    results["minilm"] = []
    row, ref = embed_row("torch eager", to_backend(base, "torch", device="cpu"), texts, None, a)
    row["dtype"] = "fp32"
    row["quality"] = get_task("embedding").compare({"embeddings": ref}, {"embeddings": ref})
    results["minilm"].append(row)
    save()
    return {"base": base, "texts": texts, "ref": ref}


def minilm_cuda(results: dict, save, ctx: dict, backend: str, a: argparse.Namespace) -> None:
    """One row per dtype on CUDA (eager also with tf32 matmuls for fp32)."""
    label = {"torch": "torch eager", "torch-compile": "torch.compile"}[backend]
    plan = [(dt, False) for dt in ("fp32", "fp16", "bf16")]
    if backend == "torch":
        plan.append(("fp32", True))
    for dtype, tf32 in plan:
        def one(dtype=dtype, tf32=tf32):
            import torch

            torch.set_float32_matmul_precision("high" if tf32 else "highest")
            try:
                h = to_backend(halved(ctx["base"], dtype), backend, device="cuda")
                r, _ = embed_row(label, h, ctx["texts"], ctx["ref"], a)
            finally:
                torch.set_float32_matmul_precision("highest")
                torch._dynamo.reset()
            r["dtype"] = dtype + (" (tf32 matmuls)" if tf32 else "")
            return r
        r = guarded(results, "minilm", f"cuda {label} {dtype}{' tf32' if tf32 else ''}", one)
        if r is not None:
            results["minilm"].append(r)
            save()


def minilm_ort(results: dict, save, ctx: dict, a: argparse.Namespace) -> None:
    """ONNX Runtime: its CUDA provider where it exists, else the CPU for reference."""
    providers = results["environment"]["ort_providers"]
    if not providers:
        return
    if "CUDAExecutionProvider" in providers:
        plan = [("cuda", p) for p in ("fp32", "fp16")]
    else:
        plan = [("cpu", "fp32")]
    for provider, precision in plan:
        def one(provider=provider, precision=precision):
            h, conv = timed(to_backend, ctx["base"], "onnxruntime", precision=precision,
                            provider=provider)
            r, _ = embed_row("ONNX Runtime", h, ctx["texts"], ctx["ref"], a)
            r.update(convert_s=conv, dtype=precision, device=provider)
            return r
        r = guarded(results, "minilm", f"onnxruntime {provider} {precision}", one)
        if r is not None:
            results["minilm"].append(r)
            save()


def run_llm(results: dict, save, a: argparse.Namespace) -> None:
    base, shape = load_llm(a.llm)
    results["llm_shape"] = shape
    rows = results["llm"] = []
    plan = [("cpu", "fp32")] + ([("cuda", dt) for dt in ("fp32", "fp16", "bf16")]
                                if has_gpu() else [])
    for device, dtype in plan:
        def one(device=device, dtype=dtype):
            r = gen_row("torch eager generate", to_backend(halved(base, dtype), "torch",
                                                           device=device), a)
            r["dtype"] = dtype
            return r
        r = guarded(results, "llm", f"{device} {dtype}", one)
        if r is not None:
            rows.append(r)
            save()


# -- report ----------------------------------------------------------------------------------
def _x(v: float | None, base: float | None) -> str:
    return f"{v / base:.2f}×" if v and base else "—"


def markdown(r: dict) -> str:
    env = r["environment"]
    lines = ["# GPU vs CPU, measured side by side on one machine", "",
             (f"Command: `{r['command']}` ({r['date']}, {r['seconds']:.0f} s). "
             f"GPU: {env.get('gpu')} ({env.get('gpu_memory_gb')} GiB, driver {env.get('driver')}); "
             f"CPU: {env['cpu']}, {env['cores_logical']} logical cores, torch using "
             f"{env['torch_cpu_threads']} threads. Python {env['python']}, torch {env['torch']} "
             f"(CUDA {env['cuda']}), transformers {env['transformers']}, onnxruntime "
             f"{env.get('onnxruntime')}. Every ratio (×) is against the CPU fp32 row of the "
             "same run."), ""]
    rows = r.get("minilm", [])
    if rows:
        cpu = rows[0]
        b = [str(x) for x in r["args"]["batches"]]
        lines += [f"## minilm (all-MiniLM-L6-v2), {r['n_texts']} evaluation texts", "",
                  (f"Weights: {r['minilm_weights']}. Throughput is items/s end to end "
                  "(tokenization included, length-bucketed batches, as `react bench`), "
                  "model-only is on batches tokenized beforehand; latency is one text at a "
                  "time, tokenization included. Quality: cosine to the CPU fp32 embeddings."), "",
                  "| engine | device | dtype | " + " | ".join(f"items/s @{x}" for x in b)
                  + " | " + " | ".join(f"model-only @{x}" for x in b)
                  + " | p50 ms @1 | mean cos | min cos | warm-up s | GPU peak MiB |",
                  "|---" * (8 + 2 * len(b)) + "|"]
        for row in rows:
            tp, mo = (" | ".join(f"{row[k][x]:.0f} ({_x(row[k][x], cpu[k][x])})" for x in b)
                      for k in ("throughput", "model_only"))
            p50 = row["latency_ms"]["p50"]
            q = row.get("quality", {})
            peak = f"{row['gpu_peak_mib']:.0f}" if row.get("gpu_peak_mib") else "—"
            lines.append(f"| {row['name']} | {row['device']} | {row.get('dtype', '?')} | {tp} | "
                         f"{mo} | {p50:.2f} ({_x(cpu['latency_ms']['p50'], p50)}) | "
                         f"{q.get('mean_cosine', float('nan')):.6f} | "
                         f"{q.get('min_cosine', float('nan')):.5f} | {row['warmup_s']:.1f} | "
                         f"{peak} |")
        lines.append("")
    llm = r.get("llm", [])
    if llm:
        cpu = llm[0]
        s = r["llm_shape"]
        lines += ["## LLM-shaped generation (random weights)", "",
                  (f"A Llama with SmolLM2-135M's exact config ({s['num_hidden_layers']} layers, "
                  f"hidden {s['hidden_size']}, {s['params'] / 1e6:.0f}M parameters) and random "
                  "weights: speed only (generation always makes the asked number of tokens; "
                  "the real weights did not fit the transfer). Greedy decoding with the KV "
                  f"cache at batch 1, {r['args']['gen_tokens']} new tokens after a "
                  f"{cpu['prompt_tokens']}-token prompt, median of 3, Hugging Face `generate` "
                  "through the torch backend's runner."), "",
                  "| device | dtype | tokens/s | ms/token | × CPU fp32 | GPU peak MiB |",
                  "|---|---|---|---|---|---|"]
        for row in llm:
            peak = f"{row['gpu_peak_mib']:.0f}" if row.get("gpu_peak_mib") else "—"
            lines.append(f"| {row['device']} | {row['dtype']} | {row['tokens_per_s']:.1f} | "
                         f"{row['ms_per_token']:.2f} | "
                         f"{_x(row['tokens_per_s'], cpu['tokens_per_s'])} | {peak} |")
        lines.append("")
    providers = env.get("ort_providers", [])
    lines += ["## ONNX Runtime", "",
              f"Providers there: {', '.join(providers) or 'none'}. "
              + ("The CUDA provider is available; its rows are in the minilm table."
                 if "CUDAExecutionProvider" in providers else
                 "No CUDAExecutionProvider (the CPU-only `onnxruntime` package); its CPU fp32 "
                 "row is in the minilm table for reference."), ""]
    lines += _extras(r)
    if r.get("errors"):
        lines += ["## What failed", ""] + [f"- {e['section']} / {e['row']}: `{e['error']}`"
                                           for e in r["errors"]] + [""]
    return "\n".join(lines)


def _extras(r: dict) -> list[str]:
    """How to reproduce; and what serve_gpu.py and gpu_probe.py wrote beside gpu.json."""
    out = Path(r["args"]["out"])
    lines = ["## Reproduce", "",
             ("On a machine without the built-in model packages (a bare GPU box), carry what "
             "`PYTHONPATH=src python benchmarks/gpu.py --make-carry DIR` writes here (48 MB), "
             "then run there `PYTHONPATH=src python benchmarks/gpu.py --minilm DIR/minilm --llm "
             "DIR/smollm2`, `benchmarks/gpu_probe.py --minilm DIR/minilm` and "
             "`benchmarks/serve_gpu.py --minilm DIR/minilm` (the server needs fastapi and "
             "uvicorn), and `gpu.py --render` to put the three together. Where the packages "
             "are installed, leave out --minilm / --llm."), ""]
    probe = out / "gpu_probe.json"
    if probe.exists():
        p = json.loads(probe.read_text())
        lines += ["## Follow-up probe (gpu_probe.py, a later run on a machine of the same kind)",
                  "",
                  ("Batch-1 latency on CUDA over the same 100 texts twice: pass 1 meets each "
                  "sequence length for the first time, pass 2 has seen them all."), "",
                  "| dtype | distinct lengths | pass 1 p50 / p95 ms | pass 2 p50 / p95 ms |",
                  "|---|---|---|---|"]
        for dt in ("fp32", "fp16", "bf16"):
            if dt in p:
                a, b = p[dt]["pass1"], p[dt]["pass2_same_texts"]
                lines.append(f"| {dt} | {p[dt]['distinct_lengths']} | {a['p50']:.2f} / "
                             f"{a['p95']:.2f} | {b['p50']:.2f} / {b['p95']:.2f} |")
        tok = [f"{p[k]:.0f} items/s at batch {k.split('@')[1]}" for k in p
               if k.startswith("tokenize_only")]
        lines += ["", (f"Tokenization alone (length-sorted batches, one process): "
                      f"{', '.join(tok)}."), ""]
    serve = out / "gpu_serve.md"
    if serve.exists():
        body = serve.read_text().split("\n", 1)[1].strip()
        lines += ["## Serving: dynamic batching on the GPU (serve_gpu.py, a later run, same "
                  "machine)", "",
                  body, ""]
    return lines


def render(out: Path) -> None:
    r = json.loads((out / "gpu.json").read_text())
    r["args"]["out"] = str(out)
    (out / "gpu.md").write_text(markdown(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minilm", help="HF directory of all-MiniLM-L6-v2 (fp16 is upcast)")
    ap.add_argument("--llm", help="directory with SmolLM2-135M's config.json and tokenizer")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--n-texts", type=int, default=None, help="evaluation texts (default all)")
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--latency-runs", type=int, default=100)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--no-ort", action="store_true")
    ap.add_argument("--skip", nargs="*", default=[], choices=("minilm", "llm"))
    ap.add_argument("--quick", action="store_true", help="a small smoke run")
    ap.add_argument("--make-carry", metavar="DIR", help="write the GPU machine's inputs here")
    ap.add_argument("--render", action="store_true", help="gpu.md again from --out's JSON")
    a = ap.parse_args()
    if a.make_carry:
        return make_carry(Path(a.make_carry))
    if a.render:
        return render(Path(a.out))
    if a.quick:
        a.n_texts, a.latency_runs, a.gen_tokens = a.n_texts or 64, 5, 8
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    results: dict = {"command": "PYTHONPATH=src python benchmarks/gpu.py "
                                + " ".join(sys.argv[1:]),
                     "date": time.strftime("%Y-%m-%d %H:%M"), "args": vars(a),
                     "environment": environment(), "seconds": 0.0}

    def save() -> None:
        results["seconds"] = time.time() - t0
        write_results(out / "gpu", results, markdown(results), indent=1, echo=False)

    print(json.dumps(results["environment"]), flush=True)
    # cheapest first: compiling comes last, so a run cut short keeps the rest
    ctx = None
    if "minilm" not in a.skip:
        ctx = guarded(results, "minilm", "cpu torch fp32", minilm_setup, results, save, a)
    if ctx is not None and has_gpu():
        minilm_cuda(results, save, ctx, "torch", a)
    if "llm" not in a.skip:
        guarded(results, "llm", "load", run_llm, results, save, a)
    if ctx is not None and not a.no_ort:
        minilm_ort(results, save, ctx, a)
    if ctx is not None and has_gpu() and not a.no_compile:
        minilm_cuda(results, save, ctx, "torch-compile", a)
    save()
    print(markdown(results))


if __name__ == "__main__":
    main()
