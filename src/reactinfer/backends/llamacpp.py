"""llama.cpp (llama-cpp-python) for causal LMs: runs a GGUF file directly (the packaged
smollm2 as is), or one converted from our (compressed) torch model by `gguf_convert`.

The runner returns full logits (B, T, V) when called, scores perplexity without them
(`score`: each decoded chunk's logits reduced in place), decodes step by step with the KV
cache (`decode`: the prompt is evaluated once, then one token per step; `generate` is its
greedy answer), and makes the server's continuous-batching engine (`decode_engine`).
`generate(..., reuse_cache=False)` re-evaluates the whole sequence per token, which is
what not having a KV cache costs (shown by the benchmark).
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.backend import (
    Backend,
    Batch,
    Decoding,
    EngineConfig,
    decode_by_recompute,
    greedy_tokens,
    module_available,
    register_backend,
)
from ..core.errors import UserError
from ..models.arch import gguf_types
from .gguf_convert import OUTTYPES, convert_to_gguf, gguf_layout_of, source_gguf
from .gguf_quantize import LLAMA_QUANTS, quant_source, quantize_gguf
from .kv_plan import KVPlan, available_memory, kv_budget, kv_bytes_per_token, plan_kv
from .llamacpp_engine import DecodeEngine
from .llamacpp_grammar import GrammarConstraint

if TYPE_CHECKING:
    from ..core.handle import ModelHandle

MODEL_FILE = "model.gguf"
# A type made by llama.cpp's quantizer, in seconds per GB of the original model (the
# planner's prior until it has timed one here, stepcost.py). Measured on a 2-core AMD EPYC
# under a load of ~7, from smollm2's packaged 94 MB Q4_1 file: its F16 GGUF written once
# (8.8 s) and quantized to q8_0 / q4_0 / q4_k_m (4.9 / 6.2 / 8.4 s): the first type ~15 s,
# ~160 s/GB of that file. A 16-bit original of the same size holds ~3x fewer weights, so
# it is overestimated there: the safe side, and its first build corrects it.
QUANT_S_PER_GB = 160.0
# tokens per served sequence unless asked for more (up to the trained context): a prefix
# shared across sequences is copied a whole KV stream at a time, so longer streams make
# every cached prefix dearer to reuse
SERVE_CONTEXT_CAP = 2048
# quant_source: what a llama.cpp-quantized file was made from (recorded, not chosen)
OPTIONS = ("outtype", "threads", "n_ctx", "quant_source")
# the types written: by llama.cpp's own quantizer where it makes them, else by gguf-py
GGUF_TYPES = ("source",) + tuple(LLAMA_QUANTS) + tuple(t for t in OUTTYPES
                                                       if t not in LLAMA_QUANTS)


def _check_options(opts: dict[str, Any]) -> None:
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise UserError(f"llama.cpp backend: unknown option(s) {sorted(unknown)}; known: "
                        f"{', '.join(OPTIONS)}")
    if opts.get("outtype") not in (None,) + GGUF_TYPES:
        raise UserError(f"llama.cpp outtype {opts['outtype']!r} is not one of "
                        f"{', '.join(GGUF_TYPES)}")
    if opts.get("threads") is not None and int(opts["threads"]) < 1:
        raise UserError(f"llama.cpp threads must be at least 1, got {opts['threads']}")


def unchanged_gguf(handle: ModelHandle) -> Path | None:
    """The GGUF this handle's weights came from, if nothing changed them since."""
    if MODEL_FILE in handle.files:
        return Path(handle.files[MODEL_FILE])
    if handle.transforms:
        return None
    return source_gguf(handle.source)


def scoring_threads(threads: int) -> int:
    """Threads for scoring (perplexity and greedy agreement): `threads`, or one while the
    machine is oversubscribed (a 1-minute load of at least its cores + 1). llama.cpp's
    threads meet at a barrier after every op, so one preempted thread stalls the rest:
    on a 2-core AMD EPYC at a load of ~7, smollm2 scored 16 held-out texts in 70 s on 2
    threads and 4.3 s on 1. llama.cpp gives each thread whole rows, so the scores are
    bit-identical (checked on smollm2) and only the scoring speed, which decides nothing
    for a model that generates, changes. Generation keeps `threads`: it is measured as
    it is served."""
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores + 1
    except OSError:  # no load average on this platform
        busy = False
    return 1 if busy and threads > 1 else threads


class LlamaCppRunner:
    kv_cache = True

    def __init__(self, handle: ModelHandle, path: Path, threads: int | None, n_ctx: int):
        from llama_cpp import Llama

        self.handle = handle
        self.path = path
        t0 = time.perf_counter()
        threads = int(threads or os.cpu_count() or 1)  # its default is half the cores
        self.llm = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_ctx, 512),
                         n_threads=threads, n_threads_batch=threads, logits_all=True,
                         verbose=False)
        self.load_s = time.perf_counter() - t0
        self.n_vocab = self.llm.n_vocab()
        self.threads = threads
        self._gen: Any = None  # the decoding context, made on first generate()
        self.kv_plan: KVPlan | None = None  # the served KV cache, once an engine is made

    def _eval(self, tokens: list[int]) -> np.ndarray:
        if len(tokens) > self.llm.n_ctx():
            raise UserError(f"{len(tokens)} tokens do not fit llama.cpp's context of "
                            f"{self.llm.n_ctx()}; pass n_ctx=")
        self.llm.reset()
        self.llm.eval(tokens)
        return self.llm.scores[:len(tokens)]  # (T, V)

    def __call__(self, batch: Batch) -> np.ndarray:
        ids, mask = batch["input_ids"], batch["attention_mask"]  # (B, T)
        out = np.zeros(ids.shape + (self.n_vocab,), dtype=np.float32)  # (B, T, V)
        for i in range(len(ids)):  # llama.cpp runs one sequence per context here
            pos = np.flatnonzero(mask[i])
            if len(pos):
                out[i, pos] = self._eval(ids[i, pos].tolist())
        return out

    def score(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """Per position (B, T-1), the NLL of the next token and the argmax, each decoded
        chunk's logits read in place from llama.cpp and reduced at once: no (B, T, V) array,
        no copy into llama-cpp-python's score matrix. On as many threads as the machine
        has free (`scoring_threads`): the figures do not depend on it."""
        import llama_cpp

        ids, mask = batch["input_ids"], batch["attention_mask"]
        nll = np.zeros((len(ids), ids.shape[1] - 1), np.float32)
        argmax = np.zeros(nll.shape, np.int32)
        ctx, threads = self.llm._ctx.ctx, scoring_threads(self.threads)
        llama_cpp.llama_set_n_threads(ctx, threads, threads)
        try:
            for i in range(len(ids)):
                tokens = ids[i, np.flatnonzero(mask[i])]  # right padding: positions 0..n-1
                n = len(tokens) - 1
                if n > 0:
                    nll[i, :n], argmax[i, :n] = self._score_tokens(tokens)
        finally:
            llama_cpp.llama_set_n_threads(ctx, self.threads, self.threads)
        return nll, argmax

    def _score_tokens(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        from ..tasks.causal_lm import score_rows

        llm = self.llm
        if len(tokens) > llm.n_ctx():
            raise UserError(f"{len(tokens)} tokens do not fit llama.cpp's context of "
                            f"{llm.n_ctx()}; pass n_ctx=")
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        nll, argmax = np.empty(len(tokens) - 1, np.float32), np.empty(len(tokens) - 1, np.int32)
        for s in range(0, len(tokens) - 1, llm.n_batch):
            chunk = tokens[s:s + llm.n_batch].tolist()
            llm._batch.set_batch(batch=chunk, n_past=s, logits_all=True)
            llm._ctx.decode(llm._batch)
            target = tokens[s + 1:s + 1 + len(chunk)]  # the last token predicts nothing
            rows = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(len(chunk), self.n_vocab))
            nll[s:s + len(target)], argmax[s:s + len(target)] = score_rows(
                rows[:len(target)], target)
        llm.reset()  # the next eval starts from an empty cache (it clears from n_tokens=0)
        return nll, argmax

    def generate(self, prompt_ids: list[int], max_new_tokens: int,
                 reuse_cache: bool = True) -> list[int]:
        """Greedy continuation of exactly `max_new_tokens` (end-of-sequence suppressed, as
        the torch runner does); with the KV cache each step evaluates one new token."""
        if not prompt_ids:
            raise UserError("generate needs at least one prompt token")
        eos = getattr(self.handle.tokenizer, "eos_token_id", None)
        if not reuse_cache:  # the cost of recomputing the prompt every token, for benchmarks
            return greedy_tokens(decode_by_recompute(self, list(prompt_ids)), max_new_tokens,
                                 eos)
        n_ctx = self._decoder().n_ctx()
        if len(prompt_ids) + max_new_tokens > n_ctx:
            raise UserError(f"{len(prompt_ids) + max_new_tokens} tokens do not fit llama.cpp's "
                            f"context of {n_ctx}; pass n_ctx=")
        return greedy_tokens(self.decode(prompt_ids), max_new_tokens, eos)

    def decode(self, prompt_ids: list[int]) -> Decoding:
        """With the KV cache, on a second context without `logits_all` (which scoring
        needs): the LM head runs for the last position only, and its logits are read in
        place (valid until the next token is sent)."""
        llm = self._decoder()
        llm.reset()
        llm.eval(list(prompt_ids))
        while True:
            tok = yield np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))
            llm.eval([int(tok)])

    def decode_engine(self, slots: int, step_tokens: int = 512,
                      kv_memory_gb: float | None = None,
                      context: int | None = None, flash_attn: str = "auto") -> DecodeEngine:
        """A continuous-batching engine (llamacpp_engine.py) on a new context over the
        same weights: up to `slots` sequences of up to `context` tokens each (default
        SERVE_CONTEXT_CAP, never past the trained context), as many as a KV cache of
        `kv_memory_gb` holds (default: a fraction of the memory available; kv_plan.py).
        The plan is kept in `kv_plan`; `serve_context` follows it. `flash_attn`: llama.cpp's
        flash attention, "auto" (its default), "on" or "off" (llama-cpp-python's default)."""
        m = self.llm._model
        lib = self._lib()
        bpt = kv_bytes_per_token(lib.llama_model_n_layer(m.model), lib.llama_model_n_head(
            m.model), lib.llama_model_n_head_kv(m.model), lib.llama_model_n_embd(m.model),
            self.llm.metadata)
        avail = available_memory()
        plan = plan_kv(bpt, kv_budget(kv_memory_gb, avail), m.n_ctx_train(), slots,
                       want=context or SERVE_CONTEXT_CAP, available=avail)
        eng = DecodeEngine(m, self.n_vocab, self.threads, plan.n_ctx_seq, plan.slots,
                           step_tokens, flash_attn=flash_attn)
        eng.kv_bytes_per_token = bpt  # from the metadata's head widths (kv_plan.py)
        eng.kv_plan = plan
        self.kv_plan = plan
        return eng

    @staticmethod
    def _lib() -> Any:
        import llama_cpp

        return llama_cpp

    def token_texts(self, ids: list[int]) -> list[str]:
        """The vocabulary's text of these token ids (a draft model must share it)."""
        return [self.llm._model.token_get_text(i) for i in ids]

    def grammar_constraint(self, gbnf: str) -> GrammarConstraint:
        """A token constraint for one sequence from a GBNF grammar (llamacpp_grammar.py):
        the server's structured output."""
        return GrammarConstraint(self.llm._model, gbnf, self.n_vocab)

    @property
    def serve_context(self) -> int:
        """The most tokens (prompt + answer) one served sequence may hold: the engine's
        planned context once there is one, else the model's trained context capped at
        SERVE_CONTEXT_CAP."""
        if self.kv_plan is not None:
            return self.kv_plan.n_ctx_seq
        return min(self.llm._model.n_ctx_train(), SERVE_CONTEXT_CAP)

    def _decoder(self) -> Any:
        if self._gen is None:
            from llama_cpp import Llama

            # the weights are mmap'ed: a second context shares them
            self._gen = Llama(model_path=str(self.path), n_ctx=self.llm.n_ctx(),
                              n_batch=self.llm.n_batch, n_threads=self.threads,
                              n_threads_batch=self.threads, logits_all=False, verbose=False)
        return self._gen


class LlamaCppBackend(Backend):
    name = "llama.cpp"
    writes_files = True
    precision_option = "outtype"
    description = ("llama.cpp via llama-cpp-python: causal LMs from GGUF (as packaged, or "
                   "converted from our torch model at f16 / q8_0 / q4_0 / ...); KV cache")
    available = staticmethod(module_available("llama_cpp"))

    def why_unavailable(self) -> str:
        return "" if self.available() else "pip install llama-cpp-python (or `make`)"

    def capabilities(self) -> dict[str, Any]:
        return {"tasks": ["causal-lm"],
                "options": {"outtype": list(GGUF_TYPES), "threads": "int",
                            "n_ctx": "int (max_length + 128)"},
                "architectures": list(gguf_types()), "files": [MODEL_FILE],
                "needs_torch_at_run_time": False}

    def engine_configs(self) -> list[EngineConfig]:
        def config(outtype: str, name: str, **facts: Any) -> EngineConfig:
            return EngineConfig(self.name, name, ("causal-lm",), {"outtype": outtype},
                                format=outtype, **facts)

        # "source": the GGUF the model was loaded from, as it is (only where unchanged);
        # the rest are made by llama.cpp's quantizer (gguf_quantize.py), each one trial
        return [config("source", "llama.cpp (packaged GGUF)", family="llamacpp-source"),
                *(config(t, f"llama.cpp {t}", family="llamacpp", cost=1.2)
                  for t in LLAMA_QUANTS)]

    def build_s_per_gb(self, **opts: Any) -> float | None:
        """llama.cpp's quantizer: QUANT_S_PER_GB per GB of the original (planning only)."""
        return QUANT_S_PER_GB if opts.get("outtype") in LLAMA_QUANTS else None

    def as_is(self, handle: ModelHandle) -> dict[str, Any] | None:
        """A model loaded from a GGUF file and not changed since: that file, run here."""
        ok = self.available() and self.supports(handle) and unchanged_gguf(handle) is not None
        return {"outtype": "source"} if ok else None

    def supports(self, handle: ModelHandle) -> bool:
        from ..tasks import get_task

        if not get_task(handle.task).generates:
            return False
        if unchanged_gguf(handle) is not None:
            return True
        return handle.model is not None and gguf_layout_of(handle.model) is not None

    def convert(self, handle: ModelHandle, workdir: Path | None, **opts: Any) -> ModelHandle:
        """Use the source GGUF as is when the weights are unchanged and no type is asked
        for (outtype='source'); otherwise write one from the torch model."""
        assert workdir is not None  # writes_files: to_backend always gives one
        _check_options(opts)
        if handle.model is None and MODEL_FILE in handle.files and opts.get("outtype") in (
                None, handle.backend_options.get("outtype")):  # already converted: new options
            return handle.derive(backend=self.name,
                                 backend_options={**opts, "outtype": handle.backend_options.get(
                                     "outtype", "source")})
        outtype = opts.get("outtype") or ("source" if unchanged_gguf(handle) else "q8_0")
        if outtype == "source":
            path = unchanged_gguf(handle)
            if path is None:
                raise UserError("outtype='source' needs a model loaded from a GGUF file and "
                                "not transformed since; pick f16, q8_0, q4_0, ...")
        elif outtype in LLAMA_QUANTS:  # llama.cpp's own quantizer, from the best source
            src, how = quant_source(handle, unchanged_gguf(handle), workdir)
            path = quantize_gguf(src, workdir / MODEL_FILE, outtype, opts.get("threads"))
            opts = {**opts, "quant_source": how}
        else:
            if handle.model is None:
                raise UserError("converting to GGUF needs the torch model; this handle has "
                                f"none (it runs on {handle.backend!r})")
            path = convert_to_gguf(handle, workdir / MODEL_FILE, outtype)
        return handle.derive(model=None, checkpoint=None, replay_from=None, backend=self.name,
                             backend_options={**opts, "outtype": outtype},
                             files={MODEL_FILE: path})

    def prepare(self, handle: ModelHandle, **opts: Any) -> LlamaCppRunner:
        _check_options(opts)
        path = unchanged_gguf(handle)
        if path is None or (opts.get("outtype") not in (None, "source")
                            and MODEL_FILE not in handle.files):
            from .convert import scratch_dir

            handle = self.convert(handle, scratch_dir("react-gguf-"), **opts)
            path = Path(handle.files[MODEL_FILE])
        n_ctx = int(opts.get("n_ctx") or handle.max_length + 128)
        return LlamaCppRunner(handle, path, opts.get("threads"), n_ctx)


register_backend(LlamaCppBackend())
