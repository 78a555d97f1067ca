"""Sizing a decode engine's KV cache (sequences × tokens per sequence) from the memory at
hand, as vLLM sizes its block pool from `gpu_memory_utilization` and llama.cpp's server
its slots from `-c` / `-np`.

The KV of one token is `layers × kv_heads × (key_length + value_length) × bytes` of the
cache type (f16 by default): from the GGUF's metadata, since a head need not be
`embedding / heads` wide (Gemma's are wider). A budget (the user's, else a fraction of
MemAvailable) is shared by the sequences; each gets at most the context asked for and
never more than the model's trained context. When the budget cannot give every sequence
at least `MIN_SEQ_CONTEXT` tokens, fewer sequences are planned rather than shorter ones
(a request over the per-sequence context is refused outright; one that waits for a slot
is only late).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..core.errors import UserError

GiB = 1 << 30
KV_MEMORY_FRACTION = 0.25  # of MemAvailable when no budget is given: weights, activations
# and whatever else runs on the machine keep the rest
UNKNOWN_MEMORY_BUDGET = 1 * GiB  # when MemAvailable cannot be read
MIN_SEQ_CONTEXT = 1024  # below this per sequence, plan fewer sequences instead
MIN_TOKENS = 64  # a sequence shorter than this serves nothing useful: refuse to start
ALIGN = 256  # a context cut by the budget is rounded down to a multiple of this
CACHE_TYPE_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "q8_0": 34 / 32}


def available_memory() -> int | None:
    """Bytes the kernel says a new allocation can take without swapping (MemAvailable),
    else psutil's figure, else None."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def kv_bytes_per_token(n_layer: int, n_head: int, n_head_kv: int, n_embd: int,
                       metadata: dict[str, Any] | None = None, cache_type: str = "f16") -> int:
    """KV bytes of one token over every layer; key / value widths from the GGUF metadata
    (`{arch}.attention.key_length`) where given, else `n_embd / n_head`."""
    meta = metadata or {}
    arch = meta.get("general.architecture", "")
    head = n_embd // max(1, n_head)
    k = int(meta.get(f"{arch}.attention.key_length", head))
    v = int(meta.get(f"{arch}.attention.value_length", head))
    return int(n_layer * n_head_kv * (k + v) * CACHE_TYPE_BYTES[cache_type])


def _size(n: float) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB / 4 else f"{n / (1 << 20):.1f} MiB"


@dataclass(frozen=True)
class KVPlan:
    """The KV cache planned for one engine, and what it was planned from."""

    slots: int  # sequences decoded together, each with its own KV stream
    n_ctx_seq: int  # tokens (prompt + answer) one sequence may hold
    bytes_per_token: int
    budget: int  # bytes the cache could take
    available: int | None  # MemAvailable when planned (None: unknown)
    trained: int  # the model's trained context
    cache_type: str = "f16"

    @property
    def bytes(self) -> int:
        return self.slots * self.n_ctx_seq * self.bytes_per_token

    def describe(self) -> str:
        """The start-up line."""
        where = (f"of {_size(self.available)} available" if self.available is not None
                 else "memory available unknown")
        why = " (the model's trained context)" if self.n_ctx_seq == self.trained else ""
        seqs = f"{self.slots} sequence{'s' if self.slots > 1 else ''}"
        return (f"KV cache: {seqs} × {self.n_ctx_seq} tokens{why} = "
                f"{_size(self.bytes)} ({self.cache_type}, {self.bytes_per_token} B/token); "
                f"budget {_size(self.budget)} {where}")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes": self.bytes}


def kv_budget(kv_memory_gb: float | None, available: int | None) -> int:
    """The bytes a KV cache may take: the user's figure, else a fraction of what is
    available."""
    if kv_memory_gb is not None:
        return int(kv_memory_gb * GiB)
    if available is None:
        return UNKNOWN_MEMORY_BUDGET
    return int(KV_MEMORY_FRACTION * available)


def plan_kv(bytes_per_token: int, budget: int, trained: int, slots: int,
            want: int | None = None, available: int | None = None,
            cache_type: str = "f16") -> KVPlan:
    """`slots` sequences of min(want, trained) tokens when the budget holds them; else
    shorter ones down to MIN_SEQ_CONTEXT, then fewer ones. UserError when one sequence of
    MIN_TOKENS does not fit."""
    if bytes_per_token < 1 or trained < 1 or slots < 1:
        raise ValueError(f"bad KV plan inputs: {bytes_per_token} B/token, trained context "
                         f"{trained}, {slots} slots")
    ctx = min(trained, want or trained)
    floor = min(ctx, MIN_SEQ_CONTEXT)
    if budget // (bytes_per_token * slots) < floor:  # fewer sequences rather than shorter
        slots = max(1, min(slots, budget // (bytes_per_token * floor)))
    n = min(ctx, budget // (bytes_per_token * slots))
    if n < ctx and n >= ALIGN:
        n -= n % ALIGN
    if n < min(ctx, MIN_TOKENS):
        raise UserError(f"a KV cache budget of {_size(budget)} holds {n} tokens of one "
                        f"sequence ({bytes_per_token} bytes each): give more with "
                        "--kv-memory (GiB) or free memory")
    return KVPlan(slots, n, bytes_per_token, budget, available, trained, cache_type)
