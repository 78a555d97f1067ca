"""The trial store: every trial of a planning run in SQLite, so a run can resume without
redoing finished trials and its report can be rebuilt from the store alone."""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..core.errors import UserError

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
    decision TEXT NOT NULL,      -- baseline | kept | rolled back | failed
    reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    created REAL NOT NULL
);
"""


class TrialStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.executescript(SCHEMA)
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

    def get(self, key: str) -> dict[str, Any] | None:
        cur = self.db.execute("SELECT * FROM trials WHERE key=?", (key,))
        row = cur.fetchone()
        return self._row(cur, row) if row else None

    def put(self, trial: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (trial["key"], trial["step"], trial["action"], trial["thought"], trial.get("parent"),
             json.dumps(trial["candidate"]), json.dumps(trial.get("observation")),
             trial["decision"], trial["reason"], trial.get("seconds", 0.0), time.time()))
        self.db.commit()  # one commit per trial: a killed run loses at most the trial in flight

    def all(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT * FROM trials ORDER BY step, created")
        return [self._row(cur, r) for r in cur.fetchall()]

    @staticmethod
    def _row(cur: sqlite3.Cursor, row: tuple) -> dict[str, Any]:
        d = dict(zip([c[0] for c in cur.description], row, strict=True))
        d["candidate"] = json.loads(d["candidate"])
        d["observation"] = json.loads(d["observation"]) if d["observation"] else None
        return d

    def close(self) -> None:
        self.db.close()
