"""How fast can minilm go on this CPU? Where the time goes, and the limit computed.

    PYTHONPATH=src python benchmarks/minilm_limit.py [--n-texts 1000] [--rounds 3]
        [--batch-size 32] [--out benchmarks/results/minilm_limit]

In one process, on the held-out eval texts, batch 32:
  1. padding: real tokens against the tokens actually run, for batches in input order, sorted
     by characters (sentence-transformers' order) and sorted by tokens (ReAct's order);
  2. engines: torch eager (the stand-in for sentence-transformers' torch encode: same model,
     same pooling, same order of magnitude measured in planner_minilm), ONNX Runtime fp32,
     OpenVINO fp32 / bf16 / int8 / int8 with its float ops in bf16: throughput in alternating
     rounds (medians), quality against torch, and the wall time split into tokenization,
     engine and the rest (Python);
  3. per-op time shares from the engines' own profilers (OpenVINO `ov::enable_profiling`, ONNX
     Runtime session profiling), grouped: weight GEMMs, attention, norm + elementwise,
     layout / conversion, other;
  4. single-op OpenVINO models at minilm's shapes (M = batch x mean padded length): GFLOP/s
     of fp32, bf16 and int8 (FakeQuantize activations, int8 weights) and their ratios;
  5. the Amdahl bound: with the fp32 GEMM share g and a GEMM ratio r, no engine that only
     speeds the GEMMs up can beat 1 / ((1 - g) + g / r) over OpenVINO fp32.
Writes OUT.json and OUT.md. The CPU may be shared: every comparison is a ratio measured side
by side, in alternating rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import write_results

OUT = Path(__file__).parent / "results" / "minilm_limit"
GROUPS = ("gemm", "attention", "mask", "fused subgraph", "norm+elementwise", "layout+convert",
          "quantize", "other")
# The attention mask as the ONNX export writes it (masked_fill: Where/Select on IsNaN and
# comparisons), elementwise work on [B, 12, T, T] that fused attention would not do.
MASK_OPS = ("Where", "Select", "IsNaN", "GreaterEqual", "GreaterOrEqual", "Equal", "And",
            "Not", "Less", "Greater")
ELEMENTWISE = ("LayerNormalization", "SkipLayerNormalization", "MVN", "Gelu", "BiasGelu",
               "FastGelu", "Add", "Mul", "Multiply", "MulAdd", "Div", "Divide", "Sub",
               "Subtract", "Erf", "Sqrt", "Pow", "PowerStatic", "ReduceMean", "ReduceSum",
               "ReduceL2", "Cast", "Max", "Clip", "Eltwise", "Math", "Abs",
               "NormalizeL2")
LAYOUT = ("Transpose", "Reshape", "Unsqueeze", "Squeeze", "Concat", "Slice", "Shape",
          "ShapeOf", "Reorder", "Convert", "Broadcast", "Expand", "Flatten", "Split")


# -- 1. padding ---------------------------------------------------------------------------
def char_batches(tok: Any, texts: list[str], bs: int, max_length: int) -> list[tuple[Any, Any]]:
    """Batches in sentence-transformers' order: longest first by characters."""
    from reactinfer.tasks import tokenize

    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [(order[i:i + bs], tokenize(tok, [texts[j] for j in order[i:i + bs]], max_length))
            for i in range(0, len(order), bs)]


def padding_stats(tok: Any, texts: list[str], bs: int, max_length: int) -> dict[str, Any]:
    from reactinfer.tasks import iter_batches

    ways = {"input order": list(iter_batches(tok, texts, bs, max_length, sort_by_length=False)),
            "by characters (sentence-transformers)": char_batches(tok, texts, bs, max_length),
            "by tokens (ReAct)": list(iter_batches(tok, texts, bs, max_length))}
    real = int(sum(b["attention_mask"].sum() for _, b in ways["by tokens (ReAct)"]))
    out: dict[str, Any] = {"real_tokens": real, "mean_real_tokens": real / len(texts)}
    for name, batches in ways.items():
        padded = int(sum(b["input_ids"].size for _, b in batches))
        out[name] = {"padded_tokens": padded, "waste": round(1 - real / padded, 4),
                     "mean_width": padded / len(texts)}
    return out


# -- 2. engines ---------------------------------------------------------------------------
def ov_runner(handle: Any, precision: str, profiling: bool = False, rest: str = "fp32") -> Any:
    """The backend's runner, compiled with the float ops in `precision` (fp32 / bf16; or
    int8 with the float ops in `rest`); `profiling` turns OpenVINO's per-op counters on,
    which the backend's own prepare() does not."""
    import openvino as ov

    from reactinfer.backends.openvino import BIN_FILE, XML_FILE, OvRunner, compile_config

    core = ov.Core()
    model = core.read_model(str(handle.files[XML_FILE]), str(handle.files[BIN_FILE]))
    config = compile_config(precision, handle.backend_options.get("hint", "throughput"), None,
                            rest)
    if profiling:
        config["PERF_COUNT"] = True  # ov::enable_profiling
    return OvRunner(handle, core.compile_model(model, "CPU", config))


def engines(base: Any, bf16: bool) -> list[tuple[str, Any, Any]]:
    """(label, handle, runner) of every engine measured."""
    from reactinfer.backends import to_backend

    ort = to_backend(base, "onnxruntime", precision="fp32")
    rows = [("torch eager fp32", base, base.runner()), ("onnxruntime fp32", ort, ort.runner())]
    ov32 = to_backend(base, "openvino", precision="fp32")
    rows.append(("openvino fp32", ov32, ov32.runner()))
    if bf16:
        rows.append(("openvino bf16", ov32, ov_runner(ov32, "bf16")))
    ov8 = to_backend(base, "openvino", precision="int8")
    rows.append(("openvino int8", ov8, ov8.runner()))
    if bf16:
        rows.append(("openvino int8 + bf16 rest", ov8, ov_runner(ov8, "bf16")))
    return rows


def timed_run(runner: Any, tok: Any, texts: list[str], bs: int, ml: int) -> dict[str, float]:
    """What `run_in_order` (and so `react bench`) does, with its wall time split into
    tokenizing and padding, the engine call, and the rest (Python: indexing, copies)."""
    from reactinfer.tasks import iter_batches

    split = {"tokenize": 0.0, "engine": 0.0}
    out = np.empty((len(texts), 384), np.float32)
    t_start = time.perf_counter()
    batches = iter_batches(tok, texts, bs, ml)
    while True:
        t0 = time.perf_counter()
        item = next(batches, None)
        split["tokenize"] += time.perf_counter() - t0
        if item is None:
            break
        t0 = time.perf_counter()
        y = runner(item[1])
        split["engine"] += time.perf_counter() - t0
        out[item[0]] = y
    split["wall"] = time.perf_counter() - t_start
    return split


# -- 3. per-op shares ---------------------------------------------------------------------
def op_group(op: str, attention_matmul: bool) -> str:
    """The group of an op type (OpenVINO's executed node types, ONNX Runtime's op names)."""
    if op in ("FullyConnected", "FullyConnectedQuantizedLegacy", "Gemm", "MatMulInteger",
              "MatMulIntegerToFloat", "DynamicQuantizeMatMul") or (
            op in ("MatMul", "FusedMatMul") and not attention_matmul):
        return "gemm"
    if op in ("MatMul", "FusedMatMul", "Softmax", "ScaledDotProductAttention", "Attention",
              "MultiHeadAttention"):
        return "attention"
    if op == "Subgraph":  # OpenVINO snippets: with an additive mask, the whole attention
        return "fused subgraph"  # (matmuls, mask, softmax); else fused elementwise chains
    for group, ops in (("mask", MASK_OPS), ("norm+elementwise", ELEMENTWISE),
                       ("layout+convert", LAYOUT)):
        if op in ops:
            return group
    if op in ("FakeQuantize", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"):
        return "quantize"
    return "other"


def ov_profile(handle: Any, precision: str, batches: list[tuple[Any, Any]]) -> dict[str, Any]:
    runner = ov_runner(handle, precision, profiling=True)
    by_type: dict[str, float] = {}
    exec_prec: dict[str, str] = {}
    for _, b in batches:
        runner(b)
        rows = len(b["input_ids"])
        for req in runner.requests[:min(len(runner.requests), rows)]:
            for info in req.get_profiling_info():
                if info.status.name != "EXECUTED":
                    continue
                key = info.node_type
                by_type[key] = by_type.get(key, 0.0) + info.real_time.total_seconds()
                if key in ("FullyConnected", "MatMul"):
                    exec_prec[f"{key}:{info.exec_type}"] = "seen"
    groups: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    for key, s in by_type.items():
        groups[op_group(key, attention_matmul=True)] += s  # weight GEMMs: FullyConnected
    return shares(groups, by_type, sorted(exec_prec))


def ort_group(op: str, shapes: list[Any]) -> str:
    """Attention's matmuls multiply two rank-4 activations; the weight GEMMs a rank-2 one."""
    ranks = [len(next(iter(s.values()))) for s in shapes if isinstance(s, dict) and s]
    return op_group(op, attention_matmul=len(ranks) >= 2 and min(ranks) == 4)


def ort_profile(handle: Any, batches: list[tuple[Any, Any]], workdir: Path) -> dict[str, Any]:
    import onnxruntime as ort

    from reactinfer.backends.onnxruntime import MODEL_FILE, OrtRunner

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(workdir / "ort-profile")
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(handle.files[MODEL_FILE]), so,
                                providers=["CPUExecutionProvider"])
    runner = OrtRunner(handle, sess)
    for _, b in batches:
        runner(b)
    events = json.loads(Path(sess.end_profiling()).read_text())
    by_type: dict[str, float] = {}
    groups: dict[str, float] = dict.fromkeys(GROUPS, 0.0)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        op = e["args"].get("op_name", "?")
        s = e["dur"] / 1e6
        by_type[op] = by_type.get(op, 0.0) + s
        groups[ort_group(op, e["args"].get("input_type_shape", []))] += s
    return shares(groups, by_type, [])


def shares(groups: dict[str, float], by_type: dict[str, float], notes: list[str]
           ) -> dict[str, Any]:
    total = sum(groups.values()) or 1.0
    return {"engine_s": round(total, 4),
            "shares": {k: round(v / total, 4) for k, v in groups.items()},
            "by_type_s": {k: round(v, 4) for k, v in sorted(by_type.items(),
                                                              key=lambda kv: -kv[1])},
            "kernels": notes}


# -- 4. GEMMs at minilm's shapes ----------------------------------------------------------
def gemm_model(shape: str, m: int, k: int, n: int, int8: bool, b: int, t: int) -> Any:
    """One MatMul: weights [k, n] (`shape` 'fc'), or attention's [b,12,t,32]x[b,12,32,t]
    ('attn'). int8: FakeQuantize on activations (and on both attention inputs), int8
    weights dequantized by Convert + Multiply: OpenVINO's pattern for an int8 kernel."""
    import openvino as ov
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)

    def fq(x: Any) -> Any:
        return ops.fake_quantize(x, -4.0, 4.0, -4.0, 4.0, 256)

    if shape == "attn":
        q = ops.parameter([b, 12, t, 32], np.float32, name="q")
        kk = ops.parameter([b, 12, 32, t], np.float32, name="k")
        out = ops.matmul(fq(q) if int8 else q, fq(kk) if int8 else kk, False, False)
        return ov.Model([out], [q, kk])
    x = ops.parameter([m, k], np.float32, name="x")
    w = rng.standard_normal((n, k)).astype(np.float32) * 0.05
    if int8:
        wq = ops.constant(np.clip(np.round(w / 0.002), -127, 127).astype(np.int8))
        wf = ops.multiply(ops.convert(wq, np.float32), ops.constant(np.float32(0.002)))
        out = ops.matmul(fq(x), wf, False, True)
    else:
        out = ops.matmul(x, ops.constant(w), False, True)
    return ov.Model([out], [x])


def gemm_bench(b: int, t: int, rounds: int, bf16: bool, min_s: float = 0.3) -> list[dict]:
    import openvino as ov

    core = ov.Core()
    b = max(1, b // 2)  # what one of the runner's two streams gets: half the batch, 1 thread
    m = b * t
    shapes = [("fc", "Q/K/V/O [M,384]x[384,384]", 384, 384, 4),
              ("fc", "FFN up [M,384]x[384,1536]", 384, 1536, 1),
              ("fc", "FFN down [M,1536]x[1536,384]", 1536, 384, 1),
              ("attn", "attention QK^T [B,12,T,32]x[B,12,32,T]", 32, 0, 2)]
    kinds = [("fp32", False, "f32"), ("int8", True, "f32")]
    if bf16:
        kinds[1:1] = [("bf16", False, "bf16")]
        kinds.append(("int8 + bf16 rest", True, "bf16"))
    rows = []
    for shape, label, k, n, per_layer in shapes:
        flops = 2 * m * k * n if shape == "fc" else 2 * b * 12 * t * t * 32
        compiled = {}
        for name, int8, prec in kinds:
            c = core.compile_model(gemm_model(shape, m, k, n, int8, b, t), "CPU",
                                   {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1,
                                    "INFERENCE_PRECISION_HINT": prec})
            req = c.create_infer_request()
            feed = {p.get_any_name(): np.random.default_rng(1).standard_normal(
                list(p.get_shape())).astype(np.float32) for p in c.inputs}
            rt = [(op.get_rt_info()["layerType"].astype(str),
                   op.get_rt_info()["runtimePrecision"].astype(str))
                  for op in c.get_runtime_model().get_ops()
                  if op.get_rt_info()["layerType"].astype(str) in ("FullyConnected", "MatMul")]
            compiled[name] = (req, feed, rt)
        times: dict[str, list[float]] = {name: [] for name, _, _ in kinds}
        for _ in range(rounds):
            for name, (req, feed, _) in compiled.items():
                req.infer(feed)  # warm
                n_runs, t0 = 0, time.perf_counter()
                while time.perf_counter() - t0 < min_s:
                    req.infer(feed)
                    n_runs += 1
                times[name].append((time.perf_counter() - t0) / n_runs)
        row: dict[str, Any] = {"op": label, "M": m, "per_layer": per_layer, "gflops": {},
                               "kernel": {}}
        for name in times:
            row["gflops"][name] = round(flops / statistics.median(times[name]) / 1e9, 1)
            row["kernel"][name] = compiled[name][2]
        for name in times:
            row.setdefault("x_fp32", {})[name] = round(
                row["gflops"][name] / row["gflops"]["fp32"], 2)
        row["flops"] = flops
        rows.append(row)
    return rows


def weighted_ratio(rows: list[dict], kind: str, what: str) -> float:
    """The time-weighted ratio over the ops of `what` ('fc' rows or the attention row): the
    fp32 time of one layer's worth of them over the `kind` time."""
    sel = [r for r in rows if r["op"].startswith("attention") == (what == "attn")]
    t32 = sum(r["flops"] * r["per_layer"] / r["gflops"]["fp32"] for r in sel)
    tk = sum(r["flops"] * r["per_layer"] / r["gflops"][kind] for r in sel)
    return t32 / tk


# -- 5. the bound -------------------------------------------------------------------------
def amdahl(profile: dict[str, Any], gemm_ratio: float, attn_ratio: float) -> float:
    """Speedup over this profile's engine when only its GEMMs and attention matmuls run
    `gemm_ratio` / `attn_ratio` times faster and everything else takes the same time."""
    s = profile["shares"]
    return 1 / ((1 - s["gemm"] - s["attention"]) + s["gemm"] / gemm_ratio
                + s["attention"] / attn_ratio)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n-texts", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--render", action="store_true",
                    help="recompute the bounds and the table from OUT.json; measure nothing")
    a = ap.parse_args()
    if a.render:
        write(json.loads(Path(a.out).with_suffix(".json").read_text()), Path(a.out))
        return

    import tempfile

    import reactinfer as ri
    from reactinfer.core.hardware import hardware_profile, native_bf16, package_versions
    from reactinfer.data import texts_for
    from reactinfer.tasks import get_task, iter_batches, tokenize

    hw = hardware_profile()
    bf16 = native_bf16(hw.isa)
    base = ri.load("minilm")
    tok, bs, ml = base.tokenizer, a.batch_size, base.max_length
    texts = texts_for("eval", limit=a.n_texts)
    task = get_task("embedding")
    padding = padding_stats(tok, texts, bs, ml)
    print(json.dumps(padding), file=sys.stderr)
    rows = engines(base, bf16)
    ref = task.evaluate(rows[0][2], tok, texts, bs, ml)
    result: dict[str, Any] = {"engines": {}}
    for label, _, runner in rows:
        q = task.compare(ref, task.evaluate(runner, tok, texts, bs, ml))
        result["engines"][label] = {"mean_cosine": round(q["mean_cosine"], 5),
                                    "top10_recall": round(q["top10_recall"], 4),
                                    "items_per_s_char_order": []}
    token_b = list(iter_batches(tok, texts, bs, ml))
    char_b = char_batches(tok, texts, bs, ml)
    lengths = np.array([len(tok(t, truncation=True, max_length=ml)["input_ids"]) for t in texts])
    halves = {"short": [texts[i] for i in np.argsort(lengths, kind="stable")[:len(texts) // 2]],
              "long": [texts[i] for i in np.argsort(lengths, kind="stable")[len(texts) // 2:]]}
    for r in range(a.rounds):  # alternate: every engine and order once per round
        for label, _, runner in rows:
            e = result["engines"][label]
            e.setdefault("runs", []).append(timed_run(runner, tok, texts, bs, ml))
            t0 = time.perf_counter()
            for idx, _ in char_b:  # sentence-transformers' order, tokenized per batch
                runner(tokenize(tok, [texts[i] for i in idx], ml))
            e["items_per_s_char_order"].append(len(texts) / (time.perf_counter() - t0))
            for half, sub in halves.items():
                w = timed_run(runner, tok, sub, bs, ml)["wall"]
                e.setdefault(f"items_per_s_{half}_half", []).append(len(sub) / w)
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr)
    for e in result["engines"].values():
        e["items_per_s"] = [len(texts) / run["wall"] for run in e["runs"]]
    torch = result["engines"]["torch eager fp32"]
    for e in result["engines"].values():
        med = statistics.median(e["items_per_s"])
        e["median_items_per_s"] = round(med, 1)
        e["median_items_per_s_char_order"] = round(statistics.median(
            e["items_per_s_char_order"]), 1)
        e["x_token_vs_char_order"] = round(med / e["median_items_per_s_char_order"], 3)
        e["x_torch"] = round(med / statistics.median(torch["items_per_s"]), 2)
        for half in halves:
            key = f"items_per_s_{half}_half"
            e[f"x_torch_{half}_half"] = round(statistics.median(e[key]) / statistics.median(
                torch[key]), 2)
        e["wall_split"] = {k: round(statistics.median(run[k] / run["wall"] for run in e["runs"]),
                                    3) for k in ("tokenize", "engine")}
        e["wall_split"]["python+other"] = round(
            1 - e["wall_split"]["tokenize"] - e["wall_split"]["engine"], 3)
    for e in result["engines"].values():  # rounded only once every ratio is taken
        for k in [k for k in e if k.startswith("items_per_s")]:
            e[k] = [round(x, 2) for x in e[k]]
        e["runs"] = [{k: round(v, 4) for k, v in run.items()} for run in e["runs"]]
    result["halves_mean_tokens"] = {
        "short": float(np.sort(lengths)[:len(texts) // 2].mean()),
        "long": float(np.sort(lengths)[len(texts) // 2:].mean())}

    with tempfile.TemporaryDirectory() as work:
        prof = {label: (ov_profile(h, "bf16" if "bf16" in label else "fp32", token_b)
                        if label.startswith("openvino") else
                        ort_profile(h, token_b, Path(work)) if label.startswith("onnx")
                        else None) for label, h, _ in rows}
    for label, p in prof.items():
        if p is not None:
            result["engines"][label]["profile"] = p
    t_mean = int(round(padding["by tokens (ReAct)"]["mean_width"]))
    result["gemm"] = gemm_bench(bs, t_mean, a.rounds, bf16)
    result.update(padding=padding, n_texts=len(texts), batch_size=bs, rounds=a.rounds,
                  mean_padded_width=t_mean, hardware=hw.to_dict(), hardware_summary=hw.summary(),
                  versions=package_versions(("reactinfer", "torch", "transformers", "numpy",
                                             "onnxruntime", "openvino", "nncf")),
                  command="PYTHONPATH=src python benchmarks/minilm_limit.py " +
                  " ".join(sys.argv[1:]))
    write(result, Path(a.out))


def bounds(result: dict[str, Any]) -> dict[str, Any]:
    """For each format: its GEMM and attention ratios over fp32, from the single-op models
    ('micro') and from the engines' own profiles of the whole model ('in model': fp32's
    seconds in the group over the format's, on the same batches), and the Amdahl bound of
    each over OpenVINO fp32 (engine time, then wall time with tokenizing and Python as they
    were) and over torch."""
    ov32 = result["engines"]["openvino fp32"]
    p32 = ov32["profile"]
    out = {}
    for kind in [k for k in result["gemm"][0]["gflops"] if k != "fp32"]:
        label = {"int8 + bf16 rest": "openvino int8 + bf16 rest"}.get(kind, f"openvino {kind}")
        measured = result["engines"].get(label)
        micro = (weighted_ratio(result["gemm"], kind, "fc"),
                 weighted_ratio(result["gemm"], kind, "attn"))
        ratios: dict[str, tuple[float, ...]] = {"micro": micro}
        if measured is not None and "profile" in measured:
            pk = measured["profile"]
            # kernel time over the same batches: steadier than throughput on a shared CPU
            row_profiled = round(p32["engine_s"] / pk["engine_s"], 2)
            ratios["in model"] = tuple(
                p32["shares"][g] * p32["engine_s"] / (pk["shares"][g] * pk["engine_s"])
                for g in ("gemm", "attention"))
        else:
            row_profiled = None
        row: dict[str, Any] = {"profiled_engine_x_ov_fp32": row_profiled,
                               "measured_x_ov_fp32": None, "measured_x_torch": None}
        if measured is not None:
            row["measured_x_ov_fp32"] = round(measured["median_items_per_s"]
                                              / ov32["median_items_per_s"], 2)
            row["measured_x_torch"] = measured["x_torch"]
        for src, (g, at) in ratios.items():
            engine = amdahl(p32, g, at)
            e_share = ov32["wall_split"]["engine"]  # tokenizing and Python do not speed up
            over_fp32 = 1 / ((1 - e_share) + e_share / engine)
            row[src] = {"gemm_ratio": round(g, 2), "attention_ratio": round(at, 2),
                        "bound_engine_x_ov_fp32": round(engine, 2),
                        "bound_x_ov_fp32": round(over_fp32, 2),
                        "bound_x_torch": round(over_fp32 * ov32["x_torch"], 2)}
        out[kind] = row
    return out


def write(result: dict[str, Any], out: Path) -> None:
    result["bound"] = bounds(result)
    write_results(out, result, markdown(result), indent=1)


def markdown(r: dict[str, Any]) -> str:
    lines = ["# minilm on this CPU: where the time goes, and the limit\n",
             f"`{r['command']}` — {r['n_texts']} held-out eval texts, batch {r['batch_size']},"
             f" medians of {r['rounds']} alternating rounds. CPU: {r['hardware_summary']}. "
             "The CPU was shared with other work while this ran: compare ratios, not absolute "
             "figures.\n", "## Padding\n",
             f"Real tokens: {r['padding']['real_tokens']} "
             f"({r['padding']['mean_real_tokens']:.1f} per text).\n",
             "| batches | tokens run | padding waste | mean width |", "|---|---|---|---|"]
    for k, v in r["padding"].items():
        if isinstance(v, dict):
            lines.append(f"| {k} | {v['padded_tokens']} | {v['waste']:.1%} | "
                         f"{v['mean_width']:.1f} |")
    lines += ["", "## Engines\n", "| engine | items/s | ×torch | ×torch short half | "
              "×torch long half | token order / char order | tokenize | engine | python+other"
              " | mean cos | top-10 recall |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for k, e in r["engines"].items():
        w = e["wall_split"]
        lines.append(f"| {k} | {e['median_items_per_s']} | {e['x_torch']} | "
                     f"{e['x_torch_short_half']} | {e['x_torch_long_half']} | "
                     f"×{e['x_token_vs_char_order']} | {w['tokenize']:.0%} | {w['engine']:.0%} "
                     f"| {w['python+other']:.0%} | {e['mean_cosine']:.4f} | "
                     f"{e['top10_recall']:.3f} |")
    lines += ["", "## Engine time by op group (the engines' profilers)\n",
              "| engine | " + " | ".join(GROUPS) + " | ×torch if its GEMMs took no time | "
              "top op types (s) |", "|---|" + "---|" * (len(GROUPS) + 2)]
    for k, e in r["engines"].items():
        if "profile" in e:
            p = e["profile"]
            top = ", ".join(f"{t} {s:.2f}" for t, s in list(p["by_type_s"].items())[:5])
            free = e["x_torch"] / (e["wall_split"]["engine"] * (1 - p["shares"]["gemm"])
                                   + 1 - e["wall_split"]["engine"])
            lines.append(f"| {k} | " + " | ".join(f"{p['shares'].get(g, 0):.0%}" for g in GROUPS)
                         + f" | {free:.1f} | {top} |")
    lines += ["", f"## GEMMs at minilm's shapes (OpenVINO single-op models, 1 thread, M = "
              f"{r['batch_size'] // 2} x {r['mean_padded_width']}: one stream's half batch)\n",
              "| op | " + " | ".join(f"{k} GFLOP/s" for k in r["gemm"][0]["gflops"]) +
              " | " + " | ".join(f"{k} ×fp32" for k in r["gemm"][0]["gflops"] if k != "fp32")
              + " |", "|---|" + "---|" * (2 * len(r["gemm"][0]["gflops"]) - 1)]
    for g in r["gemm"]:
        lines.append(f"| {g['op']} | " + " | ".join(str(v) for v in g["gflops"].values()) +
                     " | " + " | ".join(f"{v}" for k, v in g["x_fp32"].items() if k != "fp32")
                     + " |")
    lines += ["", "## The bound (Amdahl, from OpenVINO fp32's profile and wall split)\n",
              "Only the GEMMs and attention's matmuls speed up, by the ratios above; every other "
              "op, tokenizing and Python take what they took in OpenVINO fp32.\n",
              "| format | GEMM ratios from | GEMM ×fp32 | attention ×fp32 | engine bound ×OV "
              "fp32 | profiled engine ×OV fp32 | bound ×OV fp32 | measured ×OV fp32 | "
              "bound ×torch | measured ×torch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for k, row in r["bound"].items():
        for src in ("micro", "in model"):
            if src in row:
                b = row[src]
                lines.append(f"| {k} | {src} | {b['gemm_ratio']} | {b['attention_ratio']} | "
                             f"{b['bound_engine_x_ov_fp32']} | "
                             f"{row['profiled_engine_x_ov_fp32']} | {b['bound_x_ov_fp32']} | "
                             f"{row['measured_x_ov_fp32']} | {b['bound_x_torch']} | "
                             f"{row['measured_x_torch']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
