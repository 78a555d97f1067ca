"""What the OpenAI and KServe endpoints share: reading a bounded JSON body, checking
inputs, deadlines, and running encode / generate requests through cache and batcher."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
from starlette.responses import JSONResponse

from ..core.errors import UserError
from ..tasks.sampling import Sampling
from .admission import deadline_for
from .cache import normalise
from .ladder import Job
from .request import Generated, Rejected, Request
from .shed import deadline_ms
from .state import ARRIVAL_KEY, ApiError, Group, ServingState

if TYPE_CHECKING:
    from starlette.requests import Request as HttpRequest

VARIANT_HEADER = "X-ReAct-Variant"
DEADLINE_HEADER = "X-Deadline-Ms"
CHARS_PER_TOKEN_CAP = 32  # no tokenizer makes tokens longer than this in practice


class ArrayJSON(JSONResponse):
    """A JSON response that may hold numpy arrays (C-contiguous), written by orjson: each
    float32 at its shortest exact repr. json.dumps of `.tolist()` took ~0.2 ms per
    384-float embedding on the event loop, 16 at a time when a batch completed: long
    enough to hold up the 429s of an overloaded server by several milliseconds."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_plain, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(obj: Any) -> Any:
    """What orjson leaves to us: a non-contiguous array, or a dtype it does not write."""
    if isinstance(obj, (np.ndarray, np.generic)):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


async def read_json(request: HttpRequest, state: ServingState, limit: int | None = None
                    ) -> dict[str, Any]:
    """The JSON object of the body; 413 past `limit` bytes (default: max_body_bytes)."""
    limit = state.config.max_body_bytes if limit is None else limit
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the body is {declared} bytes; the limit is {limit}: send fewer "
                       "or shorter inputs")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ApiError(413, f"the body is over {limit} bytes: send fewer or shorter inputs")
    if not body:
        raise ApiError(400, "the body is empty: send a JSON object")
    try:
        data = orjson.loads(body)  # several times faster than json.loads on the event loop
    except orjson.JSONDecodeError as e:
        raise ApiError(400, f"malformed JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(data).__name__}")
    return data


def deadline_of(request: HttpRequest, state: ServingState) -> float:
    """Absolute (monotonic) deadline (admission.deadline_for): arrival + X-Deadline-Ms,
    else the SLO, else none (math.inf). Arrival is when the request reached the app, so
    time spent waiting for the event loop counts."""
    start = request.scope.get(ARRIVAL_KEY) or time.monotonic()
    raw = request.headers.get(DEADLINE_HEADER)
    ms = None if raw is None else deadline_ms(raw)
    if raw is not None and ms is None:
        raise ApiError(400, f"{DEADLINE_HEADER} must be a positive number of milliseconds, "
                       f"got {raw!r}")
    return deadline_for(state.config, start, ms)


def check_texts(value: Any, g: Group, state: ServingState, param: str) -> list[str]:
    """A string or a non-empty list of strings, within the input count and length limits."""
    texts = [value] if isinstance(value, str) else value
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise ApiError(400, f"'{param}' must be a string or a list of strings", param=param)
    if not texts:
        raise ApiError(400, f"'{param}' is empty: give at least one text", param=param)
    if len(texts) > state.config.max_inputs:
        raise ApiError(400, f"'{param}' has {len(texts)} texts; the limit is "
                       f"{state.config.max_inputs} per request: split the request", param=param)
    limit = g.max_length
    out = []
    for i, t in enumerate(texts):
        if not t.strip():
            raise ApiError(400, f"'{param}'[{i}] is empty", param=param)
        if len(t) + 2 > limit:  # only long texts can exceed the token limit
            if state.config.long_text == "truncate":
                t = t[:limit * CHARS_PER_TOKEN_CAP]  # bounds tokenizer work; truncated later
            else:
                with g.batcher.tok_lock:
                    n = len(g.tokenizer(t)["input_ids"])
                if n > limit:
                    raise ApiError(400, f"'{param}'[{i}] has {n} tokens; this model takes at "
                                   f"most {limit}: shorten it", param=param,
                                   code="context_length_exceeded")
        out.append(t)
    return out


def _rejected(e: Rejected) -> ApiError:
    headers = {"Retry-After": str(e.retry_after)} if e.retry_after is not None else {}
    code = "overloaded" if e.status == 429 else "draining"
    return ApiError(e.status, str(e), code=code, headers=headers)


async def encode(state: ServingState, g: Group, texts: Sequence[str], deadline: float
                 ) -> tuple[np.ndarray, int, str]:
    """Per-text outputs (N, ...) in input order, their total tokens, and the variant(s)
    that made them; texts answered before by the active variant come from the cache."""
    return await run_cached(
        state, g, [normalise(t) for t in texts], deadline,
        lambda idx: {"texts": [texts[i] for i in idx], "length": max(len(texts[i]) for i in idx)})


async def run_cached(state: ServingState, g: Group, keys: Sequence[Any], deadline: float,
                     inputs: Callable[[list[int]], dict[str, Any]]
                     ) -> tuple[np.ndarray, int, str]:
    """Outputs (N, ...) of N inputs named by their cache `keys`, their total tokens, and
    the variant(s) that made them. Inputs answered before by the active variant come from
    the cache; the others go to the batcher as one request, `inputs(indices)` giving its
    fields (texts, or an image model's pixels)."""
    variant = g.ladder.current
    found: list[Any] = [state.cache.get((variant.name, "encode", k)) for k in keys]
    missing = [i for i, f in enumerate(found) if f is None]  # found: (output, tokens)
    hits = len(keys) - len(missing)
    if hits:
        state.metrics.cache_hits.inc(hits, model=g.name)
    if missing:
        state.metrics.cache_misses.inc(len(missing), model=g.name)
    if not missing:
        state.cache_answered(g, variant)
        return np.stack([f[0] for f in found]), sum(f[1] for f in found), variant.name
    loop = asyncio.get_running_loop()
    req = Request("encode", Job(deadline, items=len(missing)), loop, loop.create_future(),
                  **inputs(missing))
    try:
        y, counts, served = await g.batcher.submit(req)
    except Rejected as e:
        raise _rejected(e) from None
    for j, i in enumerate(missing):
        found[i] = (y[j], int(counts[j]))
        state.cache.put((served, "encode", keys[i]), found[i])
    names = served if not hits or served == variant.name else f"{served},{variant.name}"
    return np.stack([f[0] for f in found]), sum(f[1] for f in found), names


DEFAULT_MAX_TOKENS = {"completion": 16, "chat": 512}  # OpenAI's 16; chat: until EOS, in reason


@dataclass(frozen=True)
class GenParams:
    """A generation request, checked: prompt tokens, new tokens, sampling and stop."""

    ids: list[int]
    max_tokens: int
    sampling: Sampling
    stop: tuple[str, ...]
    grammar: str | None = None  # GBNF the answer must follow (structured output)
    logprobs: int | None = None  # record log-probabilities, with this many alternatives

    @property
    def cacheable(self) -> bool:
        """The same request gives the same answer: greedy, or seeded."""
        return self.sampling.greedy or self.sampling.seed is not None

    def cache_key(self, variant: str) -> tuple[Any, ...]:
        return (variant, "generate", tuple(self.ids), self.max_tokens, self.sampling, self.stop,
                self.grammar, self.logprobs)


def _number(body: dict[str, Any], name: str, default: float) -> float:
    v = body.get(name)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v:
        raise ApiError(400, f"'{name}' must be a number, got {v!r}", param=name)
    return float(v)


def _integer(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
        raise ApiError(400, f"'{name}' must be an integer, got {v!r}", param=name)
    return v


def sampling_of(body: dict[str, Any]) -> Sampling:
    """OpenAI's temperature, top_p and seed, plus top_k (llama.cpp's and vLLM's)."""
    try:
        return Sampling(temperature=_number(body, "temperature", 0.0),
                        top_p=_number(body, "top_p", 1.0), top_k=_integer(body, "top_k") or 0,
                        seed=_integer(body, "seed"))
    except ValueError as e:  # out of range
        param = str(e).split(" ", 1)[0]
        raise ApiError(400, f"'{param}' {str(e).split(' ', 1)[1]}", param=param) from None


def stop_of(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops) \
            or len(stops) > 16:
        raise ApiError(400, "'stop' must be a string or a list of at most 16 strings",
                       param="stop")
    return tuple(s for s in stops if s)


def generation_params(body: dict[str, Any], g: Group, state: ServingState, prompt: str,
                      kind: str = "completion") -> GenParams:
    """Check a completion request against the model's context and the server's limit:
    bad values answer 400 naming the parameter."""
    n = _integer(body, "max_tokens")
    if n is None:
        n = _integer(body, "max_completion_tokens")
    if n is not None and n < 1:
        raise ApiError(400, "'max_tokens' must be a positive integer", param="max_tokens")
    cap = state.config.max_tokens
    if n is not None and cap is not None and n > cap:
        raise ApiError(400, f"'max_tokens' is {n}; this server allows at most {cap}",
                       param="max_tokens")
    with g.batcher.tok_lock:
        ids = list(g.tokenizer(prompt)["input_ids"])
    context = g.context_length
    room = context - len(ids)
    # the context is what one sequence's KV holds here (planned from memory, at most the
    # model's trained context): prompt + answer
    if room < 1:
        raise ApiError(400, f"the prompt has {len(ids)} tokens; this server's context is "
                       f"{context} tokens per sequence (prompt + answer): shorten the prompt "
                       f"to at most {context - 1}", param="prompt",
                       code="context_length_exceeded")
    if n is None:
        n = min(DEFAULT_MAX_TOKENS[kind], room, cap or room)
    elif n > room:
        raise ApiError(400, f"the prompt has {len(ids)} tokens and 'max_tokens' is {n}; this "
                       f"server's context is {context} tokens per sequence (prompt + "
                       f"answer): ask for at most {room}",
                       param="max_tokens", code="context_length_exceeded")
    return GenParams(ids, n, sampling_of(body), stop_of(body))


def constraint_of(g: Group, grammar: str) -> Any:
    """A fresh token constraint (one per sequence: it holds the grammar's state) from the
    runners' `grammar_constraint`; 400 when a variant of the model has none."""
    makers: list[Any] = [getattr(v.handle.runner(), "grammar_constraint", None)
                         for v in g.ladder.variants]
    if any(m is None for m in makers):
        raise ApiError(400, f"model '{g.name}' cannot constrain its output (structured output "
                       "needs a GGUF on llama.cpp): drop 'response_format' / 'tool_choice'",
                       param="response_format")
    try:
        return makers[0](grammar)
    except UserError as e:
        raise ApiError(400, str(e), param="response_format") from None


async def start_generation(g: Group, p: GenParams, deadline: float, stream: bool) -> Request:
    """Admit a generation (429/503 raised here, before any byte is sent)."""
    loop = asyncio.get_running_loop()
    constraint = constraint_of(g, p.grammar) if p.grammar is not None else None
    req = Request("generate", Job(deadline, items=1, new_tokens=p.max_tokens), loop,
                  loop.create_future(), prompt_ids=p.ids,
                  sink=asyncio.Queue() if stream else None, length=len(p.ids),
                  sampling=p.sampling, stop=p.stop, constraint=constraint,
                  logprobs=p.logprobs)
    try:
        g.batcher.admit(req)
    except Rejected as e:
        raise _rejected(e) from None
    return req


async def generate(state: ServingState, g: Group, p: GenParams, deadline: float) -> Generated:
    variant = g.ladder.current
    hit = state.cache.get(p.cache_key(variant.name)) if p.cacheable else None
    if hit is not None:
        state.metrics.cache_hits.inc(model=g.name)
        state.cache_answered(g, variant)
        return hit
    state.metrics.cache_misses.inc(model=g.name)
    req = await start_generation(g, p, deadline, stream=False)
    out: Generated = await req.future
    if p.cacheable:
        state.cache.put(p.cache_key(out.variant), out)
    return out
