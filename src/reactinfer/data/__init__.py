"""Data: the built-in corpus and images, and readers for user files and folders."""
import hashlib
import json
from collections.abc import Sequence
from typing import Any

from ..core.images import ImagePreprocess
from .corpus import PARTS, corpus_part, load_corpus
from .images import (
    ImageItem,
    builtin_images,
    image_classes,
    image_key,
    images_for,
    read_image_dir,
)
from .readers import (
    LabelledText,
    model_label2id,
    number_labels,
    read_texts,
    split_user_texts,
)


def texts_for(part: str, data: str | None = None, limit: int | None = None,
              preprocess: Any = None, label2id: dict[str, int] | None = None) -> list[Any]:
    """The `part` of the user's file if given, else of the built-in corpus. For an image
    model (`preprocess` is its ImagePreprocess) the items are images: of the folder `data`,
    else of the built-in image set the model declares (photos, digits). Texts with string
    labels get class ids from `label2id` (the model's names) or their sorted names,
    numbered over the whole file so that every part agrees (readers.py)."""
    if isinstance(preprocess, ImagePreprocess):
        items: list[Any] = images_for(part, data, preprocess.dataset)
        return items[:limit] if limit is not None else items
    if data is None:
        return corpus_part(part, limit)
    texts = split_user_texts(number_labels(read_texts(data), label2id))[part]
    return texts[:limit] if limit is not None else texts


def items_for(handle: Any, part: str, data: str | None = None,
              limit: int | None = None) -> list[Any]:
    """The items of `part` (calibration, train, eval) for the model `handle` is: texts for
    a text model, images for an image model (its `tokenizer` slot holds its
    ImagePreprocess, which names the built-in image set that fits it). The one way the
    planner and the compression techniques read their data."""
    return texts_for(part, data, limit, preprocess=getattr(handle, "tokenizer", None),
                     label2id=model_label2id(getattr(handle, "model", None)))


def items_sha256(items: Sequence[Any]) -> str:
    """A digest of the items a measurement ran on (texts or images): what a cached reference
    output depends on. For texts it is the digest of their JSON list."""
    keys = [[str(it), it.label] if isinstance(it, LabelledText) else
            it if isinstance(it, str) else image_key(it) for it in items]
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()


__all__ = ["PARTS", "ImageItem", "LabelledText", "builtin_images", "corpus_part",
           "image_classes", "images_for", "items_for", "items_sha256", "load_corpus",
           "model_label2id", "number_labels", "read_image_dir", "read_texts",
           "split_user_texts", "texts_for"]
