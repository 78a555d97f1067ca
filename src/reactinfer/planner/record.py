"""One trial of a planning run as a record: what was tried, what was observed, what was
decided and why. The store (store.py) writes and reads these, the loop (loop.py, trial.py)
and the repair (repair.py) make them, and the report takes their JSON form (`to_json`).

A trial's decision is changed only through `TrialRunner.revise` (trial.py), which stores
the revised trial and puts it in the run's log in place of the old one: the store and the
log never disagree."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any


class Decision(enum.StrEnum):
    """What the loop decided about a trial. A str: report.json, report.md and the store
    hold the same words as before there was a type."""

    BASELINE = "baseline"
    KEPT = "kept"
    ROLLED_BACK = "rolled back"
    FAILED = "failed"
    SKIPPED = "skipped"  # the time budget left no room; never stored (a resume may try it)


# the repair's check of a fallback on held-out items the search never judged on
# (planner/heldout.py) is said after the trial's reason, as "; on the <NEVER_JUDGED>: why"
NEVER_JUDGED = "held-out items the search never judged on"
_UNSEEN_NOTE = f"; on the {NEVER_JUDGED}: "

# fields set while the run goes on and written into report.json, never into the store;
# each is left out of the JSON form while it is None (not set)
_RUNTIME = ("created", "over_bound", "reserve_s", "unseen_quality", "unseen", "within_bound",
            "bound", "artifact")


@dataclasses.dataclass
class Trial:
    """A trial as the store holds it (the first ten fields), plus what the run derives."""

    key: str  # the candidate's key: a hash of its recipe
    step: int
    action: str
    thought: str
    parent: str | None  # the key of the trial it was built on (None: the original)
    candidate: dict[str, Any]  # the recipe as run (Candidate.to_json)
    observation: dict[str, Any] | None  # measurements; None when it failed or was skipped
    decision: Decision
    reason: str  # why the loop decided so (the unseen check's verdict is `unseen`)
    seconds: float = 0.0
    # the repair's verdict on held-out items the search never judged on (heldout.py), in
    # words; None where it did not check. Stored (store.py), and said after the reason.
    unseen: str | None = None
    # -- derived while the run goes on (not stored) --
    created: float | None = None  # when the store recorded it (a trial read from the store)
    family: str = ""  # the action's family
    reused: bool = False  # read from the store of an earlier run, not run again
    over_bound: bool | None = None  # measured, with its quality outside the bound
    reserve_s: float | None = None  # seconds kept for the end of the run when it started
    unseen_quality: dict[str, Any] | None = None  # the quality the `unseen` verdict is on
    within_bound: bool | None = None  # the bound as the report states it (finish.py)
    bound: str | None = None
    artifact: str | None = None  # where the end saved its model (a variant), under -o

    def __post_init__(self) -> None:
        self.decision = Decision(self.decision)  # a plain string from JSON or an older store

    @property
    def full_reason(self) -> str:
        """The reason as the trace says it: the loop's, then the unseen check's verdict."""
        return self.reason if self.unseen is None else f"{self.reason}{_UNSEEN_NOTE}{self.unseen}"

    @property
    def measured(self) -> bool:
        return self.observation is not None

    def to_json(self) -> dict[str, Any]:
        """The JSON form (report.json's trials): the reason as the trace says it, and each
        derived field that is set."""
        out: dict[str, Any] = {
            "key": self.key, "step": self.step, "action": self.action,
            "thought": self.thought, "parent": self.parent, "candidate": self.candidate,
            "observation": self.observation, "decision": self.decision.value,
            "reason": self.full_reason, "seconds": self.seconds}
        if self.created is not None:
            out["created"] = self.created
        out.update(family=self.family, reused=self.reused)
        out.update({k: getattr(self, k) for k in _RUNTIME
                    if k != "created" and getattr(self, k) is not None})
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Trial:
        """The inverse of `to_json`; keys it does not know are an error (TypeError)."""
        d = dict(data)
        if d.get("unseen") is not None:  # the reason as said holds the verdict after it
            d["reason"] = d["reason"].removesuffix(_UNSEEN_NOTE + d["unseen"])
        return cls(**d)


def split_unseen(reason: str) -> tuple[str, str | None]:
    """An older store's reason, which held the unseen check's verdict in its text: the
    reason and the verdict. Only for rows written before `Trial.unseen` was stored."""
    head, sep, tail = reason.partition(_UNSEEN_NOTE)
    return (head, tail) if sep else (reason, None)
