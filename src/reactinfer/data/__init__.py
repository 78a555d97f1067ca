"""Data: the built-in corpus and readers for user files."""
from .corpus import PARTS, corpus_part, load_corpus
from .readers import read_texts, split_user_texts


def texts_for(part: str, data: str | None = None, limit: int | None = None) -> list[str]:
    """The `part` of the user's file if given, else of the built-in corpus."""
    if data is None:
        return corpus_part(part, limit)
    texts = split_user_texts(read_texts(data))[part]
    return texts[:limit] if limit is not None else texts


__all__ = ["PARTS", "corpus_part", "load_corpus", "read_texts", "split_user_texts", "texts_for"]
