"""Prefix cache, measured through `react serve smollm2`: multi-turn chats that share a
system prompt of about 400 tokens (streaming, greedy, the OpenAI chat API).

Per round (each round's system prompt is new to the server, so "cold" is cold):
- a chat's first turn alone (cold: nothing cached), then its second turn (the first
  turn's prompt and answer are cached): time to first token of each;
- 8 chats at once with the system prompt the server has now seen (warm), each with a
  short question: the last of the 8 first tokens;
- 8 chats at once with a system prompt it has never seen (cold: one of them evaluates
  it, the others wait for it and copy it).
The /metrics prefix-cache counters (hit rate, tokens saved) are read at the end.

    PYTHONPATH=src python benchmarks/serve_prefix.py             # results/serve_prefix.*
    PYTHONPATH=src python benchmarks/serve_prefix.py --baseline /path/to/checkout
        # before/after in one run: also serves that checkout's src/ ("react@baseline")
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import ROOT, hardware, median, serving, table_head, write_results

MODEL = "smollm2"
RULES = ["Answer in plain English, in short sentences.", "Never invent facts; say when you "
         "do not know.", "Prefer lists when there are several steps.", "Keep code samples "
         "short and runnable.", "Quote units with every number.", "Be polite but brief.",
         "Ask one clarifying question when the request is ambiguous.", "Do not repeat the "
         "question back.", "Summaries come first, details after.", "Use the metric system."]
# about 400 tokens with smollm2's tokenizer (the server reports the exact count)
SYSTEM = ("You are the help desk assistant of a small hardware shop that sells tools, "
          "garden supplies, paint and building materials. " +
          " ".join(f"Rule {i + 1}: {r}" for i, r in enumerate(RULES * 3)) +
          " Opening hours are 8 to 18 on weekdays and 9 to 13 on Saturdays. Deliveries "
          "within 20 km are free above 100 euros. Returns are accepted within 30 days "
          "with the receipt. Paint can be mixed to any colour code while you wait.")
QUESTIONS = ["Do you sell ladders?", "When are you open on Saturday?",
             "Can I return a drill?", "Is delivery free?", "Can you mix blue paint?",
             "Which saw cuts metal?", "Do you have garden hoses?", "How do I fix a tap?"]
FOLLOW_UP = "And how much does that cost?"


async def chat(client: httpx.AsyncClient, messages: list[dict[str, str]], max_tokens: int
               ) -> dict[str, Any]:
    """One streaming chat: seconds to its first content token (from the first try: a
    429 is retried after its Retry-After, and counted), and its text."""
    body = {"model": MODEL, "messages": messages, "max_tokens": max_tokens,
            "temperature": 0, "stream": True}
    t0, first, text, refused = time.perf_counter(), None, "", 0
    while True:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code == 429 and refused < 20:
                refused += 1
                await asyncio.sleep(float(r.headers.get("retry-after", 1)))
                continue
            r.raise_for_status()
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                delta = json.loads(line[6:])["choices"][0].get("delta", {}).get("content")
                if delta:
                    first = first or time.perf_counter()
                    text += delta
            break
    return {"ttft_s": (first or time.perf_counter()) - t0, "text": text, "refused": refused}


def system(tag: str) -> dict[str, str]:
    # the tag leads: a new tag shares (almost) nothing with earlier prompts
    return {"role": "system", "content": f"Session {tag}. {SYSTEM}"}


async def one_round(base: str, r: int, max_tokens: int) -> dict[str, float]:
    async with httpx.AsyncClient(base_url=base, timeout=600) as c:
        sys_msg = system(f"{r}a")
        turn1 = [sys_msg, {"role": "user", "content": QUESTIONS[0]}]
        first = await chat(c, turn1, max_tokens)
        turn2 = turn1 + [{"role": "assistant", "content": first["text"]},
                         {"role": "user", "content": FOLLOW_UP}]
        second = await chat(c, turn2, max_tokens)
        warm = await asyncio.gather(*(chat(c, [sys_msg, {"role": "user", "content": q}],
                                           max_tokens) for q in QUESTIONS))
        cold_sys = system(f"{r}b")
        cold = await asyncio.gather(*(chat(c, [cold_sys, {"role": "user", "content": q}],
                                           max_tokens) for q in QUESTIONS))
    return {"turn1_cold_ttft_s": first["ttft_s"], "turn2_ttft_s": second["ttft_s"],
            "turn2_over_turn1": second["ttft_s"] / first["ttft_s"],
            "burst8_warm_last_ttft_s": max(o["ttft_s"] for o in warm),
            "burst8_cold_last_ttft_s": max(o["ttft_s"] for o in cold),
            "refused_429": sum(o["refused"] for o in [first, second, *warm, *cold])}


def prefix_metrics(base: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("react_prefix_cache_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def prompt_tokens(base: str) -> int:
    body = {"model": MODEL, "max_tokens": 1, "messages": [system("count"), {
        "role": "user", "content": QUESTIONS[0]}]}
    return int(httpx.post(base + "/v1/chat/completions", json=body, timeout=600)
               .json()["usage"]["prompt_tokens"])


def markdown(r: dict[str, Any]) -> str:
    lines = [f"# Prefix cache ({r.get('model', MODEL)}): chats sharing a "
             f"{r['prompt_tokens']}-token system prompt (prompt of one first turn), "
             f"{r['max_tokens']} tokens each, median of {r['rounds']} rounds", "",
             r["hardware_summary"], "",
             *table_head("server", "turn 1 TTFT (cold)", "turn 2 TTFT", "turn2/turn1",
                         "8 at once, warm: last first token",
                         "8 at once, cold: last first token")]
    for name, m in r["servers"].items():
        med = m["median"]
        lines.append(f"| {name} | {med['turn1_cold_ttft_s']:.3f} s | "
                     f"{med['turn2_ttft_s']:.3f} s | ×{med['turn2_over_turn1']:.2f} | "
                     f"{med['burst8_warm_last_ttft_s']:.3f} s | "
                     f"{med['burst8_cold_last_ttft_s']:.3f} s |")
    for name, m in r["servers"].items():
        if m["metrics"]:
            lines += ["", f"{name} /metrics: " + ", ".join(
                f"{k} = {v:g}" for k, v in sorted(m["metrics"].items()))]
    if r["note"]:
        lines += ["", r["note"]]
    return "\n".join(lines)


def main() -> None:
    global MODEL  # becomes the name the server answers to (a served directory's model)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=MODEL, help="what `react serve` serves: the built-in "
                    "(default) or, e.g., a `react optimize` output directory")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="how the machine was while this ran")
    ap.add_argument("--baseline", metavar="CHECKOUT", help="also serve ReAct from another "
                    "checkout (its src/), as 'react@baseline': a before/after in one run")
    a = ap.parse_args()
    cmd = [sys.executable, "-m", "reactinfer", "serve", a.model, "--cache-size", "0",
           "--slo-ms", "60000"]
    srcs = {"react": ROOT}
    if a.baseline:
        srcs["react@baseline"] = Path(a.baseline).resolve()
    servers: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        bases = {}
        for name, src in srcs.items():
            log = stack.enter_context(tempfile.TemporaryFile())
            bases[name], _ = stack.enter_context(serving(
                cmd, "/v2/health/ready", dict(os.environ, PYTHONPATH=str(src / "src")),
                timeout_s=600, poll_s=0.2, log=log))
            servers[name] = {"rounds": []}
        first = next(iter(bases.values()))
        MODEL = httpx.get(first + "/v1/models").json()["data"][0]["id"]
        n_prompt = prompt_tokens(first)
        for r in range(a.rounds):  # the servers take turns round by round
            for name, base in bases.items():
                servers[name]["rounds"].append(asyncio.run(one_round(base, r, a.max_tokens)))
                print(name, r, servers[name]["rounds"][-1], flush=True)
        for name, base in bases.items():
            rows = servers[name]["rounds"]
            servers[name]["median"] = {k: median([x[k] for x in rows]) for k in rows[0]}
            servers[name]["metrics"] = prefix_metrics(base)
    result = {"model": a.model, "prompt_tokens": n_prompt, "max_tokens": a.max_tokens,
              "rounds": a.rounds, "servers": servers, "note": a.note, **hardware()}
    stem = "serve_prefix" if a.model == "smollm2" else f"serve_prefix_{Path(a.model).name}"
    write_results(Path(a.out) / stem, result, markdown(result) + "\n")


if __name__ == "__main__":
    main()
