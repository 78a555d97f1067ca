"""ServeConfig: every knob of the real-time server in one frozen dataclass."""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..core.errors import UserError
from ..core.images import DEFAULT_MAX_PIXELS, check_labels
from .speculate import check_mode as check_speculation

LONG_TEXT_POLICIES = ("truncate", "error")
SERVER_PACKAGES = ("fastapi", "uvicorn", "orjson")
CLIENT_PACKAGES = ("httpx",)


def require(packages: Sequence[str], what: str) -> None:
    """A clear error, before any import fails deep inside, when serving extras are missing."""
    missing = [m for m in packages if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"{what} needs {', '.join(missing)}: pip install 'reactinfer[all]' "
                        "(or run `make`)")


# llama.cpp's flash attention settings by name: the keys of backends/llamacpp_engine.FLASH_ATTN
# (not imported here: that would load every backend module for each CLI command; a test
# holds the two together)
FLASH_ATTN_MODES = ("auto", "on", "off")


@dataclass(frozen=True)
class ServeConfig:
    """How the server batches, admits, sheds, caches and switches variants.

    slo_ms          latency objective: the deadline of a request that states none
                    (X-Deadline-Ms), and what the ladder holds. None (the default): no
                    objective; such requests queue up to max_queue and are never refused
                    for time, and the ladder steps down only for stated deadlines
    tpot_ms         generation: objective for the time per output token. A new sequence
                    joins a decode engine that is already decoding only while the engine's
                    recent decode steps (EWMA) are within it; otherwise it waits in the
                    queue until sequences leave; and the ladder steps to a faster
                    variant while finished generations exceed it (ladder.py). None (the
                    default): no limit
    kv_memory_gb    an LLM decode engine's KV cache budget (GiB); None: a share of the
                    memory available at start-up (backends/kv_plan.py)
    context         tokens (prompt + answer) one generation may hold; None: the engine's
                    default, never more than the model's trained context
    max_batch       most items one model call takes (1 turns batching off)
    max_delay_ms    longest a batch waits to fill up
    max_queue       most requests waiting; beyond it new ones get 429 at once
    cache_size      response-cache entries (0 turns the cache off)
    max_body_bytes  request bodies above this get 413 (for an image model, at least one
                    image of max_image_bytes in base64, plus 1 MiB: see image_body_limit)
    max_image_bytes an image file (decoded from base64) above this gets 413
    max_image_pixels an image file whose header declares more pixels than this gets 413
                    before it is decoded (a decompression bomb); default 40 megapixels
    labels          class names (index = class id) for the image models served, checked
                    against their classes; None: the names their artifacts hold, if any
    max_inputs      most texts in one request
    long_text       "truncate" texts over the model's token limit, or answer 400 ("error")
    max_tokens      most new tokens a completion may ask for (None: up to the model's
                    context)
    llm_backend     the engine for causal LMs loaded from a GGUF or a built-in name:
                    "auto" (llama.cpp when installed: continuous batching), or a backend
                    name such as "torch"; artifacts keep the backend they were saved with
    speculate       generation on llama.cpp: speculative decoding of greedy requests
                    (serving/speculate.py): "auto" (while at most 2 sequences decode, and
                    per sequence while its drafts are accepted; from the draft model when
                    one is given, else by prompt lookup), "lookup" or "draft" (always,
                    from that source), or "off"; the answer is the same either way
    flash_attn      llama.cpp's flash attention in decode engines: "auto" (llama.cpp's
                    default, on for CPUs), "on", or "off" (llama-cpp-python's default:
                    its greedy text, token for token, where tokens nearly tie)
    draft_tokens    most tokens one draft proposes (a sequence's drafts start at 4 and
                    double while accepted whole)
    draft           a draft model for speculative decoding (a built-in name or GGUF path):
                    a smaller causal LM with the served model's vocabulary, run on
                    llama.cpp beside it; None (the default): no draft model
    down_headroom   step down when predicted latency exceeds this fraction of the deadline
    up_ratio        step back up only when the better variant is predicted under this
                    fraction of the SLO ...
    up_hold_s       ... continuously for this long (hysteresis)
    admit_headroom  admit only when predicted completion is within this fraction of the
                    deadline on some variant
    admit_quantile  predictions are scaled by this quantile of recent actual / predicted
                    answer times, so about this fraction of admitted requests is on time
                    (at 1, by the largest)
    ewma_alpha      weight of a live batch in the service-time estimate
    warmup          measure every variant's service time per batch size at start-up
    probe_s         when stepped down and idle, re-measure the better variant this often
    drain_timeout_s longest a drain waits for accepted requests before exiting anyway
    deadline_admission  refuse (429) requests no variant can answer in time; off, only
                    the queue bound sheds (what most servers do)
    api_key         when set, every /v1 and /v2 inference route needs
                    `Authorization: Bearer <api_key>` (auth.py); never printed
    """

    slo_ms: float | None = None
    tpot_ms: float | None = None
    kv_memory_gb: float | None = None
    context: int | None = None
    max_batch: int = 32
    max_delay_ms: float = 5.0
    max_queue: int = 256
    cache_size: int = 10000
    max_body_bytes: int = 1 << 20
    max_image_bytes: int = 20 << 20
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    labels: tuple[str, ...] | None = None
    max_inputs: int = 256
    long_text: str = "truncate"
    max_tokens: int | None = None
    down_headroom: float = 0.8
    up_ratio: float = 0.5
    up_hold_s: float = 1.0
    admit_headroom: float = 1.0
    admit_quantile: float = 0.99
    ewma_alpha: float = 0.2
    warmup: bool = True
    probe_s: float = 0.5
    drain_timeout_s: float = 30.0
    deadline_admission: bool = True
    api_key: str | None = field(default=None, repr=False)
    llm_backend: str = "auto"
    speculate: str = "auto"
    draft_tokens: int = 16
    draft: str | None = None
    flash_attn: str = "auto"

    def __post_init__(self) -> None:
        if self.slo_ms is not None and not self.slo_ms > 0:
            raise UserError(f"serve: slo_ms must be positive (or None: no objective), got "
                            f"{self.slo_ms}")
        if self.tpot_ms is not None and not self.tpot_ms > 0:
            raise UserError(f"serve: tpot_ms must be positive (or None: no objective), got "
                            f"{self.tpot_ms}")
        if self.api_key is not None and (not isinstance(self.api_key, str)
                                         or not self.api_key.strip()):
            raise UserError("serve: the API key must be a non-empty string")
        positive = {"max_batch": self.max_batch,
                    "max_queue": self.max_queue, "max_body_bytes": self.max_body_bytes,
                    "max_image_bytes": self.max_image_bytes,
                    "max_image_pixels": self.max_image_pixels,
                    "max_inputs": self.max_inputs,
                    **({} if self.max_tokens is None else {"max_tokens": self.max_tokens}),
                    **({} if self.kv_memory_gb is None else {"kv_memory_gb": self.kv_memory_gb}),
                    **({} if self.context is None else {"context": self.context}),
                    "drain_timeout_s": self.drain_timeout_s, "probe_s": self.probe_s}
        for name, value in positive.items():
            if not value > 0:
                raise UserError(f"serve: {name} must be positive, got {value}")
        for name in ("max_delay_ms", "cache_size", "up_hold_s"):
            if getattr(self, name) < 0:
                raise UserError(f"serve: {name} must be zero or more, got {getattr(self, name)}")
        for name in ("down_headroom", "up_ratio", "admit_headroom", "admit_quantile",
                     "ewma_alpha"):
            if not 0 < getattr(self, name) <= 1:
                raise UserError(f"serve: {name} must be in (0, 1], got {getattr(self, name)}")
        if self.up_ratio > self.down_headroom:
            raise UserError("serve: up_ratio must not exceed down_headroom, or the ladder "
                            "would step up into a level it immediately leaves")
        check_speculation(self.speculate, self.draft_tokens)
        if isinstance(self.draft, os.PathLike):
            object.__setattr__(self, "draft", os.fspath(self.draft))
        if self.draft is not None and (not isinstance(self.draft, str) or not self.draft.strip()):
            raise UserError(f"serve: draft must name a model (a GGUF path or a built-in name), "
                            f"got {self.draft!r}")
        if self.speculate == "draft" and self.draft is None:
            raise UserError("serve: speculate='draft' needs a draft model: pass --draft MODEL")
        if self.flash_attn not in FLASH_ATTN_MODES:
            raise UserError(f"serve: flash_attn must be one of {', '.join(FLASH_ATTN_MODES)}, "
                            f"got {self.flash_attn!r}")
        if self.labels is not None:
            object.__setattr__(self, "labels", check_labels(self.labels))
        if self.long_text not in LONG_TEXT_POLICIES:
            raise UserError(f"serve: long_text must be one of {', '.join(LONG_TEXT_POLICIES)}, "
                            f"got {self.long_text!r}")

    @property
    def slo_s(self) -> float:
        """The objective in seconds; infinite when there is none."""
        return math.inf if self.slo_ms is None else self.slo_ms / 1e3

    @property
    def image_body_limit(self) -> int:
        """The body limit of an image model's requests: room for one image of
        max_image_bytes in base64 (4 characters per 3 bytes) and the JSON around it."""
        return max(self.max_body_bytes, -(-self.max_image_bytes // 3) * 4 + (1 << 20))

    @property
    def tpot_s(self) -> float:
        """The time-per-token objective in seconds; infinite when there is none."""
        return math.inf if self.tpot_ms is None else self.tpot_ms / 1e3

    def engine_options(self) -> dict[str, Any]:
        """What a decode engine is made with (runner.decode_engine's keywords)."""
        return {"kv_memory_gb": self.kv_memory_gb, "context": self.context,
                "flash_attn": self.flash_attn}

    @property
    def max_delay_s(self) -> float:
        return self.max_delay_ms / 1e3

    @classmethod
    def from_kwargs(cls, **kw: Any) -> ServeConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kw) - known)
        if unknown:
            raise UserError(f"serve: unknown option(s) {unknown}; known: {sorted(known)}")
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The settings, with the API key only said to be set (never its value)."""
        out = dataclasses.asdict(self)
        out["api_key"] = "set" if self.api_key else None
        return out
