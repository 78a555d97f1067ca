"""Speculative decoding (prompt lookup), measured through `react serve smollm2`: a copy
task (greedy /v1/completions, ~200 tokens): `--task copy`, the model asked in words to
copy a given paragraph, or `--task repeat`, the third copy of a passage given twice.

- one stream: tok/s with `--speculate auto` and `--speculate off`, and llama.cpp alone
  (llama-cpp-python's `create_completion(temperature=0)` on the same GGUF file and
  prompt, all threads); the first 200 characters of each answer against llama.cpp's;
- 8 streams at once: aggregate tok/s with auto and off (auto turns itself off there).
tok/s = completion tokens / wall time of the request (prompt included), best of the
rounds' medians taken in turns. Every call's prompt starts with a tag of its own
("Request N."), so no server reuses an earlier prompt's KV (ReAct's prefix cache,
llama-cpp-python's prompt reuse): each request evaluates its prompt cold, on every
side alike. The /metrics speculation counters are read at the end.

    PYTHONPATH=src python benchmarks/serve_speculate.py      # results/serve_speculate.*
    ... serve_speculate.py --task repeat        # results/serve_speculate_repeat.*
    ... serve_speculate.py --draft DRAFT.gguf   # and a third server with a draft model
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
from _common import ROOT, alternate, hardware, median, serving, table_head, write_results

MODEL = "smollm2"
PARAGRAPHS = [
    "The old harbour town wakes early. Before dawn the fishing boats slip out past the "
    "lighthouse, and by seven the bakery on the square has sold its first loaves. "
    "Tourists arrive on the morning ferry, walk the narrow streets to the castle, and "
    "eat grilled sardines at the long tables by the water. In the afternoon the wind "
    "rises, the boats come back, and the market sells what they caught. At night the "
    "square fills with music, and the lighthouse turns its slow beam over the dark sea.",
    "To replace a bicycle inner tube, first open the brake and remove the wheel. Let out "
    "any air left in the tube, then push one tyre lever under the bead and hook it to a "
    "spoke. Slide a second lever around the rim until one side of the tyre is free. Pull "
    "out the old tube, check the inside of the tyre for thorns or glass, and fit the new "
    "tube with a little air in it. Push the bead back over the rim with your thumbs, "
    "pump the tyre to the pressure printed on its side, and refit the wheel.",
]


def copy_prompt(text: str) -> str:
    return f"Copy the following paragraph exactly.\n\nParagraph:\n{text}\n\nCopy:\n"


def repeat_prompt(text: str) -> str:
    """A passage given twice, the third copy to write: what a model that quotes its
    input does (a small model asked in words to copy often paraphrases instead)."""
    return f"Original:\n{text}\n\nCopy 1:\n{text}\n\nCopy 2:\n"


TASKS = {"copy": copy_prompt, "repeat": repeat_prompt}


async def complete(client: httpx.AsyncClient, prompt: str, max_tokens: int
                   ) -> dict[str, Any]:
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    t0 = time.perf_counter()
    r = await client.post("/v1/completions", json=body)
    r.raise_for_status()
    out = r.json()
    return {"s": time.perf_counter() - t0, "tokens": out["usage"]["completion_tokens"],
            "text": out["choices"][0]["text"]}


def tagged(prompts: list[str]) -> Callable[[], list[str]]:
    """The prompts with a new tag in front at each call (the n-th call of every side
    gets the same prompts): no call finds its prompt cached."""
    calls = itertools.count(1)

    def next_prompts() -> list[str]:
        n = next(calls)
        return [f"Request {n}.{i}.\n{p}" for i, p in enumerate(prompts)]

    return next_prompts


def streams(base: str, prompts: list[str], max_tokens: int) -> dict[str, Any]:
    """Prompts sent at once: aggregate tok/s, and the answers."""
    async def go() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=base, timeout=900) as c:
            return await asyncio.gather(*(complete(c, p, max_tokens) for p in prompts))

    t0 = time.perf_counter()
    outs = asyncio.run(go())
    wall = time.perf_counter() - t0
    return {"tok_s": sum(o["tokens"] for o in outs) / wall, "texts": [o["text"] for o in outs],
            "tokens": [o["tokens"] for o in outs]}


def llama_alone(prompts: Callable[[], list[str]], max_tokens: int) -> Any:
    """llama.cpp alone on the served file: a function timing one greedy completion."""
    from llama_cpp import Llama

    from reactinfer.models.zoo import BUILTINS

    n = os.cpu_count() or 1
    llm = Llama(model_path=str(BUILTINS[MODEL].path()), n_ctx=2048, n_threads=n,
                n_threads_batch=n, verbose=False)

    def run() -> dict[str, Any]:
        prompt = prompts()[0]
        t0 = time.perf_counter()
        out = cast(dict[str, Any], llm.create_completion(prompt, max_tokens=max_tokens,
                                                         temperature=0))
        wall = time.perf_counter() - t0
        n_tok = out["usage"]["completion_tokens"]
        return {"tok_s": n_tok / wall, "texts": [out["choices"][0]["text"]],
                "tokens": [n_tok]}

    return run


def spec_metrics(base: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        if line.startswith("react_speculative_") and "_bucket" not in line:
            name = line.split("{", 1)[0].split(" ", 1)[0]
            out[name] = out.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def markdown(r: dict[str, Any]) -> str:
    one, eight = r["one_stream"], r["eight_streams"]
    ref = one["llama.cpp alone"]["tok_s"]
    lines = [f"# Speculative decoding (prompt lookup): {r.get('task', 'copy')} a paragraph, "
             "greedy, "
             f"{r['max_tokens']} tokens at most, best of {r['rounds']} rounds", "",
             r["hardware_summary"], "",
             *table_head("one stream", "tok/s", "× llama.cpp alone",
                         "first 200 chars = llama.cpp's")]
    for name, m in one.items():
        lines.append(f"| {name} | {m['tok_s']:.1f} | ×{m['tok_s'] / ref:.2f} | "
                     f"{m['same_200']} |")
    lines += ["", *table_head("8 streams at once", "aggregate tok/s", "× off")]
    for name, m in eight.items():
        lines.append(f"| {name} | {m['tok_s']:.1f} | "
                     f"×{m['tok_s'] / eight['react --speculate off']['tok_s']:.3f} |")
    for name, m in r["metrics"].items():
        lines += ["", f"{name} /metrics: " + ", ".join(f"{k} = {v:g}"
                                                       for k, v in sorted(m.items()))]
    if r["note"]:
        lines += ["", r["note"]]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="how the machine was while this ran")
    ap.add_argument("--task", choices=sorted(TASKS), default="copy",
                    help="copy: asked in words to copy a paragraph; repeat: the third copy "
                         "of a passage given twice (results get a _repeat suffix)")
    ap.add_argument("--draft", default=None, help="a draft model (GGUF) for a third server, "
                    "--speculate draft; results go to serve_speculate_draft.*")
    a = ap.parse_args()
    make = TASKS[a.task]
    prompt = make(PARAGRAPHS[0])
    eight_prompts = [make(PARAGRAPHS[i % 2]) for i in range(8)]  # each tagged apart
    cmd = [sys.executable, "-m", "reactinfer", "serve", MODEL, "--cache-size", "0",
           "--slo-ms", "600000"]
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    with contextlib.ExitStack() as stack:
        bases = {}
        modes = ["auto", "off"] + (["draft"] if a.draft else [])
        for mode in modes:
            log = stack.enter_context(tempfile.TemporaryFile())
            extra = ["--draft", a.draft] if mode == "draft" else []
            bases[f"react --speculate {mode}"], _ = stack.enter_context(serving(
                [*cmd, "--speculate", mode, *extra], "/v2/health/ready", env, timeout_s=600,
                poll_s=0.2, log=log))
        def ask(base: str, prompts: list[str]) -> Callable[[], dict[str, Any]]:
            fresh = tagged(prompts)
            return lambda: streams(base, fresh(), a.max_tokens)

        steps = {name: ask(base, [prompt]) for name, base in bases.items()}
        steps["llama.cpp alone"] = llama_alone(tagged([prompt]), a.max_tokens)
        for step in steps.values():
            step()  # warm: first calls allocate buffers
        rounds = alternate(steps, a.rounds)
        refs = [x["texts"][0][:200] for x in rounds["llama.cpp alone"]]  # round by round
        one = {name: {"tok_s": max(x["tok_s"] for x in xs),
                      "tok_s_median": median([x["tok_s"] for x in xs]),
                      "tokens": xs[0]["tokens"][0],
                      "same_200": all(x["texts"][0][:200] == ref
                                      for x, ref in zip(xs, refs, strict=True)),
                      "text": xs[0]["texts"][0]} for name, xs in rounds.items()}
        print({k: (v["tok_s"], v["tokens"], v["same_200"]) for k, v in one.items()},
              flush=True)  # one stream's figures, before the longer 8-stream part
        eight_rounds = alternate({name: ask(base, eight_prompts)
                                  for name, base in bases.items()}, a.rounds)
        eight = {name: {"tok_s": max(x["tok_s"] for x in xs),
                        "tok_s_median": median([x["tok_s"] for x in xs])}
                 for name, xs in eight_rounds.items()}
        metrics = {name: spec_metrics(base) for name, base in bases.items()}
    result = {"task": a.task, "max_tokens": a.max_tokens, "rounds": a.rounds, "one_stream": one,
              "eight_streams": eight, "metrics": metrics, "note": a.note,
              "command": " ".join(sys.argv), **hardware()}
    name = ("serve_speculate_draft" if a.draft else "serve_speculate") + \
        ("" if a.task == "copy" else f"_{a.task}")
    write_results(Path(a.out) / name, result, markdown(result) + "\n")


if __name__ == "__main__":
    main()
