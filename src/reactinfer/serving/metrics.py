"""Prometheus metrics written in the text exposition format (no client library needed)."""
from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Sequence

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    esc = [(k, str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n"))
           for k, v in items]
    return "{" + ",".join(f'{k}="{v}"' for k, v in esc) + "}"


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, name: str, help: str):
        self.name, self.help = name, help
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]

    def render(self) -> list[str]:
        raise NotImplementedError  # each kind writes its own lines


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help: str):
        super().__init__(name, help)
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def get(self, **labels: str) -> float:
        return self.values.get(tuple(sorted(labels.items())), 0.0)

    def render(self) -> list[str]:
        return self.header() + [f"{self.name}{_labels(k)} {_fmt(v)}"
                                for k, v in sorted(self.values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self.values[tuple(sorted(labels.items()))] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]):
        super().__init__(name, help)
        self.buckets = tuple(buckets)
        self.data: dict[Labels, list[float]] = {}  # per-bucket counts, then sum, count

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            row = self.data.setdefault(key, [0.0] * (len(self.buckets) + 2))
            i = bisect.bisect_left(self.buckets, value)
            if i < len(self.buckets):
                row[i] += 1
            row[-2] += value
            row[-1] += 1

    def render(self) -> list[str]:
        out = self.header()
        for key, row in sorted(self.data.items()):
            cum = 0.0
            for b, c in zip(self.buckets, row, strict=False):  # row ends with sum, count
                cum += c
                out.append(f"{self.name}_bucket{_labels(key, (('le', _fmt(b)),))} {_fmt(cum)}")
            out.append(f"{self.name}_bucket{_labels(key, (('le', '+Inf'),))} {_fmt(row[-1])}")
            out.append(f"{self.name}_sum{_labels(key)} {_fmt(row[-2])}")
            out.append(f"{self.name}_count{_labels(key)} {_fmt(row[-1])}")
        return out


class Metrics:
    """The server's metrics; one instance per app."""

    def __init__(self) -> None:
        self.requests = Counter("react_requests_total", "HTTP requests by endpoint and status")
        self.queue_length = Gauge("react_queue_length", "items waiting in the batcher queue")
        self.batch_size = Histogram("react_batch_size", "items per model call", BATCH_BUCKETS)
        self.queue_seconds = Histogram("react_queue_seconds", "time a request waited in the "
                                       "queue", LATENCY_BUCKETS)
        self.compute_seconds = Histogram("react_compute_seconds", "time of one model call "
                                         "(a batch, or a whole generation)", LATENCY_BUCKETS)
        self.latency = Histogram("react_request_latency_seconds", "admission to answer (first "
                                 "token for completions)", LATENCY_BUCKETS)
        self.tpot = Histogram("react_time_per_output_token_seconds", "a finished generation's "
                              "mean time per token after its first", LATENCY_BUCKETS)
        self.tpot_violations = Counter("react_tpot_violations_total", "finished generations "
                                       "whose time per output token exceeded --tpot-ms")
        self.step_overhead = Histogram("react_decode_step_overhead_seconds", "time of a "
                                       "decode step outside the engine's decode call (batch, "
                                       "sampling, detokenising, sending)", LATENCY_BUCKETS)
        self.slo_violations = Counter("react_slo_violations_total",
                                      "answered requests that missed their deadline")
        self.rejected = Counter("react_rejected_total", "requests refused, by reason")
        self.active_variant = Gauge("react_active_variant", "1 for the variant now serving")
        self.variant_requests = Counter("react_variant_requests_total",
                                        "requests answered, by variant")
        self.switches = Counter("react_variant_switches_total", "ladder steps, by direction")
        self.probe_errors = Counter(
            "react_probe_errors_total", "idle probes of a better variant that failed (the "
            "ladder stays stepped down until one succeeds; the server log says why)")
        self.prefix_lookups = Counter("react_prefix_cache_lookups_total", "prompts that "
                                      "joined a decode engine (each looks up its prefix)")
        self.prefix_hits = Counter("react_prefix_cache_hits_total", "prompts that reused a "
                                   "cached prefix's KV")
        self.prefix_hit_rate = Gauge("react_prefix_cache_hit_rate", "prefix cache hits / "
                                     "lookups since start")
        self.prefix_tokens_saved = Counter("react_prefix_cache_tokens_saved_total", "prompt "
                                           "tokens not evaluated: their KV was reused")
        self.prefix_cached_tokens = Gauge("react_prefix_cache_tokens", "tokens whose KV idle "
                                          "decode slots keep for later prompts")
        self.prefix_cached_bytes = Gauge("react_prefix_cache_bytes", "the KV memory of those "
                                         "tokens (it stays allocated either way)")
        self.spec_proposed = Counter("react_speculative_proposed_tokens_total", "draft "
                                     "tokens proposed for the target model to verify")
        self.spec_accepted = Counter("react_speculative_accepted_tokens_total", "draft "
                                     "tokens the target model agreed with (kept)")
        self.spec_accept_rate = Gauge("react_speculative_acceptance_rate", "accepted / "
                                      "proposed draft tokens since start")
        self.spec_tokens_per_call = Histogram(
            "react_speculative_tokens_per_call", "tokens a decoding sequence gained from one "
            "target model call (1 without a draft)", (1, 2, 3, 4, 5, 6, 8, 10, 12, 16))
        self.kv_bytes = Gauge("react_kv_cache_bytes", "a decode engine's KV cache, planned "
                              "from the memory at hand (sequences × context × bytes/token)")
        self.kv_sequences = Gauge("react_kv_cache_sequences", "sequences a decode engine "
                                  "decodes together, each with its own KV stream")
        self.kv_context = Gauge("react_kv_cache_context_tokens", "tokens (prompt + answer) "
                                "one sequence's KV stream holds")
        self.cache_hits = Counter("react_cache_hits_total", "items answered from the cache")
        self.cache_misses = Counter("react_cache_misses_total", "items not in the cache")
        self.effective_quality = Gauge(
            "react_effective_quality", "mean quality of answers, counting an answer delivered "
            "after its deadline as 0 (1.0 = the original model, always on time); answers "
            "from a variant of unknown quality are counted apart")
        self.unknown_quality = Counter(
            "react_unknown_quality_answers_total", "answers from a variant whose quality "
            "against the original was never measured (not in react_effective_quality)")
        self.ontime_quality = Gauge("react_ontime_quality",
                                    "mean quality of answers delivered within their deadline")
        self.ready = Gauge("react_ready", "1 when the server accepts inference requests")
        self._quality: dict[str, list[float]] = {}  # model -> [on-time sum, on-time n, n]
        self._qlock = threading.Lock()

    def record_quality(self, model: str, quality: float | None, on_time: bool) -> None:
        if quality is None:  # not a guess of 1 or 0: said apart, so the mean stays true
            self.unknown_quality.inc(model=model)
            return
        with self._qlock:
            row = self._quality.setdefault(model, [0.0, 0.0, 0.0])
            if on_time:
                row[0] += quality
                row[1] += 1
            row[2] += 1
            self.effective_quality.set(row[0] / row[2], model=model)
            if row[1]:
                self.ontime_quality.set(row[0] / row[1], model=model)

    def render(self) -> str:
        lines: list[str] = []
        for m in vars(self).values():
            if isinstance(m, _Metric):
                lines += m.render()
        return "\n".join(lines) + "\n"
