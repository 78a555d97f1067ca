"""How a model wants its images: the preprocessing spec, declared by the model.

`ImagePreprocess` is a frozen dataclass stored in the handle's `tokenizer` slot (the slot
that turns raw items into a model batch) and, as `preprocess.json`, in artifacts. It lives
in core because both the loaders (models) and the task (tasks) need it, and they may not
import each other. Pillow is imported only when an image is actually decoded.

    item (path | uint8 array | PIL image) → mode (RGB / BGR / L) → resize short side
    → centre crop `size` → (x − mean) / std → (C, size, size) float32
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UserError

IMAGE_TASK = "image-classification"  # the task whose models take these images
PREPROCESS_FILE = "preprocess.json"
CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# The most pixels an image file may declare before it is decoded: 40 megapixels (a 7,300 ×
# 5,500 photo, 120 MB as decoded RGB), under Pillow's own warning (89 MP) and error
# (179 MP). A file's header states its size, so a decompression bomb (a small PNG that
# inflates to gigabytes) is refused before any pixel is decoded. REACT_MAX_IMAGE_PIXELS (or
# `react serve --max-image-pixels`) sets another cap; Pillow's error level still applies.
DEFAULT_MAX_PIXELS = 40_000_000
PIXELS_ENV = "REACT_MAX_IMAGE_PIXELS"


@dataclasses.dataclass(frozen=True)
class ImagePreprocess:
    """`size`: the square side the model takes; `resize`: the short side before the centre
    crop (None: resize the whole image to size × size); `mean` / `std` on 0..255 pixels, one
    per channel (ImageNet style: mean (123.7, 116.3, 103.5), std (58.4, 57.1, 57.4); TF-Lite
    style: 127 and 128); `channels`: RGB, BGR or L (grey); `dataset`: the built-in image set
    that fits the model's input ("photos" or "digits") when the user gives no --data;
    `labels`: the class names, index = class id (None: the ids serve as names). They travel
    with the preprocessing because it is what every variant and artifact of a model keeps."""

    size: int = 224
    resize: int | None = 256
    mean: tuple[float, ...] = (127.0, 127.0, 127.0)
    std: tuple[float, ...] = (128.0, 128.0, 128.0)
    channels: str = "RGB"
    dataset: str = "photos"
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.channels not in CHANNELS:
            raise UserError(f"channels must be one of {', '.join(CHANNELS)}, "
                            f"got {self.channels!r}")
        n = CHANNELS[self.channels]
        if len(self.mean) != n or len(self.std) != n:
            raise UserError(f"{self.channels} images need {n} mean and {n} std values, got "
                            f"{len(self.mean)} and {len(self.std)}")
        if self.size < 1 or (self.resize is not None and self.resize < self.size):
            raise UserError(f"need size ≥ 1 and resize ≥ size, got size {self.size}, "
                            f"resize {self.resize}")
        if any(s <= 0 for s in self.std):
            raise UserError(f"std must be positive, got {self.std}")
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.labels is not None:
            object.__setattr__(self, "labels", check_labels(self.labels))

    # -- the batch a runner takes ----------------------------------------------------
    def __call__(self, items: Sequence[Any], **_: Any) -> dict[str, np.ndarray]:
        """{"pixel_values": (N, C, size, size) float32}; text-tokenizer keyword arguments
        (padding, max_length, ...) are ignored so callers can treat both alike."""
        if not len(items):
            raise UserError("no images to preprocess")
        return {"pixel_values": np.stack([self.apply(it) for it in items])}

    def apply(self, item: Any) -> np.ndarray:
        """One item → (C, size, size) float32."""
        from PIL import Image

        img = open_image(getattr(item, "image", item))
        img = img.convert("L" if self.channels == "L" else "RGB")
        if self.resize is None:
            img = img.resize((self.size, self.size), Image.Resampling.BILINEAR)
        else:
            w, h = img.size
            scale = self.resize / min(w, h)
            img = img.resize((max(self.size, round(w * scale)), max(self.size, round(h * scale))),
                             Image.Resampling.BILINEAR)
            w, h = img.size
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
        x = np.asarray(img, dtype=np.float32).reshape(self.size, self.size, -1)  # (H, W, C)
        if self.channels == "BGR":
            x = x[..., ::-1]
        y = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(y.transpose(2, 0, 1), dtype=np.float32)  # (C, H, W)

    # -- storage ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {"type": "ImagePreprocess", **dataclasses.asdict(self)}
        if d["labels"] is None:  # files written before names existed stay byte-identical
            del d["labels"]
        else:
            d["labels"] = list(d["labels"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePreprocess:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields - {"type"}
        if unknown:
            raise UserError(f"unknown image preprocessing field(s) {sorted(unknown)}; "
                            f"known: {', '.join(sorted(fields))}")
        kw = {k: v for k, v in d.items() if k in fields}
        for k in ("mean", "std", "labels"):
            if kw.get(k) is not None:
                kw[k] = tuple(kw[k])
        return cls(**kw)

    def save_pretrained(self, directory: str | Path) -> None:
        """Written beside the weights in an artifact (what `tokenizer.save_pretrained`
        is for text models)."""
        Path(directory, PREPROCESS_FILE).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dir(cls, directory: str | Path) -> ImagePreprocess:
        return read_preprocess(Path(directory, PREPROCESS_FILE))


def as_preprocess(value: Any) -> ImagePreprocess:
    """An ImagePreprocess from itself or a dict of its fields."""
    if isinstance(value, ImagePreprocess):
        return value
    if isinstance(value, dict):
        return ImagePreprocess.from_dict(value)
    raise UserError("preprocess= takes an ImagePreprocess or a dict of its fields (size, "
                    f"resize, mean, std, channels), not {type(value).__name__}")


def read_preprocess(path: Path) -> ImagePreprocess:
    """An ImagePreprocess from a JSON file of its fields, with one line for a bad file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"preprocess file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"preprocess file {path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"preprocess file {path} must hold a JSON object of fields (size, "
                        "resize, mean, std, channels)")
    return ImagePreprocess.from_dict(data)


def open_image(image: Any) -> Any:
    """A PIL image from a path, a uint8 array (H, W) / (H, W, C), or a PIL image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise UserError(f"an image array must be uint8 (H, W) or (H, W, C), got "
                            f"{image.dtype} {image.shape}")
        return Image.fromarray(image)
    if isinstance(image, (str, Path)):
        try:
            img = open_checked(image, str(image))
            img.load()
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read image {image}: {e}") from None
        return img
    raise UserError(f"not an image: {type(image).__name__} (give a path, a uint8 array "
                    "or a PIL image)")


# -- class names -----------------------------------------------------------------------
def check_labels(labels: Any) -> tuple[str, ...]:
    """Class names as a tuple of non-empty strings (index = class id). Repeats are allowed:
    ImageNet itself names two classes "crane"."""
    if isinstance(labels, (str, bytes)) or not isinstance(labels, Sequence):
        raise UserError("labels= takes a list of class names (index = class id), not "
                        f"{type(labels).__name__}")
    bad = [i for i, x in enumerate(labels) if not isinstance(x, str) or not x.strip()]
    if not labels or bad:
        raise UserError("class names must be non-empty strings, one per class id"
                        + (f"; entry {bad[0]} is {labels[bad[0]]!r}" if bad else
                           ", got none"))
    return tuple(x.strip() for x in labels)


def read_labels(path: str | Path) -> tuple[str, ...]:
    """Class names from a file: a JSON list, a JSON object of id → name (Hugging Face's
    `id2label`), or plain text with one name per line, in class-id order."""
    p = Path(path)
    try:
        text = p.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the labels file {p}: {e}") from None
    if text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{p} is not valid JSON ({e}): give a JSON list of class names "
                            "or one name per line") from None
        if isinstance(data, dict):
            data = _id2label(data, p)
        return check_labels(data)
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    empty = [i + 1 for i, line in enumerate(lines) if not line.strip()]
    if empty:
        raise UserError(f"{p}: line {empty[0]} is empty; give one class name per line, in "
                        "class-id order (an empty line would shift every later id)")
    return check_labels(lines)


def _id2label(data: dict[str, Any], path: Path) -> list[Any]:
    try:
        by_id = {int(k): v for k, v in data.items()}
    except ValueError:
        raise UserError(f"{path}: a JSON object of labels must map class ids (0, 1, ...) to "
                        "names") from None
    if sorted(by_id) != list(range(len(data))):
        raise UserError(f"{path}: the class ids must be 0..{len(data) - 1}, each once")
    return [by_id[i] for i in range(len(by_id))]


# -- decompression bombs ---------------------------------------------------------------
class TooManyPixels(UserError):
    """An image declares more pixels than the limit (the server answers 413)."""


def max_pixels() -> int:
    """The pixel limit: REACT_MAX_IMAGE_PIXELS when set, else DEFAULT_MAX_PIXELS."""
    raw = os.environ.get(PIXELS_ENV)
    if raw is None or not raw.strip():
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value < 1:
        raise UserError(f"{PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def open_checked(source: Any, where: str, limit: int | None = None) -> Any:
    """`Image.open` (which reads only the header) and a check of the size it declares,
    BEFORE anything is decoded: more than `limit` pixels raises TooManyPixels."""
    from PIL import Image

    limit = max_pixels() if limit is None else limit

    def header() -> Any:
        try:
            return Image.open(source)
        except Image.DecompressionBombError as e:  # over Pillow's own error level
            raise TooManyPixels(f"{where}: refused before decoding, it may be a decompression "
                                f"bomb: {e}") from None

    if limit > (Image.MAX_IMAGE_PIXELS or 0):
        # A cap above Pillow's warning level was asked for: its warning would only repeat
        # what the cap allows. (catch_warnings is not thread-safe, so only then.)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = header()
    else:
        img = header()
    w, h = img.size
    if w * h > limit:
        img.close()
        raise TooManyPixels(f"{where} declares {w}×{h} = {w * h / 1e6:.1f} megapixels, over "
                            f"the limit of {limit / 1e6:g}: refused before decoding (it may "
                            f"be a decompression bomb); a larger cap: {PIXELS_ENV}")
    return img
