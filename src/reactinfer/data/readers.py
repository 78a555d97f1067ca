"""User data: one text per line, or JSONL with a `text` field (and optionally a `label`).

Labels (JSONL `label`, on every line or on none) make the texts `LabelledText`s: plain
strings, so every tokenizer and split takes them as before, with the class id on
`.label` (what `--metric accuracy` and the classification task's accuracy read). Integer
labels are class ids. String labels are mapped to ids by `number_labels`: through the
model's `label2id` (its Hugging Face config) when it names its classes, else by the
sorted unique names in the file (as image class subfolders are); strings of digits are
ids.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import UserError

LABEL_FIELD = "label"
_DEFAULT_NAME = re.compile(r"LABEL_\d+")  # what transformers names classes nobody named


class LabelledText(str):
    """A text with its label: an int class id, or a name until `number_labels` maps it."""

    label: Any

    def __new__(cls, text: str, label: Any) -> LabelledText:
        obj = super().__new__(cls, text)
        obj.label = label
        return obj

    def __reduce__(self) -> tuple[Any, ...]:  # copies and Ray keep the label
        return (LabelledText, (str(self), self.label))


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
        texts: list[str] = []
        labelled = None  # whether the first line has a label: every line must agree
        for n, line in enumerate(lines, 1):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{p}:{n}: not valid JSON ({e.msg})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
                raise UserError(f"{p}:{n}: expected an object with a string {field!r} field")
            has = obj.get(LABEL_FIELD) is not None
            if labelled is None:
                labelled = has
            elif has != labelled:
                raise UserError(f"{p}:{n}: {'no' if labelled else 'a'} {LABEL_FIELD!r} field, "
                                f"unlike line 1: give a label on every line or on none")
            texts.append(LabelledText(obj[field], _raw_label(obj[LABEL_FIELD], p, n))
                         if has else obj[field])
        return texts
    return lines


def _raw_label(value: Any, p: Path, n: int) -> int | str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip():
        return int(value) if value.strip().isdigit() else value.strip()
    raise UserError(f"{p}:{n}: 'label' must be a class id (an integer ≥ 0) or a class "
                    f"name (a string), got {value!r}")


def model_label2id(model: Any) -> dict[str, int] | None:
    """The class names a model's Hugging Face config gives (None without them, or when
    they are transformers' defaults, LABEL_0, LABEL_1, ...)."""
    config = getattr(model, "config", None)
    label2id = getattr(config, "label2id", None)
    if not isinstance(label2id, Mapping) or not label2id:
        id2label = getattr(config, "id2label", None)
        if not isinstance(id2label, Mapping) or not id2label:
            return None
        label2id = {str(v): int(k) for k, v in id2label.items()}
    if all(_DEFAULT_NAME.fullmatch(str(k)) for k in label2id):
        return None
    return {str(k): int(v) for k, v in label2id.items()}


def number_labels(texts: Sequence[str], label2id: Mapping[str, int] | None = None
                  ) -> list[str]:
    """The texts with their string labels mapped to class ids: by `label2id` (the model's
    own names) when given, else by the sorted unique names. Unlabelled texts and integer
    labels pass unchanged."""
    names = sorted({t.label for t in texts
                    if isinstance(t, LabelledText) and isinstance(t.label, str)})
    if not names:
        return list(texts)
    if any(isinstance(t, LabelledText) and isinstance(t.label, int) for t in texts):
        raise UserError("the data mixes class ids and class names in 'label': use one kind")
    if label2id is not None:
        unknown = [n for n in names if n not in label2id]
        if unknown:
            raise UserError(f"label(s) {', '.join(map(repr, unknown[:5]))} are not classes of "
                            f"the model, which has {', '.join(map(repr, sorted(label2id)))}: "
                            "use those names, or class ids")
        ids = dict(label2id)
    else:
        ids = {n: i for i, n in enumerate(names)}
    return [LabelledText(t, ids[t.label]) if isinstance(t, LabelledText) else t for t in texts]


def split_user_texts(texts: list[str]) -> dict[str, list[str]]:
    """Split user data into the same three parts as the built-in corpus, by hash."""
    from .corpus import PARTS, _part_of

    parts: dict[str, list[str]] = {p: [] for p in PARTS}
    for t in texts:
        parts[_part_of(t)].append(t)
    if not parts["eval"]:  # tiny files: evaluate on everything rather than on nothing
        parts["eval"] = list(texts)
    return parts
