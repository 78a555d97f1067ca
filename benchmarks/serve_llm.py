"""LLM serving, side by side in one run: ReAct's server (`react serve smollm2`: llama.cpp
decode engine, continuous batching) against llama-cpp-python's own server
(`python -m llama_cpp.server --interrupt_requests False`) on the same packaged GGUF.

For 1, 4 and 8 concurrent streaming chats (max_tokens fixed, greedy), per server:
aggregate tokens/s, p50/p99 time to first token, p50/p99 gap between streamed tokens.
"1 concurrent" runs the same 8 chats one after another: the ×N columns compare with it.
Every run's questions start with a tag of its own ("Session 8.1."), the same for both
servers: no run finds its prompts in a server's prompt cache from an earlier one.
Both servers are up together and take turns setting by setting, round by round, so a
slow spell of a shared machine hits both. Also measured: each server's start-up (launch
until ready), the batched-decode roofline (B sequences per llama_decode step, straight on
the engine), the 8 chats arriving together on the engine by tokens per step (128, the
old prompt cap, vs 512: the last one's first token), where a decode step of 8 streams
goes (llama_decode vs Python), and the hardware profile.

    PYTHONPATH=src python benchmarks/serve_llm.py            # writes results/serve_llm.*
    PYTHONPATH=src python benchmarks/serve_llm.py --quick    # 1 round, fewer tokens
    PYTHONPATH=src python benchmarks/serve_llm.py --baseline /path/to/other/checkout
        # before/after: also serves ReAct from that checkout's src/ ("react@baseline")
    PYTHONPATH=src python benchmarks/serve_llm.py --engine-only   # no servers

llama_cpp.server needs the extra `llama-cpp-python[server]` (fastapi, uvicorn,
sse-starlette, starlette-context, pydantic-settings).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from _common import ROOT, serving, write_results

from reactinfer.core.hardware import hardware_profile, package_versions
from reactinfer.models.zoo import BUILTINS

THREADS = os.cpu_count() or 1
QUESTIONS = ["Write a short story about a lighthouse keeper.",
             "Explain how a bicycle works, step by step.",
             "Describe the water cycle in detail.",
             "Write a poem about the autumn forest.",
             "Give advice to a new programmer, in several points.",
             "Describe a busy market in a small town.",
             "Explain why the sky is blue.",
             "Tell a story about a cat who learns to fly."]


@contextlib.contextmanager
def process(cmd: list[str], ready_path: str, timeout_s: float = 600, src: Path = ROOT
            ) -> Iterator[tuple[str, float]]:
    """Run a server until the block ends; yield its base URL and its start-up time (from
    the launch until `ready_path` answers 200). `src`: the checkout whose src/ it runs."""
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as log, \
            serving(cmd, ready_path, dict(os.environ, PYTHONPATH=str(src / "src")),
                    timeout_s=timeout_s, poll_s=0.2, log=log) as (base, _):
        yield base, time.monotonic() - t0


async def one_chat(client: httpx.AsyncClient, model: str, question: str, max_tokens: int
                   ) -> dict[str, Any]:
    """One streaming chat: when it was sent, each content chunk's arrival, its text."""
    body = {"model": model, "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True}
    t0, arrivals, text, status = time.perf_counter(), [], "", 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        status = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
            if delta:
                arrivals.append(time.perf_counter())
                text += delta
    return {"t0": t0, "arrivals": arrivals, "text": text, "status": status}


async def run_setting(base: str, model: str, concurrency: int, max_tokens: int,
                      tag: str = "") -> dict[str, Any]:
    """The 8 questions, `concurrency` at a time (1: one after another). `tag` starts every
    question ("Session TAG."): a run with a tag of its own finds none of its prompts in a
    server's prompt cache (ReAct's prefix cache, llama_cpp.server's `cache_prompt`)."""
    sem = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        async def go(q: str) -> dict[str, Any]:
            async with sem:
                return await one_chat(client, model, q, max_tokens)

        start = time.perf_counter()
        outs = await asyncio.gather(*(go(f"Session {tag}. {q}" if tag else q)
                                      for q in QUESTIONS))
        wall = time.perf_counter() - start
    ttft = [o["arrivals"][0] - o["t0"] for o in outs if o["arrivals"]]
    gaps = [b - a for o in outs for a, b in zip(o["arrivals"], o["arrivals"][1:], strict=False)]
    chunks = sum(len(o["arrivals"]) for o in outs)
    return {"concurrency": concurrency, "wall_s": wall, "chunks": chunks,
            "chunks_per_s": chunks / wall, "statuses": sorted({o["status"] for o in outs}),
            "ttft_p50_ms": _ms(ttft, 50), "ttft_p99_ms": _ms(ttft, 99),
            "last_first_token_ms": max(ttft) * 1e3 if ttft else None,
            "gap_p50_ms": _ms(gaps, 50), "gap_p99_ms": _ms(gaps, 99),
            "texts": [o["text"] for o in outs]}


def _ms(xs: list[float], q: float) -> float | None:
    return float(np.percentile(xs, q) * 1e3) if xs else None


def roofline(path: Path, tokens: int) -> list[dict[str, Any]]:
    """B sequences decoding together, one llama_decode per step, on the engine."""
    from llama_cpp import Llama

    from reactinfer.backends.llamacpp_engine import DecodeEngine

    llm = Llama(model_path=str(path), n_ctx=256, n_threads=THREADS, verbose=False)
    eng = DecodeEngine(llm._model, llm.n_vocab(), THREADS, 512, 8, 64)
    prompt = llm.tokenize(b"Once upon a time")
    rows: list[dict[str, Any]] = []
    for b in (1, 4, 8, 1, 4, 8):  # twice, alternating: the better of the two counts
        sids = [eng.start(prompt, tokens) for _ in range(b)]
        out = eng.step().logits  # the prompts
        t0 = time.perf_counter()
        for _ in range(tokens - 1):
            for s in sids:
                eng.feed(s, int(out[s].argmax()))
            out = eng.step().logits
        dt = (time.perf_counter() - t0) / (tokens - 1)
        for s in sids:
            eng.release(s)
        rows.append({"B": b, "step_ms": dt * 1e3, "tokens_per_s": b / dt})
    best: dict[int, dict[str, Any]] = {}
    for r in rows:
        if r["B"] not in best or r["step_ms"] < best[r["B"]]["step_ms"]:
            best[r["B"]] = r
    base = best[1]["tokens_per_s"]
    return [{**r, "x": r["tokens_per_s"] / base} for r in best.values()]


def chat_prompts(handle: Any) -> list[list[int]]:
    """The benchmark's 8 questions as the server tokenizes them (the model's template)."""
    from reactinfer.serving.openai import chat_prompt

    return [list(handle.tokenizer(chat_prompt(handle.tokenizer, [
        {"role": "user", "content": q}]))["input_ids"]) for q in QUESTIONS]


def burst(handle: Any, budgets: tuple[int, ...] = (128, 512), tokens: int = 16,
          rounds: int = 2) -> list[dict[str, Any]]:
    """The 8 chats arriving together, straight on the engine (no HTTP), per step budget
    (tokens per llama_decode; 128 was the old prompt cap): when the last one's first
    token comes, and the mean step of the decoding streams meanwhile. Budgets alternate
    round by round; the better round counts."""
    from reactinfer.serving.decode import SLOTS

    runner, prompts = handle.runner(), chat_prompts(handle)
    engines = {b: runner.decode_engine(SLOTS, b) for b in budgets}
    best: dict[int, dict[str, Any]] = {}
    for _ in range(rounds):
        for b, eng in engines.items():
            sids = [eng.start(p, tokens) for p in prompts]
            t0, steps = time.perf_counter(), []
            firsts: dict[int, float] = {}
            while len(firsts) < len(sids):
                ts = time.perf_counter()
                out = eng.step()
                steps.append(time.perf_counter() - ts)
                for sid, logits in out.logits.items():
                    firsts.setdefault(sid, time.perf_counter() - t0)
                    eng.feed(sid, int(logits.argmax()))
            for sid in sids:
                eng.release(sid)
            row = {"step_tokens": b, "prompt_tokens": sum(map(len, prompts)),
                   "steps": len(steps), "last_first_token_ms": max(firsts.values()) * 1e3,
                   "p50_first_token_ms": float(np.median(list(firsts.values()))) * 1e3,
                   "longest_step_ms": max(steps) * 1e3}
            if b not in best or row["last_first_token_ms"] < best[b]["last_first_token_ms"]:
                best[b] = row
    return list(best.values())


def step_profile(handle: Any, tokens: int = 64) -> dict[str, Any]:
    """Where a decode step of 8 streams goes: llama_decode itself, the rest of the
    engine's step (batch building, logits views), and the server's per-token work
    (sampling, incremental detokenising, stop strings) as the serving loop does it."""
    from reactinfer.serving.decode import SLOTS, TextStream
    from reactinfer.tasks.sampling import Sampling, pick_token

    eng = handle.runner().decode_engine(SLOTS)
    prompts, greedy, rng = chat_prompts(handle), Sampling(), np.random.default_rng(0)
    sids = [eng.start(p, tokens) for p in prompts]
    texts = {sid: TextStream(handle.tokenizer, ["\n\n\n"]) for sid in sids}
    t = {"decode": 0.0, "engine": 0.0, "tokens": 0.0}
    n = 0
    while True:
        t0 = time.perf_counter()
        out = eng.step()
        t1 = time.perf_counter()
        for sid, logits in out.logits.items():
            tok = pick_token(logits, greedy, rng)
            texts[sid].push(tok)
            if len(texts[sid].tokens) < tokens:
                eng.feed(sid, tok)
        t2 = time.perf_counter()
        if out.tokens == len(sids):  # decode-only steps
            t["decode"] += out.decode_s
            t["engine"] += t1 - t0 - out.decode_s
            t["tokens"] += t2 - t1
            n += 1
        if all(len(x.tokens) >= tokens for x in texts.values()):
            break
    for sid in sids:
        eng.release(sid)
    total = sum(t.values())
    return {"steps": n, "step_ms": total / n * 1e3,
            **{f"{k}_ms": v / n * 1e3 for k, v in t.items()},
            **{f"{k}_share": v / total for k, v in t.items()}}


def markdown(r: dict[str, Any]) -> str:
    hw = r["hardware"]
    lines = ["# LLM serving: ReAct vs llama_cpp.server (same GGUF)", "",
             f"Model: {r['model']}; {r['max_tokens']} new tokens per chat (greedy), 8 chats "
             f"per setting, {r['rounds']} round(s), best round per cell. CPU: "
             f"{hw.get('cpu_model', '?')}, {THREADS} threads. "
             f"{r.get('note', '')} Compare ratios within this run. Every run's prompts are "
             "new to both servers (a tag of its own).".strip(), "",
             "| server | concurrent | tokens/s | × sequential | p50 TTFT ms | p99 TTFT ms | "
             "last first token ms | p50 gap ms | p99 gap ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, settings in r["servers"].items():
        seq = settings["1"]["chunks_per_s"]
        for c, s in settings.items():
            lines.append(f"| {name} | {c} | {s['chunks_per_s']:.1f} | "
                         f"×{s['chunks_per_s'] / seq:.2f} | {s['ttft_p50_ms']:.0f} | "
                         f"{s['ttft_p99_ms']:.0f} | {s['last_first_token_ms']:.0f} | "
                         f"{s['gap_p50_ms']:.1f} | {s['gap_p99_ms']:.1f} |")
    if r["startup_s"]:
        lines += ["", "Start-up (launch until ready, one server at a time): " + ", ".join(
            f"{name} {s:.1f} s" for name, s in r["startup_s"].items()) + "."]
    if r["ratio_at_8"] is not None:
        lines += ["", f"ReAct / llama_cpp.server at 8 streams: ×{r['ratio_at_8']:.2f} aggregate "
                  "tokens/s (tokens counted as streamed content chunks)."]
    lines += ["",
              "Batched-decode roofline (one llama_decode per step, B sequences):", "",
              "| B | step ms | tokens/s | × B=1 |", "|---|---|---|---|"]
    lines += [f"| {x['B']} | {x['step_ms']:.1f} | {x['tokens_per_s']:.0f} | ×{x['x']:.2f} |"
              for x in r["roofline"]]
    lines += ["", "8 chats arriving together, on the engine (no HTTP), by tokens per step:", "",
              "| tokens per step | prompt tokens | steps to the last first token | last first "
              "token ms | p50 first token ms | longest step ms |", "|---|---|---|---|---|---|"]
    lines += [f"| {x['step_tokens']} | {x['prompt_tokens']} | {x['steps']} | "
              f"{x['last_first_token_ms']:.0f} | {x['p50_first_token_ms']:.0f} | "
              f"{x['longest_step_ms']:.0f} |" for x in r["burst"]]
    p = r["step_profile"]
    lines += ["", f"A decode step of 8 streams ({p['steps']} steps): {p['step_ms']:.1f} ms = "
              f"llama_decode {p['decode_ms']:.1f} ms ({p['decode_share']:.0%}) + engine "
              f"Python {p['engine_ms']:.2f} ms ({p['engine_share']:.0%}) + sampling and "
              f"detokenising {p['tokens_ms']:.2f} ms ({p['tokens_share']:.0%})."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="1 round, 16 tokens")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="how the machine was while this ran")
    ap.add_argument("--baseline", metavar="CHECKOUT", help="also serve ReAct from another "
                    "checkout (its src/), as 'react@baseline': a before/after in one run")
    ap.add_argument("--engine-only", action="store_true", help="no servers: the roofline, "
                    "the burst of 8 chats by step budget, and the step profile only")
    ap.add_argument("--no-llamacpp-server", action="store_true",
                    help="leave llama_cpp.server out (ReAct alone, or against --baseline)")
    a = ap.parse_args()
    rounds, max_tokens = (1, 16) if a.quick else (a.rounds, a.max_tokens)
    gguf = BUILTINS["smollm2"].path()
    react = [sys.executable, "-m", "reactinfer", "serve", "smollm2", "--cache-size", "0",
             "--slo-ms", "30000"]
    theirs = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf),
              "--interrupt_requests", "False", "--n_threads", str(THREADS),
              "--n_threads_batch", str(THREADS), "--n_ctx", "2048"]
    servers = {} if a.engine_only else {"react": (react, "/v2/health/ready", ROOT)}
    if a.baseline:
        servers["react@baseline"] = (react, "/v2/health/ready", Path(a.baseline).resolve())
    if not (a.no_llamacpp_server or a.engine_only):
        servers["llama_cpp.server"] = (theirs, "/v1/models", ROOT)
    results: dict[str, dict[str, Any]] = {name: {} for name in servers}
    startup: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        bases = {}
        for name, (cmd, ready, src) in servers.items():  # one at a time: start-up alone
            bases[name], startup[name] = stack.enter_context(process(cmd, ready, src=src))
            print(name, f"ready after {startup[name]:.1f} s", flush=True)
        for c in (1, 4, 8):
            for k in range(rounds):
                for name, base in bases.items():  # new prompts to each, the same to both
                    s = asyncio.run(run_setting(base, "smollm2", c, max_tokens, f"{c}.{k}"))
                    best = results[name].get(str(c))
                    if best is None or s["chunks_per_s"] > best["chunks_per_s"]:
                        results[name][str(c)] = s
                    print(name, c, f"{s['chunks_per_s']:.1f} tok/s, last first token "
                          f"{s['last_first_token_ms']:.0f} ms", flush=True)
    theirs8 = results.get("llama_cpp.server", {}).get("8")
    r = {"model": "smollm2 (packaged GGUF Q4_1)", "max_tokens": max_tokens, "rounds": rounds,
         "note": a.note, "command": "python benchmarks/serve_llm.py " + " ".join(sys.argv[1:]),
         "servers": results, "startup_s": startup,
         "hardware": dataclasses.asdict(hardware_profile()),
         "versions": package_versions(),
         "ratio_at_8": results["react"]["8"]["chunks_per_s"] / theirs8["chunks_per_s"]
         if theirs8 and "react" in results else None,
         "roofline": roofline(gguf, max_tokens)}
    from reactinfer.serving.app import gguf_on_llamacpp

    handle = gguf_on_llamacpp("smollm2")
    assert handle is not None
    r["burst"], r["step_profile"] = burst(handle), step_profile(handle)
    write_results(Path(a.out) / "serve_llm", r, markdown(r) + "\n")


if __name__ == "__main__":
    main()
