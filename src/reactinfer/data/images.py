"""Image data: built-in sets read as files from installed wheels, and `--data DIR`.

Built-in sets (never a downloader; the files ship inside scikit-image, scikit-learn and
matplotlib wheels):

- `photos`: 26 photographs (scikit-image `data/`, scikit-learn `datasets/images/`,
  matplotlib `sample_data/grace_hopper.jpg`), each seen as 6 views (whole, flipped, four
  corner crops of 60%). The split is BY SOURCE PHOTO, by a hash of its name, so no crop of
  a calibration photo is ever evaluated: 13 photos (78 items) calibrate, 13 photos
  (78 items) evaluate. No labels (ImageNet classes are not known for them): quality is
  agreement with the reference model.
- `digits`: scikit-learn's `digits.csv.gz`, 1,797 labelled 8×8 digits (0..16 scaled to
  0..255 grey), split by a seeded permutation: 1,437 train (the first 256 of them also
  calibrate), 360 eval (the test split).

`--data DIR`: every image under DIR (Pillow decides what is an image: other files are
skipped and counted; one that declares more than core.images.max_pixels() pixels is
refused from its header); with class subfolders (two or more) the sorted folder names give
the class ids 0..K-1 (as torchvision's ImageFolder does) and the class names; split into
parts by a hash of the relative path.
"""
from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.util
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..core.images import TooManyPixels, open_checked

IMAGE_PARTS = ("calibration", "train", "eval")
DIGITS_SEED, DIGITS_TEST = 0, 360  # the held-out digits: 360 of 1,797 (20%)
DIGITS_CALIBRATION = 256


@dataclasses.dataclass(frozen=True, eq=False)
class ImageItem:
    """One image (a path or a uint8 array), its class id if known, and the photo it came
    from (what the split is decided on)."""

    image: Any
    label: int | None = None
    source: str = ""


# (module whose folder holds the file, path inside it)
_PHOTOS: tuple[tuple[str, str], ...] = tuple(
    ("skimage", f"data/{f}") for f in (
        "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png",
        "clock_motion.png", "coffee.png", "coins.png", "color.png", "grass.png", "gravel.png",
        "horse.png", "hubble_deep_field.jpg", "ihc.png", "microaneurysms.png", "moon.png",
        "motorcycle_left.png", "motorcycle_right.png", "page.png", "phantom.png", "retina.jpg",
        "rocket.jpg", "text.png")
) + (("sklearn", "datasets/images/china.jpg"), ("sklearn", "datasets/images/flower.jpg"),
     ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"))
VIEWS = ("whole", "flip", "top-left", "top-right", "bottom-left", "bottom-right")
CROP = 0.6  # corner crops keep 60% of each side


def package_file(module: str, relpath: str) -> Path:
    """A file inside an installed package, located without importing the package."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the built-in images need the package {module!r} (pip install "
                        f"{'scikit-image' if module == 'skimage' else module})")
    path = Path(list(spec.submodule_search_locations)[0]) / relpath
    if not path.exists():
        raise UserError(f"{path} is missing: reinstall {module}")
    return path


def photo_path(name: str) -> Path:
    """A bundled photo by stem (chelsea, coffee, china, grace_hopper, ...)."""
    for module, rel in _PHOTOS:
        if Path(rel).stem == name:
            return package_file(module, rel)
    raise UserError(f"no bundled photo {name!r}; choose one of "
                    f"{', '.join(Path(r).stem for _, r in _PHOTOS)}")


def photo_part(name: str) -> str:
    """Calibration or eval, by a hash of the SOURCE photo's name (never by crop)."""
    bucket = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) % 3
    return "calibration" if bucket == 0 else "eval"


def views(img: np.ndarray) -> list[np.ndarray]:
    """The 6 views of one photo (H, W[, C]) uint8, in VIEWS order."""
    h, w = img.shape[:2]
    ch, cw = int(h * CROP), int(w * CROP)
    return [img, img[:, ::-1], img[:ch, :cw], img[:ch, w - cw:], img[h - ch:, :cw],
            img[h - ch:, w - cw:]]


@lru_cache(maxsize=1)
def _photo_items() -> dict[str, tuple[ImageItem, ...]]:
    from PIL import Image

    parts: dict[str, list[ImageItem]] = {p: [] for p in IMAGE_PARTS}
    for module, rel in _PHOTOS:
        name = Path(rel).stem
        with Image.open(package_file(module, rel)) as im:
            arr = np.asarray(im.convert("RGB"))
        part = photo_part(name)
        parts[part] += [ImageItem(np.ascontiguousarray(v), None, name) for v in views(arr)]
    parts["train"] = list(parts["calibration"])  # nothing trains on ImageNet photos here
    return {k: tuple(v) for k, v in parts.items()}


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits: images (1797, 8, 8) uint8 0..255, labels (1797,)."""
    path = package_file("sklearn", "datasets/data/digits.csv.gz")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    pixels, labels = data[:, :-1], data[:, -1].astype(np.int64)
    images = np.round(pixels.reshape(-1, 8, 8) * (255 / 16)).astype(np.uint8)
    return images, labels


def digits_split() -> dict[str, np.ndarray]:
    """Indices of the seeded train / test split (DIGITS_TEST held out)."""
    n = len(load_digits()[1])
    order = np.random.default_rng(DIGITS_SEED).permutation(n)
    return {"train": np.sort(order[DIGITS_TEST:]), "eval": np.sort(order[:DIGITS_TEST])}


@lru_cache(maxsize=1)
def _digit_items() -> dict[str, tuple[ImageItem, ...]]:
    images, labels = load_digits()
    split = digits_split()
    parts = {part: tuple(ImageItem(images[i], int(labels[i]), f"digit{i}") for i in idx)
             for part, idx in split.items()}
    parts["calibration"] = parts["train"][:DIGITS_CALIBRATION]
    return parts


BUILTIN_IMAGE_SETS = {"photos": _photo_items, "digits": _digit_items}


def builtin_images(name: str, part: str) -> list[ImageItem]:
    if name not in BUILTIN_IMAGE_SETS:
        raise UserError(f"unknown built-in image set {name!r}; choose one of "
                        f"{', '.join(BUILTIN_IMAGE_SETS)}")
    if part not in IMAGE_PARTS:
        raise UserError(f"unknown part {part!r}; choose one of {', '.join(IMAGE_PARTS)}")
    return list(BUILTIN_IMAGE_SETS[name]()[part])


def _is_image(path: Path, root: Path) -> bool:
    """Whether Pillow reads `path` as an image; one that declares more pixels than the
    limit (core.images.max_pixels) stops the read with one line: it is refused from its
    header, before any pixel is decoded (verify() checks chunks, it inflates nothing)."""
    from PIL import UnidentifiedImageError

    try:
        with open_checked(path, f"{path.relative_to(root)} in {root}") as im:
            im.verify()
    except TooManyPixels:
        raise
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False
    return True


def _scan(root: Path, warn: bool = True) -> tuple[list[Path], int, list[str] | None]:
    """The images under `root`, the number of other files, and the class names (sorted
    subfolder names) when every image sits in a class subfolder and there are two or
    more classes, else None: the images are unlabelled."""
    if root.is_file():
        raise UserError(f"{root} is a file; an image model takes --data DIR, a folder of "
                        "images (optionally one subfolder per class)")
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    images = [p for p in files if _is_image(p, root)]
    skipped = len(files) - len(images)
    if not images:
        raise UserError(f"no images in {root} ({skipped} other file(s)): give a folder of "
                        "JPEG/PNG files, optionally in one subfolder per class")
    rel = [p.relative_to(root) for p in images]
    classes = sorted({r.parts[0] for r in rel}) if all(len(r.parts) == 2 for r in rel) else []
    if len(classes) == 1 and warn:
        # One class is no labelled set: every accuracy would be 1.0 (or 0.0). A folder that
        # merely holds the images in a subfolder (data/images/*.jpg) is common, so the
        # images are read unlabelled (agreement with the original still bounds quality)
        # and the user is told why; what needs labels (--metric accuracy) then says so.
        print(f"react: warning: {root} has one class subfolder ({classes[0]!r}): one class "
              "is not a labelled set, so its images are read unlabelled; for accuracy put "
              "each class in its own subfolder", file=sys.stderr)
    return images, skipped, classes if len(classes) > 1 else None


def read_image_dir(directory: str | Path) -> tuple[list[ImageItem], int]:
    """All images under `directory` (labelled by class subfolder when every image sits in
    one and there are two classes or more), and the number of non-image files skipped."""
    root = Path(directory)
    images, skipped, classes = _scan(root)
    rel = [p.relative_to(root) for p in images]
    items = [ImageItem(p, classes.index(r.parts[0]) if classes else None, str(r))
             for p, r in zip(images, rel, strict=True)]
    return items, skipped


def image_classes(directory: str | Path) -> list[str] | None:
    """The class names of a labelled image folder (its sorted class subfolders, index =
    class id as read_image_dir gives them), or None when it is not labelled."""
    return _scan(Path(directory), warn=False)[2]


def image_key(item: Any) -> list[Any]:
    """What identifies an image item: its file (a path) or its pixels' digest, its label and
    source photo."""
    image = getattr(item, "image", item)
    pixels = str(image) if isinstance(image, (str, Path)) else \
        hashlib.sha256(np.ascontiguousarray(np.asarray(image)).tobytes()).hexdigest()
    return [pixels, getattr(item, "label", None), getattr(item, "source", "")]


def images_for(part: str, data: str | None, dataset: str) -> list[ImageItem]:
    """The `part` of the user's image folder if given, else of the built-in set."""
    if data is None:
        return builtin_images(dataset, part)
    items, skipped = read_image_dir(data)
    if skipped:
        print(f"react: skipped {skipped} non-image file(s) in {data}", file=sys.stderr)
    parts: dict[str, list[ImageItem]] = {p: [] for p in IMAGE_PARTS}
    for it in items:
        bucket = int(hashlib.sha256(it.source.encode()).hexdigest()[:8], 16) % 10
        parts["calibration" if bucket == 0 else "eval" if bucket in (1, 2) else "train"].append(it)
    if not parts["eval"]:  # small folders: evaluate on everything rather than on nothing
        parts["eval"] = list(items)
    if not parts["calibration"]:
        parts["calibration"] = list(items)
    return parts[part]
