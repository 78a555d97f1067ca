"""The built-in corpus: docstrings of the Python standard library.

Real English text with no download, the same on every machine with the same Python
version. Docstrings are parsed (never imported) from the stdlib sources, split into
paragraphs, cleaned, de-duplicated, and assigned to a part by a hash of their text,
so a paragraph's part never depends on what else is in the corpus:

    calibration 10% · train 70% · eval 20%   (then capped per part, see PART_LIMITS)
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from ..core.cache import kept
from ..core.errors import UserError

PARTS = ("calibration", "train", "eval")
# Upper bounds on each part: enough for stable quality figures, small enough for a
# 2-core machine to evaluate in seconds.
PART_LIMITS = {"calibration": 512, "train": 20000, "eval": 2000}
# What a part gives when no limit is asked: the eval part holds more (about 1,900 texts),
# so that the planner can re-measure its pick on texts its search never judged on
DEFAULT_SIZES = {"eval": 1000}
_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages",
              "__pycache__", "turtledemo", "ensurepip", "pydoc_data"}
_MIN_CHARS, _MAX_CHARS, _MIN_WORDS = 40, 1000, 6
_CODE_LINE = re.compile(r"^\s*(>>>|\.\.\.|\$ |[{}()\[\]]|[-=*~^]{3,})")


def _part_of(text: str) -> str:
    bucket = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10
    return "calibration" if bucket == 0 else "eval" if bucket in (1, 2) else "train"


def _paragraphs(doc: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", doc):
        lines = para.strip().splitlines()
        if not lines or any(_CODE_LINE.match(line) for line in lines):
            continue  # doctests, tables, rules: not prose
        text = " ".join(line.strip() for line in lines)
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if (_MIN_CHARS <= len(text) <= _MAX_CHARS and len(text.split()) >= _MIN_WORDS
                and letters / len(text) > 0.85):
            out.append(text)
    return out


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return []
    nodes = [tree] + [n for n in ast.walk(tree)
                      if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
    return [d for n in nodes if (d := ast.get_docstring(n))]


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files += [Path(dirpath, f) for f in sorted(filenames) if f.endswith(".py")]
    return files


def build_corpus() -> dict[str, list[str]]:
    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    seen: set[str] = set()
    for path in _stdlib_files():
        for doc in _docstrings(path):
            for text in _paragraphs(doc):
                if text not in seen:
                    seen.add(text)
                    parts[_part_of(text)].append(text)
    # Sort by hash so the cap takes a spread of modules, not the alphabetically first ones.
    for name, texts in parts.items():
        texts.sort(key=lambda t: hashlib.sha256(t.encode()).hexdigest())
        parts[name] = texts[:PART_LIMITS[name]]
    return parts


def load_corpus() -> dict[str, list[str]]:
    """All parts; built once per Python version and kept in the cache (core/cache.py:
    building takes seconds)."""
    tag = f"v2-{sys.implementation.cache_tag}-{sys.version_info.micro}"  # v2: eval ≤ 2,000

    def read(entry: Path) -> dict[str, list[str]]:
        data = json.loads((entry / "corpus.json").read_text(encoding="utf-8"))
        if set(data) != set(PARTS):
            raise ValueError(f"parts {sorted(data)}, not {sorted(PARTS)}")
        return data

    return kept("corpus", tag, build_corpus, lambda data, d: (d / "corpus.json").write_text(
        json.dumps(data), encoding="utf-8"), read)


def corpus_part(part: str, limit: int | None = None) -> list[str]:
    if part not in PARTS:
        raise UserError(f"unknown corpus part {part!r}; choose one of {', '.join(PARTS)}")
    texts = load_corpus()[part]
    return texts[:limit if limit is not None else DEFAULT_SIZES.get(part, len(texts))]
