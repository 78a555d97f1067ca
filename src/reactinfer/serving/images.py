"""Image classification over KServe v2: the inputs an image model takes, checked and
preprocessed off the event loop, and the outputs it answers.

Inputs (one tensor per request, N images):

    image         BYTES  [N] or [N, 1]   base64 JPEG / PNG / ... files, decoded by Pillow
                                         and preprocessed with the model's ImagePreprocess
    pixel_values  FP32   [N, C, H, W]    pixels already preprocessed (C, H, W: the model's)

Outputs: `logits` FP32 [N, classes], `top5_ids` INT64 [N, 5] (best first) and
`top5_labels` BYTES [N, 5]: the built-ins' class names (ImageNet for efficientnet-lite0,
"0".."9" for resnet18-digits); a model without names answers its class ids as text.
A request may ask for some of them with `outputs: [{"name": ...}]`.

Images share the text path from there on: the response cache (keyed by a digest of the
preprocessed pixels), the dynamic batcher, the ladder and admission.
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import io
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.images import CHANNELS, PIXELS_ENV, TooManyPixels, open_checked
from ..tasks.image_classification import top_classes
from .protocol import run_cached
from .state import ApiError, Group, ServingState

TOP_K = 5
OUTPUT_NAMES = ("logits", "top5_ids", "top5_labels")


def _input_shape(g: Group) -> list[int]:
    pre = g.preprocess
    return [CHANNELS[pre.channels], pre.size, pre.size]


def metadata(g: Group) -> dict[str, Any]:
    """The inputs and outputs of an image model, as KServe's model metadata gives them."""
    classes = len(g.labels) if g.labels is not None else -1
    k = min(TOP_K, classes) if classes > 0 else TOP_K
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                       {"name": "pixel_values", "datatype": "FP32",
                        "shape": [-1, *_input_shape(g)]}],
            "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, classes]},
                        {"name": "top5_ids", "datatype": "INT64", "shape": [-1, k]},
                        {"name": "top5_labels", "datatype": "BYTES", "shape": [-1, k]}],
            "preprocess": g.preprocess.to_dict()}


def _flat(tensor: dict[str, Any]) -> list[Any]:
    """The data of a [N] or [N, 1] BYTES tensor as a flat list, checked against its shape."""
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ApiError(400, "inputs[0].data must be a list of base64-encoded image files")
    if data and all(isinstance(d, list) for d in data):
        data = [x for row in data for x in row]  # a [N, 1] tensor given row by row
    shape = tensor.get("shape")
    if isinstance(shape, list) and all(isinstance(s, int) for s in shape) \
            and int(np.prod(shape)) != len(data):
        raise ApiError(400, f"input shape {shape} does not match {len(data)} data elements")
    return data


def _decode_one(i: int, value: Any, g: Group, limit: int, pixels: int) -> np.ndarray:
    """One base64 image file → (C, H, W) float32; 400 if it is not one, 413 if its bytes
    are over `limit` or its header declares more than `pixels` pixels (checked before
    decoding: a decompression bomb is a small file)."""
    from PIL import UnidentifiedImageError

    where = f"inputs[0].data[{i}]"
    if not isinstance(value, str):
        raise ApiError(400, f"{where} must be a base64 string (an encoded JPEG/PNG file), "
                       f"not {type(value).__name__}")
    if len(value) // 4 * 3 > limit + 2:  # checked before decoding anything
        raise ApiError(413, f"{where} is about {len(value) // 4 * 3} bytes; this server "
                       f"takes images of at most {limit} bytes (--max-image-bytes)")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None
    if len(raw) > limit:
        raise ApiError(413, f"{where} is {len(raw)} bytes; this server takes images of at "
                       f"most {limit} bytes (--max-image-bytes)")
    try:
        with open_checked(io.BytesIO(raw), f"{where} ({len(raw)} bytes)", pixels) as img:
            img.load()
            return np.asarray(g.preprocess.apply(img))
    except TooManyPixels as e:
        raise ApiError(413, str(e).replace(PIXELS_ENV, "--max-image-pixels")) from None
    except UnidentifiedImageError:
        raise ApiError(400, f"{where} is not an image file Pillow can decode: send a "
                       "base64 JPEG or PNG file") from None
    except (OSError, SyntaxError, ValueError) as e:  # a damaged or truncated file
        raise ApiError(400, f"{where} is a damaged image file: {e}"[:300]) from None


def _images(tensor: dict[str, Any], g: Group, state: ServingState) -> np.ndarray:
    data = _flat(tensor)
    _check_count(len(data), state)
    limit, pixels = state.config.max_image_bytes, state.config.max_image_pixels
    return np.stack([_decode_one(i, v, g, limit, pixels) for i, v in enumerate(data)])


def _pixels(tensor: dict[str, Any], g: Group, state: ServingState) -> np.ndarray:
    want = _input_shape(g)
    shape = tensor.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(
            isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)):
        raise ApiError(400, f"pixel_values needs shape [N, {', '.join(map(str, want))}], "
                       f"got {shape!r}")
    if shape[1:] != want:
        raise ApiError(400, f"pixel_values has shape {shape}; this model takes "
                       f"[N, {', '.join(map(str, want))}] (preprocessed as its "
                       "ImagePreprocess says), or send the image files as 'image' BYTES")
    _check_count(shape[0], state)
    try:
        x = np.asarray(tensor.get("data"), dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(400, "pixel_values data must be numbers (flat, or nested as the "
                       "shape)") from None
    if x.size != int(np.prod(shape)):
        raise ApiError(400, f"pixel_values shape {shape} needs {int(np.prod(shape))} numbers, "
                       f"got {x.size}")
    if not np.isfinite(x).all():
        raise ApiError(400, "pixel_values holds NaN or infinity")
    return np.ascontiguousarray(x.reshape(shape))


def _check_count(n: int, state: ServingState) -> None:
    if n < 1:
        raise ApiError(400, "the input holds no image: give at least one")
    if n > state.config.max_inputs:
        raise ApiError(400, f"the input holds {n} images; the limit is "
                       f"{state.config.max_inputs} per request: split the request")


# input name → (its datatype, what turns it into (N, C, H, W) float32 pixels)
INPUTS: dict[str, tuple[str, Callable[[dict[str, Any], Group, ServingState], np.ndarray]]] = {
    "image": ("BYTES", _images), "pixel_values": ("FP32", _pixels)}


def _read(body: dict[str, Any], g: Group, state: ServingState) -> tuple[np.ndarray, list[str]]:
    """The request's pixels (N, C, H, W) and a cache key per image. Runs in a thread:
    decoding, resizing and parsing long number lists take milliseconds per image."""
    inputs = body.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, "'inputs' must be a list with one tensor: {name: image, datatype: "
                       "BYTES, shape: [N], data: [base64 image files]} or {name: "
                       "pixel_values, datatype: FP32, shape: [N, C, H, W], data: [...]}")
    tensor = inputs[0]
    name, dtype = tensor.get("name"), tensor.get("datatype")
    if name not in INPUTS:
        raise ApiError(400, f"input {name!r} is not an input of image model {g.name!r}: "
                       "send 'image' (BYTES, base64 image files) or 'pixel_values' (FP32 "
                       "[N, C, H, W])")
    want, read = INPUTS[name]
    if dtype != want:
        raise ApiError(400, f"input {name!r} must have datatype {want}, got {dtype!r}"
                       + (": FP32 pixels go in an input named 'pixel_values'"
                          if name == "image" else ""))
    pixels = read(tensor, g, state)
    return pixels, [hashlib.blake2b(p.tobytes(), digest_size=16).hexdigest() for p in pixels]


def _wanted(body: dict[str, Any]) -> list[str]:
    asked = body.get("outputs")
    if asked is None:
        return list(OUTPUT_NAMES)
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise ApiError(400, "'outputs' must be a list of {name} objects")
    names = [o.get("name") for o in asked]
    unknown = [n for n in names if n not in OUTPUT_NAMES]
    if unknown:
        raise ApiError(400, f"unknown output(s) {unknown}; this model has "
                       f"{', '.join(OUTPUT_NAMES)}")
    return [str(n) for n in names]


async def classify(state: ServingState, g: Group, body: dict[str, Any], deadline: float
                   ) -> tuple[list[dict[str, Any]], str]:
    """The output tensors for an image request, and the variant(s) that made them."""
    wanted = _wanted(body)
    pixels, keys = await asyncio.to_thread(_read, body, g, state)
    y, _, variant = await run_cached(state, g, [("pixels", k) for k in keys], deadline,
                                     lambda idx: {"pixels": pixels[idx]})  # (N, classes)
    ids, names = top_classes(y, g.labels, TOP_K)
    n, k = ids.shape
    tensors: dict[str, dict[str, Any]] = {
        "logits": {"name": "logits", "datatype": "FP32", "shape": list(y.shape),
                   "data": np.ascontiguousarray(y, dtype=np.float32).reshape(-1)},
        "top5_ids": {"name": "top5_ids", "datatype": "INT64", "shape": [n, k],
                     "data": ids.reshape(-1)},
        "top5_labels": {"name": "top5_labels", "datatype": "BYTES", "shape": [n, k],
                        "data": [x for row in names for x in row]}}
    return [tensors[w] for w in wanted], variant
