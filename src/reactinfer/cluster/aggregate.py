"""Putting results back together, and making them small.

- `ordered_gather`: shard results (ids, values) → one array in id order, refusing gaps
  and duplicates (a lost or doubled row is a bug, never silently "fixed");
- ensembles across models on different workers: `mean` (embeddings: mean then
  re-normalised; logits: mean of softmax probabilities) and `vote` (majority of each
  model's top-1, ties to the class with the highest mean probability);
- result compression for transport and storage: embeddings as float32, float16 or int8
  with a per-row scale, then zstd; `compression_report` gives the ratio and the quality
  cost (cosine of decompressed vs original).

Everything here is numpy except `run_ensemble`, which puts each model on its own actor
through `ray_api`. The blob format is a JSON header + raw little-endian arrays (no pickle).
"""
from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.errors import UserError
from ..tasks import get_task


# -- ordered gather ------------------------------------------------------------------------
def ordered_gather(shards: Iterable[tuple[np.ndarray, np.ndarray]], n: int | None = None
                   ) -> np.ndarray:
    """Stack shard values so row i is the value for id i. Every id in 0..n-1 must come
    exactly once."""
    shards = list(shards)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for i, _ in shards])
    values = np.concatenate([np.asarray(v) for _, v in shards])
    n = len(ids) if n is None else n
    counts = np.bincount(ids, minlength=n) if len(ids) else np.zeros(n, dtype=np.int64)
    if len(counts) > n or np.any(counts != 1):
        missing = np.flatnonzero(counts[:n] == 0)[:5].tolist()
        doubled = np.flatnonzero(counts > 1)[:5].tolist()
        raise RuntimeError(f"gather: ids missing {missing} / duplicated {doubled} "
                           f"(expected each of 0..{n - 1} once)")
    out = np.empty_like(values)
    out[ids] = values
    return out


# -- ensembles -----------------------------------------------------------------------------
def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _mean(outputs: Sequence[np.ndarray], task: str) -> np.ndarray:
    if get_task(task).votes:
        return np.mean([_softmax(o) for o in outputs], axis=0)  # (N, C) probabilities
    m = np.mean(np.stack(outputs), axis=0)  # (N, D)
    return m / np.linalg.norm(m, axis=-1, keepdims=True).clip(1e-12)


def _vote(outputs: Sequence[np.ndarray], task: str) -> np.ndarray:
    if not get_task(task).votes:
        raise UserError("vote needs classification models (labels to vote on); use mean "
                        "for embeddings")
    n_cls = outputs[0].shape[-1]
    votes = np.zeros((len(outputs[0]), n_cls))
    for o in outputs:
        votes[np.arange(len(o)), o.argmax(-1)] += 1
    # Ties: the mean probability decides (added as a fraction smaller than one vote).
    probs = np.mean([_softmax(o) for o in outputs], axis=0)
    return (votes + probs / (n_cls + 1)).argmax(-1)  # (N,) labels


AGGREGATORS: dict[str, Callable[[Sequence[np.ndarray], str], np.ndarray]] = {
    "mean": _mean, "vote": _vote}


def ensemble(outputs: Sequence[np.ndarray], how: str = "mean", task: str = "embedding"
             ) -> np.ndarray:
    if how not in AGGREGATORS:
        raise UserError(f"unknown ensemble {how!r}; choose one of {', '.join(AGGREGATORS)}")
    if not outputs:
        raise UserError("ensemble of no models: give at least one")
    shapes = {o.shape for o in outputs}
    if len(shapes) != 1:
        raise UserError(f"ensemble members disagree on output shape {sorted(shapes)}; "
                        "combine models with the same output size")
    return AGGREGATORS[how](outputs, task)


def run_ensemble(models: Sequence[Any], texts: Sequence[str], how: str = "mean",
                 batch_size: int = 32, ray_address: str | None = None) -> dict[str, Any]:
    """Each model on its own actor (in parallel), results aggregated in the driver."""
    from . import ray_api
    from .worker import ModelWorker

    with ray_api.session(ray_address):
        # All members must be placed at once (more members than CPUs would wait forever).
        cpus = min(1.0, ray_api.cluster_resources().get("CPU", 1.0) / len(models))
        actor = ray_api.actor_class(ModelWorker, num_cpus=cpus)
        workers = [actor.remote(m, 1, batch_size) for m in models]
        ids = np.arange(len(texts))
        results = ray_api.get([w.run.remote(ids, list(texts)) for w in workers])
        info = ray_api.get([w.info.remote() for w in workers])
        for w in workers:
            ray_api.kill(w, no_restart=True)
    outputs = [ordered_gather([(r["ids"], r["values"])], len(texts)) for r in results]
    task = info[0]["task"]
    return {"output": ensemble(outputs, how, task), "members": outputs,
            "variants": [i["variant"] for i in info]}


# -- result compression --------------------------------------------------------------------
@dataclass(frozen=True)
class Codec:
    encode: Callable[[np.ndarray], list[np.ndarray]]  # (N, D) float32 -> arrays to store
    decode: Callable[[list[np.ndarray], tuple[int, int]], np.ndarray]
    dtypes: tuple[str, ...]


def _int8_encode(x: np.ndarray) -> list[np.ndarray]:
    scale = (np.abs(x).max(axis=1) / 127.0).astype(np.float32)  # (N,) one scale per row
    safe = np.where(scale > 0, scale, 1.0)[:, None]
    return [scale, np.clip(np.rint(x / safe), -127, 127).astype(np.int8)]


def _int8_decode(arrays: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    scale, q = arrays
    return q.reshape(shape).astype(np.float32) * scale[:, None]


CODECS: dict[str, Codec] = {
    "float32": Codec(lambda x: [x.astype("<f4")], lambda a, s: a[0].reshape(s), ("<f4",)),
    "float16": Codec(lambda x: [x.astype("<f2")],
                     lambda a, s: a[0].reshape(s).astype(np.float32), ("<f2",)),
    "int8": Codec(_int8_encode, _int8_decode, ("<f4", "i1")),
}
_MAGIC = b"RXE1"


def compress_embeddings(x: np.ndarray, codec: str = "int8", level: int = 3) -> bytes:
    """(N, D) float array → bytes: magic, header length, JSON header, zstd(arrays)."""
    import zstandard

    if codec not in CODECS:
        raise UserError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise UserError(f"compress_embeddings takes a (rows, dim) array, got shape {x.shape}")
    arrays = CODECS[codec].encode(x)
    header = json.dumps({"codec": codec, "shape": list(x.shape),
                         "sizes": [a.nbytes for a in arrays]}).encode()
    payload = zstandard.ZstdCompressor(level=level).compress(
        b"".join(np.ascontiguousarray(a).tobytes() for a in arrays))
    return _MAGIC + struct.pack("<I", len(header)) + header + payload


def decompress_embeddings(blob: bytes) -> np.ndarray:
    import zstandard

    if blob[:4] != _MAGIC:
        raise UserError("not a ReAct embeddings blob (bad magic bytes)")
    (hlen,) = struct.unpack("<I", blob[4:8])
    header = json.loads(blob[8:8 + hlen])
    codec = CODECS[header["codec"]]
    raw = zstandard.ZstdDecompressor().decompress(blob[8 + hlen:])
    arrays, off = [], 0
    for size, dtype in zip(header["sizes"], codec.dtypes, strict=True):
        arrays.append(np.frombuffer(raw, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                                    offset=off))
        off += size
    return codec.decode(arrays, tuple(header["shape"])).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    num = np.sum(a * b, axis=1)
    return num / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)).clip(1e-12)


def compression_report(x: np.ndarray, codecs: Sequence[str] = tuple(CODECS), level: int = 3
                       ) -> dict[str, dict[str, float]]:
    """Per codec: stored bytes, ratio to raw float32, and cosine of decompressed vs
    original (mean and worst row)."""
    x = np.asarray(x, dtype=np.float32)
    out = {}
    for name in codecs:
        blob = compress_embeddings(x, name, level)
        cos = _cosine(x, decompress_embeddings(blob))
        out[name] = {"bytes": len(blob), "raw_float32_bytes": x.nbytes,
                     "ratio": round(x.nbytes / len(blob), 3),
                     "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
    return out
