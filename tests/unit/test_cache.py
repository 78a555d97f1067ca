"""core/cache.py: what is derived once is kept whole, verified on every read, and a cache
that cannot keep or read an entry only costs the next use the derivation."""
from __future__ import annotations

import json

from reactinfer.core.cache import HASHES, entry_dir, keep, kept, read_kept, verified


def _save(value: dict, d) -> None:
    (d / "v.json").write_text(json.dumps(value))


def _read(d) -> dict:
    return json.loads((d / "v.json").read_text())


def test_an_entry_is_derived_once_then_read_verified(tmp_path, monkeypatch):
    monkeypatch.setenv("REACT_CACHE_DIR", str(tmp_path))
    calls: list[int] = []

    def derive() -> dict:
        calls.append(1)
        return {"n": len(calls)}

    assert kept("k", "a", derive, _save, _read) == {"n": 1}
    assert kept("k", "a", derive, _save, _read) == {"n": 1} and len(calls) == 1
    entry = entry_dir("k", "a")
    assert verified(entry) and json.loads((entry / HASHES).read_text()).keys() == {"v.json"}
    (entry / "v.json").write_text('{"n": 99}')  # damaged: its hash differs
    assert read_kept("k", "a", _read) is None
    assert kept("k", "a", derive, _save, _read) == {"n": 2}  # derived again, replaced
    assert read_kept("k", "a", _read) == {"n": 2}
    assert [p.name for p in (tmp_path / "k").iterdir()] == ["a"]  # no temporary left


def test_a_writer_or_reader_that_fails_costs_only_the_derivation(tmp_path, monkeypatch):
    monkeypatch.setenv("REACT_CACHE_DIR", str(tmp_path))

    class WriterError(Exception):  # e.g. safetensors' own error on a full disk
        pass

    def failing_save(value: dict, d) -> None:
        (d / "half").write_text("x")
        raise WriterError("disk full")

    assert kept("k", "b", lambda: {"n": 1}, failing_save, _read) == {"n": 1}
    assert list((tmp_path / "k").iterdir()) == []  # nothing kept, no temporary left
    keep("k", "c", lambda d: _save({"n": 1}, d))

    def unreadable(d) -> dict:  # an entry another version wrote
        raise RuntimeError("untagged enum ModelWrapper")

    assert read_kept("k", "c", unreadable) is None
    assert kept("k", "c", lambda: {"n": 2}, _save, unreadable) == {"n": 2}
    assert read_kept("k", "c", _read) == {"n": 2}  # the unreadable entry was replaced
