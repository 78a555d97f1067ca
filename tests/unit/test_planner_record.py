"""The trial record (planner/record.py) and its store: typed in, typed out, the same words on
disk and in report.json, and an older store still loads."""
import dataclasses
import json
import sqlite3
import types

import pytest

from reactinfer.planner.record import NEVER_JUDGED, Decision, Trial
from reactinfer.planner.store import TrialStore
from reactinfer.planner.trial import TrialRunner

# the schema of a store written before `Trial.unseen` had a column
OLD_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE trials (
    key TEXT PRIMARY KEY, step INTEGER NOT NULL, action TEXT NOT NULL, thought TEXT NOT NULL,
    parent TEXT, candidate TEXT NOT NULL, observation TEXT, decision TEXT NOT NULL,
    reason TEXT NOT NULL, seconds REAL NOT NULL, created REAL NOT NULL);
"""
CAND = {"transforms": [], "backend": "onnxruntime", "backend_options": {"fp32_layers": ["a"]}}


def _trial(**kw):
    base = dict(key="k1", step=3, action="int8 + 1 layer fp32", thought="keep one",
                parent="k0", candidate=CAND, observation={"quality_drop": 0.01},
                decision=Decision.KEPT, reason="throughput ×1.30 vs best; drop 0.0100",
                seconds=2.5, family="onnxruntime-int8")
    return Trial(**{**base, **kw})


def test_a_decision_is_its_word_in_json_and_text():
    assert json.dumps(Decision.ROLLED_BACK) == '"rolled back"'
    assert f"{Decision.KEPT}" == "kept" and Decision("failed") is Decision.FAILED
    assert _trial(decision="skipped").decision is Decision.SKIPPED  # a word from JSON
    with pytest.raises(ValueError):
        _trial(decision="maybe")


def test_the_json_form_round_trips_and_says_the_unseen_verdict_after_the_reason():
    t = _trial(unseen="quality drop 0.02 ≤ 0.05", unseen_quality={"mean_cosine": 0.98},
               over_bound=False, reserve_s=12.0)
    d = t.to_json()
    assert d["decision"] == "kept" and type(d["decision"]) is str
    assert d["reason"] == f"{t.reason}; on the {NEVER_JUDGED}: quality drop 0.02 ≤ 0.05"
    assert "artifact" not in d and "within_bound" not in d  # not set: not said
    assert list(d)[:10] == ["key", "step", "action", "thought", "parent", "candidate",
                            "observation", "decision", "reason", "seconds"]
    assert Trial.from_json(json.loads(json.dumps(d))) == t


def test_the_store_writes_and_reads_trials(tmp_path):
    store = TrialStore(tmp_path / "trials.sqlite")
    t = _trial(unseen="quality drop 0.02 ≤ 0.05", reused=True, reserve_s=5.0)
    store.put(t)
    back = store.get("k1")
    assert isinstance(back, Trial) and back.decision is Decision.KEPT
    # what is stored comes back; what the run derives does not
    assert dataclasses.replace(back, created=None) == dataclasses.replace(
        t, family="", reused=False, reserve_s=None)
    assert store.all() == [back]
    with pytest.raises(ValueError, match="not stored"):
        store.put(_trial(key="k2", decision=Decision.SKIPPED))
    store.close()


def test_an_older_store_with_dict_shaped_rows_still_loads(tmp_path):
    """A store written before the Trial record (and its `unseen` column) resumes: its rows
    read as Trials, the unseen check's verdict it kept in the reason goes to its field."""
    path = tmp_path / "trials.sqlite"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    row = {"key": "k1", "step": 3, "action": "int8 + 1 layer fp32", "thought": "keep one",
           "parent": "k0", "candidate": json.dumps(CAND),
           "observation": json.dumps({"quality_drop": 0.01}), "decision": "rolled back",
           "reason": f"drop 0.0100; on the {NEVER_JUDGED}: quality drop 0.09 > bound 0.05",
           "seconds": 2.5, "created": 1.0}
    db.execute("INSERT INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?)", tuple(row.values()))
    base = dict(row, key="k0", step=0, parent=None, observation="null", decision="baseline",
                reason="the original model", candidate=json.dumps({}))
    db.execute("INSERT INTO trials VALUES (?,?,?,?,?,?,?,?,?,?,?)", tuple(base.values()))
    db.commit()
    db.close()

    store = TrialStore(path)
    old = store.get("k1")
    assert old is not None and old.decision is Decision.ROLLED_BACK
    assert old.reason == "drop 0.0100" and old.unseen == "quality drop 0.09 > bound 0.05"
    assert old.full_reason == row["reason"] and old.candidate == CAND
    assert [t.key for t in store.all()] == ["k0", "k1"]
    assert store.get("k0").observation is None
    # a revised trial goes back into the older store, which gained the column
    store.put(dataclasses.replace(old, unseen="quality drop 0.04 ≤ 0.05"))
    assert store.get("k1").unseen == "quality drop 0.04 ≤ 0.05"
    store.close()


def test_a_revised_trial_replaces_the_old_one_in_the_store_and_the_log(tmp_path):
    runner = TrialRunner()
    runner.store = TrialStore(tmp_path / "trials.sqlite")
    first, other = _trial(), _trial(key="k2", step=4)
    runner.log = [first, other]
    for t in runner.log:
        runner.store.put(t)
    revised = runner.revise(first, decision=Decision.ROLLED_BACK,
                            reason="the set of 2 layers meets the bound; " + first.reason)
    assert runner.log == [revised, other] and first.decision is Decision.KEPT
    stored = runner.store.get("k1")
    assert stored.decision is Decision.ROLLED_BACK and stored.reason == revised.reason
    with pytest.raises(ValueError, match="not in this run's log"):
        runner.revise(first, reason="again")  # the old record is no longer the run's
    runner.store.close()


def test_a_skip_that_failed_is_recorded_as_failed_and_not_stored(tmp_path):
    runner = TrialRunner()
    runner.store = TrialStore(tmp_path / "trials.sqlite")
    runner.log = []
    action = types.SimpleNamespace(name="int8", family="onnxruntime-int8")
    cand = types.SimpleNamespace(key="c", to_json=lambda: CAND)
    t = runner.skip(5, action, cand, "rank", "k0", "ranking the layers failed: ValueError",
                    Decision.FAILED)
    assert runner.log == [t] and t.decision is Decision.FAILED and t.observation is None
    assert runner.store.all() == []
    runner.store.close()
