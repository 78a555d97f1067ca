"""Data: the built-in corpus and images, and readers for user files and folders."""
from typing import Any

from ..core.images import ImagePreprocess
from .corpus import PARTS, corpus_part, load_corpus
from .images import ImageItem, builtin_images, images_for, read_image_dir
from .readers import read_texts, split_user_texts


def texts_for(part: str, data: str | None = None, limit: int | None = None,
              preprocess: Any = None) -> list[Any]:
    """The `part` of the user's file if given, else of the built-in corpus. For an image
    model (`preprocess` is its ImagePreprocess) the items are images: of the folder `data`,
    else of the built-in image set the model declares (photos, digits)."""
    if isinstance(preprocess, ImagePreprocess):
        items: list[Any] = images_for(part, data, preprocess.dataset)
        return items[:limit] if limit is not None else items
    if data is None:
        return corpus_part(part, limit)
    texts = split_user_texts(read_texts(data))[part]
    return texts[:limit] if limit is not None else texts


__all__ = ["PARTS", "ImageItem", "builtin_images", "corpus_part", "images_for", "load_corpus",
           "read_image_dir", "read_texts", "split_user_texts", "texts_for"]
