"""User data: one text per line, or JSONL with a `text` field."""
from __future__ import annotations

import json
from pathlib import Path

from ..core.errors import UserError


def read_texts(path: str | Path, field: str = "text") -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"data file {p} does not exist")
    try:
        raw = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"data file {p} is not UTF-8 text (byte {e.start}); "
                        "re-encode it as UTF-8") from None
    lines = [line for line in raw.splitlines() if line.strip()]
    if not lines:
        raise UserError(f"data file {p} is empty: give one text per line, or JSONL "
                        f"with a {field!r} field")
    if p.suffix in (".jsonl", ".json") or lines[0].lstrip().startswith("{"):
        texts = []
        for n, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise UserError(f"{p}:{n}: expected an object with a string {field!r} field")
            texts.append(obj[field])
        return texts
    return lines


def split_user_texts(texts: list[str]) -> dict[str, list[str]]:
    """Split user data into the same three parts as the built-in corpus, by hash."""
    from .corpus import PARTS, _part_of

    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    for t in texts:
        parts[_part_of(t)].append(t)
    if not parts["eval"]:  # tiny files: evaluate on everything rather than on nothing
        parts["eval"] = list(texts)
    return parts
