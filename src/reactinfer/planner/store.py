"""The trial store: every trial of a planning run in SQLite, so a run can resume without
redoing finished trials and its report can be rebuilt from the store alone. It writes and
reads `Trial` records (record.py); a store written before a column was added reads as it
was written (the missing values are None)."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from .record import Decision, Trial, split_unseen

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,        -- candidate key: hash of its recipe
    step INTEGER NOT NULL,
    action TEXT NOT NULL,
    thought TEXT NOT NULL,
    parent TEXT,
    candidate TEXT NOT NULL,     -- JSON recipe: transforms + backend + options
    observation TEXT,            -- JSON measurements (NULL if the action failed)
    decision TEXT NOT NULL,      -- baseline | kept | rolled back | failed (Decision)
    reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL
);
"""
# columns added since: (name, SQL type), added to an older store when it is opened
ADDED = (("unseen", "TEXT"),)  # Trial.unseen: the repair's verdict on never-judged items
COLUMNS = ("key", "step", "action", "thought", "parent", "candidate", "observation",
           "decision", "reason", "seconds", "created") + tuple(c for c, _ in ADDED)


class TrialStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)
        have = {r[1] for r in self.db.execute("PRAGMA table_info(trials)")}
        for name, kind in ADDED:
            if name not in have:
                self.db.execute(f"ALTER TABLE trials ADD COLUMN {name} {kind}")
        self.db.commit()

    def check_run(self, settings: dict[str, Any], resume: bool) -> None:
        """Tie the store to one run's settings; refuse to mix runs."""
        row = self.db.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        encoded = json.dumps(settings, sort_keys=True)
        if row is None:
            self.db.execute("INSERT INTO meta VALUES ('settings', ?)", (encoded,))
            self.db.commit()
            return
        if not resume:
            raise UserError(f"{self.path} holds an earlier run; pass --resume to continue it, or "
                            "choose another output directory")
        if row[0] != encoded:
            old = json.loads(row[0])
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            if "fingerprint" in diff:
                raise UserError(f"cannot resume {self.path.parent}: the model's weights are "
                                "not those of the earlier run (their sha256 differs); pass the "
                                "same model, or choose another output directory")
            raise UserError(f"cannot resume: the earlier run used different settings {diff}; "
                            "use the same settings or another output directory")

    def get_meta(self, key: str) -> Any:
        """A run-wide value stored with the trials (JSON), or None."""
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self.db.commit()

    def get(self, key: str) -> Trial | None:
        cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM trials WHERE key=?", (key,))
        row = cur.fetchone()
        return _trial(row) if row else None

    def put(self, trial: Trial) -> None:
        """Store a trial, or replace the stored one of the same key (a revised decision)."""
        if trial.decision is Decision.SKIPPED:
            raise ValueError(f"a trial skipped for the time budget is not stored: {trial.key}")
        self.db.execute(
            f"INSERT OR REPLACE INTO trials ({', '.join(COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(COLUMNS))})",
            (trial.key, trial.step, trial.action, trial.thought, trial.parent,
             json.dumps(trial.candidate), json.dumps(trial.observation),
             trial.decision.value, trial.reason, trial.seconds, time.time(), trial.unseen))
        self.db.commit()  # one commit per trial: a killed run loses at most the trial in flight

    def all(self) -> list[Trial]:
        cur = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM trials ORDER BY step, created")
        return [_trial(r) for r in cur.fetchall()]

    def close(self) -> None:
        self.db.close()


def _trial(row: tuple[Any, ...]) -> Trial:
    d = dict(zip(COLUMNS, row, strict=True))
    d["candidate"] = json.loads(d["candidate"])
    d["observation"] = json.loads(d["observation"]) if d["observation"] else None
    if d["unseen"] is None:  # a row from before `unseen` was stored held it in its reason
        d["reason"], d["unseen"] = split_unseen(d["reason"])
    return Trial(**d)
