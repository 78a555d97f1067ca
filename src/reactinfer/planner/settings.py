"""PlanSettings: what an optimization run is asked for, in one dataclass. Light on
purpose (no torch): `react optimize` reads its command-line defaults from it."""
from __future__ import annotations

import dataclasses
from typing import Any

from ..core.bounds import check_at_least, check_max_drop
from ..core.errors import UserError
from ..tasks.metrics import MetricFn, metric_name, resolve_metric
from .objective import OBJECTIVES

DEFAULT_N_EVAL = 400
MAX_STREAMS = 256  # more concurrent streams than any CPU serves at once


@dataclasses.dataclass
class PlanSettings:
    model: str
    objective: str = "throughput"
    max_drop: float = 0.01
    budget_s: float = 900.0
    data: str | None = None
    n_eval: int | None = None  # None: default_n_eval(task)
    batch_size: int = 32
    latency_runs: int = 30
    min_gain: float = 0.03
    max_trials: int | None = None
    target: float | None = None  # e.g. 2.0: stop once the objective is ×2 the baseline
    confirm_n_eval: int | None = 1000  # the final side-by-side re-measure (0/None: none)
    # sha256 of an in-memory model's weights (a name or path reloads by itself): a resumed
    # run must be given the same weights
    fingerprint: str | None = None
    # what the bound is on: None, agreement with the original; else the drop of the user's
    # metric, a name ("accuracy", "f1") or callable(outputs, items) -> float (tasks/metrics.py)
    metric: str | MetricFn | None = None
    # a model that generates is judged as served: greedy tokens/s at this many concurrent
    # streams (and at one), `gen_tokens` new tokens each (measure/generation.py)
    streams: int = 8
    gen_tokens: int = 32

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose one of "
                            f"{', '.join(OBJECTIVES)}")
        check_max_drop(self.max_drop)
        check_at_least("--batch-size", self.batch_size)
        check_at_least("--max-trials", self.max_trials)
        if isinstance(self.streams, bool) or not isinstance(self.streams, int) \
                or not 1 <= self.streams <= MAX_STREAMS:
            raise UserError(f"--streams must be a whole number from 1 to {MAX_STREAMS} (the "
                            f"concurrent requests to serve), got {self.streams!r}")
        check_at_least("gen_tokens", self.gen_tokens, 2)
        if self.target is not None and not self.target > 0:
            raise UserError(f"--target must be a positive ratio, e.g. 2.0, got {self.target}")
        if self.budget_s <= 0:
            raise UserError(f"--budget-s must be positive, got {self.budget_s}")
        if self.n_eval is not None and self.n_eval < 10:
            raise UserError("n_eval must be at least 10 for a meaningful quality figure")
        if self.confirm_n_eval is not None and self.confirm_n_eval < 0:
            raise UserError(f"confirm_n_eval must be >= 0 (0: no re-measure), got "
                            f"{self.confirm_n_eval}")
        resolve_metric(self.metric)  # the name is known, or it is a callable

    def store_key(self) -> dict[str, Any]:
        """Settings that change what a trial measures (budget and trial caps do not)."""
        keep = ("model", "objective", "max_drop", "data", "n_eval", "batch_size", "min_gain",
                "streams", "gen_tokens")
        key = {k: getattr(self, k) for k in keep}
        if self.fingerprint is not None:  # older stores have no such key: theirs stay equal
            key["fingerprint"] = self.fingerprint
        if self.metric is not None:  # (absent when None: stores of earlier runs still resume)
            key["metric"] = metric_name(self.metric)
        return key


def default_n_eval(task: str, settings: PlanSettings) -> int:
    """Held-out items per trial when not asked: 400; for embeddings the final re-measure's
    number (1,000), because top-10 recall falls as the corpus grows (minilm int8: 0.945 on
    400 texts, 0.939 on 1,000), so a trial judged on fewer passes what the re-measure fails."""
    from ..tasks import get_task  # here: the CLI builds its parser without torch

    if get_task(task).bounds_recall:
        return max(DEFAULT_N_EVAL, settings.confirm_n_eval or 0)
    return DEFAULT_N_EVAL
