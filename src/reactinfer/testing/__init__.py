"""Helpers for tests: tiny in-process models and numeric checks."""
from .numeric import assert_tamper_refused, sqnr_db
from .tiny import (
    TINY_CNN,
    png_claiming,
    save_outlier_hf,
    save_tiny_hf,
    tiny_cnn,
    tiny_cnn_builtin,
    tiny_handle,
    tiny_image_handle,
    tiny_images,
    tiny_model,
    tiny_texts,
    tiny_tokenizer,
)

__all__ = ["TINY_CNN", "assert_tamper_refused", "png_claiming", "save_outlier_hf",
           "save_tiny_hf", "sqnr_db", "tiny_cnn", "tiny_cnn_builtin", "tiny_handle",
           "tiny_image_handle", "tiny_images", "tiny_model", "tiny_texts", "tiny_tokenizer"]
