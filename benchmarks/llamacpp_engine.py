"""llama.cpp's own costs under `react serve`, without HTTP: how fast a GGUF file evaluates
a ~490-token prompt (llama-cpp-python alone, its defaults, all threads: one row per file,
e.g. the packaged Q4_1 against q8_0 / q4_0 files made by `react optimize`), and what
flash attention does to the decode engine (`--flash-attn auto` against `off`): a prompt's
evaluation and one decode step of 1, 4 and 8 sequences with ~300-token contexts, the two
settings taking turns round by round (median of the rounds). Also a step's layout: one
`llama_decode` of a token for each of 8 sequences (a KV stream each, as the engine has
them) written in slot order and reversed. llama.cpp splits such a batch into one pass
over the weights per run of consecutive sequence ids, so the engine writes slot order.
And the floor of a burst of chats on a cached system prompt (serve_prefix.py's "8 at
once, warm"): serve_prefix's 8 questions, as chat turns after its system prompt, the
first asked before, all joining one engine step, timed until each has its first logits
(no HTTP); against the first with 7 prompts of equal length adding as many tokens: a
step's prompts of unequal lengths also split into passes.

    PYTHONPATH=src python benchmarks/llamacpp_engine.py          # results/llamacpp_engine.*
    PYTHONPATH=src python benchmarks/llamacpp_engine.py --files OUT/variants/*/model.gguf
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from _common import ROOT, hardware, median, table_head, write_results
from serve_prefix import QUESTIONS, SYSTEM

THREADS = os.cpu_count() or 1
PROMPT = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"


def prefill_s(path: str, rounds: int) -> tuple[int, float]:
    """The prompt's tokens, and the median seconds llama-cpp-python takes to evaluate it."""
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=2048, n_threads=THREADS, n_threads_batch=THREADS,
                verbose=False)
    ids = llm.tokenize(PROMPT.encode(), special=True)
    times = []
    for _ in range(rounds):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        times.append(time.perf_counter() - t0)
    return len(ids), median(times)


def flash_attn_ab(path: str, rounds: int, steps: int = 20) -> dict[str, dict[str, float]]:
    """Per setting: the prompt's evaluation and a decode step at B = 1, 4, 8 (seconds)."""
    from llama_cpp import Llama

    from reactinfer.backends.llamacpp_engine import DecodeEngine

    llm = Llama(model_path=path, n_ctx=64, n_threads=THREADS, verbose=False)
    ids = llm.tokenize(PROMPT.encode(), special=True)
    engines = {fa: DecodeEngine(llm._model, llm.n_vocab(), THREADS, 2048, 8, 512,
                                cache_tokens=0, flash_attn=fa) for fa in ("auto", "off")}
    got: dict[str, dict[str, list[float]]] = {fa: {} for fa in engines}

    def fresh(r: int, i: int, n: int) -> list[int]:  # new to the engine: nothing reused
        return [ids[0]] + [(t + 7 * i + r) % 30000 + 100 for t in ids[1:n]]

    for r in range(rounds):
        for fa, eng in engines.items():
            sid, t0 = eng.start(fresh(r, 99, len(ids)), 4), time.perf_counter()
            while sid not in eng.step().logits:
                pass
            got[fa].setdefault("prompt", []).append(time.perf_counter() - t0)
            eng.release(sid)
            for b in (1, 4, 8):
                sids = [eng.start(fresh(r, i, 300), steps + 4) for i in range(b)]
                ready: set[int] = set()
                while len(ready) < b:
                    ready |= set(eng.step().logits)
                for s in sids:
                    eng.feed(s, 200)
                t0 = time.perf_counter()
                for _ in range(steps):
                    out = eng.step().logits
                    for s in sids:
                        eng.feed(s, int(out[s].argmax()))
                got[fa].setdefault(f"step_b{b}", []).append((time.perf_counter() - t0) / steps)
                eng.step()
                for s in sids:
                    eng.release(s)
    return {fa: {k: median(v) for k, v in d.items()} for fa, d in got.items()}


def step_layout(path: str, rounds: int, steps: int = 20) -> dict[str, float]:
    """Seconds of one decode step of 8 sequences (300-token KV streams), its tokens
    written in slot order and reversed (median of the rounds)."""
    import llama_cpp
    from llama_cpp import Llama

    llm = Llama(model_path=path, n_ctx=64, n_threads=THREADS, verbose=False)
    p = llama_cpp.llama_context_default_params()
    p.n_ctx, p.n_seq_max, p.kv_unified = 2048 * 8, 8, False
    p.n_batch = p.n_ubatch = 512
    p.n_threads = p.n_threads_batch = THREADS
    ctx = llama_cpp.llama_init_from_model(llm._model.model, p)
    batch = llama_cpp.llama_batch_init(512, 0, 1)

    def decode(items: list[tuple[int, int, int, int]]) -> None:  # (seq, token, pos, logits)
        for n, (seq, tok, pos, logits) in enumerate(items):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = tok, pos, 1
            batch.seq_id[n][0], batch.logits[n] = seq, logits
        batch.n_tokens = len(items)
        assert llama_cpp.llama_decode(ctx, batch) == 0

    try:
        for seq in range(8):
            decode([(seq, 100 + (7 * seq + i) % 20000, i, int(i == 299)) for i in range(300)])
        times: dict[str, list[float]] = {"slot order": [], "reversed": []}
        for _ in range(rounds):
            for name, order in (("slot order", range(8)), ("reversed", range(7, -1, -1))):
                t0 = time.perf_counter()
                for k in range(steps):
                    decode([(seq, 200, 300 + k, 1) for seq in order])
                times[name].append((time.perf_counter() - t0) / steps)
                for seq in range(8):
                    llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(ctx), seq, 300, -1)
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
    return {k: median(v) for k, v in times.items()}


def burst(path: str, rounds: int) -> dict[str, float]:
    """Seconds until 8 chat turns joining one engine step, after the first of them ran
    alone (its system prompt and its whole turn are then cached; the 7 others copy the
    prefix they share with it), each have logits: serve_prefix's questions, and the first
    with 7 prompts of equal length adding as many tokens in all (give or take 3). Each
    variant has a system prompt of its own in each round, and they take turns going
    first. With the tokens each adds (median of the rounds)."""
    from llama_cpp import Llama

    from reactinfer.backends.llamacpp_engine import DecodeEngine, common_prefix

    llm = Llama(model_path=path, n_ctx=64, n_threads=THREADS, verbose=False)
    eng = DecodeEngine(llm._model, llm.n_vocab(), THREADS, 2048, 8, 512)

    def first_logits(prompts: list[list[int]]) -> float:
        t0 = time.perf_counter()
        sids, got = [eng.start(p, 4) for p in prompts], set[int]()
        while len(got) < len(sids):
            out = eng.step()
            for sid, logits in out.logits.items():
                got.add(sid)
                eng.feed(sid, int(logits.argmax()))
        seconds = time.perf_counter() - t0
        for sid in sids:
            eng.release(sid)
        return seconds

    turns = [llm.tokenize(f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
                          .encode(), special=True, add_bos=False) for q in QUESTIONS]
    lead = min(common_prefix(t, turns[0]) for t in turns[1:])  # "<|im_start|>user\n"
    adds = {"questions": sum(len(t) - common_prefix(t, turns[0]) for t in turns[1:])}
    size = round(adds["questions"] / 7)
    adds["equal lengths"] = 7 * size
    times: dict[str, list[float]] = {k: [] for k in adds}
    for r in range(rounds):
        for k in (list(adds) if r % 2 == 0 else list(adds)[::-1]):
            head = llm.tokenize(f"<|im_start|>system\nRound {r}, {k}. {SYSTEM}<|im_end|>\n"
                                .encode(), special=True)
            first_logits([head + turns[0]])  # serve_prefix's first turn: now in an idle slot
            rest = turns[1:] if k == "questions" else [
                turns[0][:lead] + [300 + (97 * (r * 8 + i) + 13 * j) % 30000
                                   for j in range(size)] for i in range(7)]
            times[k].append(first_logits([head + t for t in [turns[0], *rest]]))
    return {"tokens": float(adds["questions"]), "equal_tokens": float(adds["equal lengths"]),
            **{k: median(v) for k, v in times.items()}}


def markdown(r: dict[str, Any]) -> str:
    lines = ["# llama.cpp under `react serve`: prompt evaluation by file, flash attention", "",
             r["hardware_summary"], "", f"Prompt: {r['prompt_tokens']} tokens, "
             f"{THREADS} threads, median of {r['rounds']} rounds.", "",
             *table_head("file (llama-cpp-python alone)", "prompt s", "tokens/s")]
    for name, s in r["prefill"].items():
        lines.append(f"| {name} | {s:.2f} | {r['prompt_tokens'] / s:.0f} |")
    ab = r["flash_attn"]
    lines += ["", f"Decode engine on {r['engine_file']}, ~300-token contexts:", "",
              *table_head("--flash-attn", "prompt s", "step ms, 1 seq", "4 seqs", "8 seqs")]
    for fa, m in ab.items():
        lines.append(f"| {fa} | {m['prompt']:.2f} | {m['step_b1'] * 1e3:.1f} | "
                     f"{m['step_b4'] * 1e3:.1f} | {m['step_b8'] * 1e3:.1f} |")
    lay = r["step_layout"]
    lines += ["", f"One decode step of 8 sequences on {r['engine_file']} (a KV stream each, "
              "300-token contexts), its tokens in:", "",
              *table_head("layout", "step ms"),
              *(f"| {k} | {v * 1e3:.1f} |" for k, v in lay.items())]
    lines += ["", "8 chat turns joining one engine step (the first asked before: its turn is "
              "cached, and the others copy the prefix they share with it), until each has "
              "its first logits (no HTTP; the floor of serve_prefix.py's 8 at once, warm):",
              "", *table_head("file", "tokens the 7 add", "the 8 questions ms",
                              "7 of equal length ms", "their tokens", "ms a token (equal)")]
    for name, b in r["burst"].items():
        lines.append(f"| {name} | {b['tokens']:.0f} | {b['questions'] * 1e3:.0f} | "
                     f"{b['equal lengths'] * 1e3:.0f} | {b['equal_tokens']:.0f} | "
                     f"{b['equal lengths'] * 1e3 / b['equal_tokens']:.2f} |")
    return "\n".join(lines + ["", r["note"]] if r["note"] else lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", nargs="*", default=[], help="more GGUF files to time the "
                    "prompt on (the packaged smollm2 file always comes first)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--note", default="", help="how the machine was while this ran")
    a = ap.parse_args()
    from reactinfer.models.zoo import BUILTINS

    packaged = str(BUILTINS["smollm2"].path())
    prefill, bursts, n = {}, {}, 0
    for path in [packaged, *a.files]:
        name = Path(path).name if path == packaged else path
        n, prefill[name] = prefill_s(path, a.rounds)
        bursts[name] = burst(path, a.rounds)
    result = {"prompt_tokens": n, "rounds": a.rounds, "prefill": prefill, "burst": bursts,
              "engine_file": Path(packaged).name,
              "flash_attn": flash_attn_ab(packaged, a.rounds),
              "step_layout": step_layout(packaged, a.rounds), "note": a.note, **hardware()}
    write_results(Path(a.out) / "llamacpp_engine", result, markdown(result) + "\n")


if __name__ == "__main__":
    main()
