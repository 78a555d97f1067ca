"""Data-parallel batch inference over a file with Ray Data (`react batch`).

    input (text lines | JSONL `text` | Parquet column | a folder of images)
      → driver: one row per input record, `id` = its position, bad rows flagged
      → blocks of `block_rows` rows (block k = ids [k·R, (k+1)·R))
      → Ray Data map_batches on an actor pool (`workers` actors, one model each)
      → driver: one Parquet part per finished block, written atomically
      → merged Parquet file in id order

Output layout for `--output out.parquet`:

    out.parquet.parts/_run.json         what the parts belong to (input digest, variant,
                                        block size): a re-run only reuses matching parts
    out.parquet.parts/part-000042.parquet   rows of block 42, zstd
    out.parquet                         all parts merged in id order, zstd

Columns: `id` (int64, input position), the task's output (`embedding` list<float32>,
`logits` list<float32>, or `generated` string), `variant` (model name @ digest of
weights+transforms+backend) and `error` (null, or why this row has no output: empty,
not UTF-8, too long, not valid JSON, model failure).

An image model reads a folder instead (data/images.py: every image under it, in sorted
path order, class subfolders optional; other files are skipped and counted): `id` is the
position in that order, `path` the file relative to the folder, and beside `logits` come
`top5_ids` list<int64> and `top5_labels` list<string> (best first; class ids as text for
a model without class names). A bad row never drops or shifts
other rows. Resuming: parts already on disk are skipped; a crash loses at most the
blocks in flight. The parts directory is itself a Parquet dataset
(`pyarrow.dataset` / `ray.data.read_parquet` read it).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..core.errors import UserError
from ..core.handle import takes_images
from . import ray_api
from .worker import OUTPUTS, ModelSource, resolve, run_rows, variant_of

DEFAULT_MAX_CHARS = 20_000  # far beyond any model's context; longer rows are data errors
RUN_FILE = "_run.json"
DEFAULT_BLOCK_ROWS = 1024


# -- reading the input -----------------------------------------------------------------
def _check_text(text: str, max_chars: int) -> str | None:
    if not text.strip():
        return "empty text"
    if len(text) > max_chars:
        return f"too long: {len(text)} characters > {max_chars} (raise --max-chars)"
    return None


def _decode(line: bytes) -> tuple[str | None, str | None]:
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"not UTF-8 (byte {e.start}: {line[e.start:e.start + 1]!r})"


def _jsonl_row(line: bytes, column: str) -> tuple[str | None, str | None]:
    text, err = _decode(line)
    if err or text is None:
        return None, err
    if not text.strip():
        return None, "empty line"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return None, f"not valid JSON ({e.msg})"
    if not isinstance(obj, dict) or not isinstance(obj.get(column), str):
        return None, f"no string {column!r} field"
    return obj[column], None


def _read_lines(path: Path) -> list[bytes]:
    lines = path.read_bytes().split(b"\n")
    if lines and lines[-1] == b"":  # the final newline does not start a row
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


def _is_jsonl(path: Path, lines: list[bytes]) -> bool:
    if path.suffix in (".jsonl", ".json"):
        return True
    first = next((line for line in lines if line.strip()), b"")
    return first.lstrip().startswith(b"{")


def read_input(path: str | Path, column: str = "text", max_chars: int = DEFAULT_MAX_CHARS
               ) -> tuple[list[str | None], list[str | None]]:
    """(texts, errors), one entry per input record in input order; a bad record has
    text None and a one-line error."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"input {p} does not exist")
    if p.suffix == ".parquet" or p.is_dir():
        texts, errors = _read_parquet(p, column)
    else:
        lines = _read_lines(p)
        reader = ((lambda b: _jsonl_row(b, column)) if _is_jsonl(p, lines) else _decode)
        pairs = [reader(b) for b in lines]
        texts, errors = [t for t, _ in pairs], [e for _, e in pairs]
    if not texts:
        raise UserError(f"input {p} has no rows: give one text per line, JSONL with a "
                        f"{column!r} field, or Parquet with a {column!r} column")
    for i, t in enumerate(texts):
        if errors[i] is None and t is not None:
            errors[i] = _check_text(t, max_chars)
        if errors[i] is not None:
            texts[i] = None
    return texts, errors


def _read_parquet(p: Path, column: str) -> tuple[list[str | None], list[str | None]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(p, columns=[column])
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise UserError(f"cannot read column {column!r} from {p}: {e}; name the text "
                        "column with --column") from None
    col = table.column(column)
    if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
        raise UserError(f"column {column!r} of {p} is {col.type}, not text; name the text "
                        "column with --column")
    texts = col.to_pylist()
    return texts, ["missing text (null)" if t is None else None for t in texts]


def read_images(path: str | Path) -> tuple[list[str | None], list[str], int]:
    """An image model's input: (absolute paths, paths relative to the folder, non-image
    files skipped), in sorted path order."""
    from ..data.images import read_image_dir

    p = Path(path)
    if p.is_file():
        raise UserError(f"{p} is a file; an image model reads a folder of images: give "
                        "--input DIR (optionally one subfolder per class)")
    items, skipped = read_image_dir(p)
    return [str(Path(it.image).resolve()) for it in items], [it.source for it in items], skipped


def file_digest(path: str | Path, files: list[Path] | None = None) -> str:
    """sha256 of the input: the file, a Parquet folder's files, or the given `files`
    (an image folder's images, each named by its path relative to `path`)."""
    p = Path(path)
    named = files is not None
    if files is None:
        files = sorted(p.rglob("*.parquet")) if p.is_dir() else [p]
    h = hashlib.sha256()
    for f in files:
        if named:  # a renamed image is another row
            h.update(str(f.relative_to(p.resolve())).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


# -- the actor that runs blocks ----------------------------------------------------------
class BlockPredictor:
    """Ray Data callable class: built once per actor (loads the model), then called
    with one block (an Arrow table: id, block, text, error) at a time."""

    def __init__(self, source: ModelSource, batch_size: int, threads: int):
        self.handle = resolve(source, threads)
        self.spec = OUTPUTS[self.handle.task]
        self.variant = variant_of(self.handle)
        self.batch_size = batch_size

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = table.column("text").to_pylist()
        errors = table.column("error").to_pylist()
        ok = [i for i, e in enumerate(errors) if e is None]
        values: list[Any] = [None] * len(texts)
        got, errs = run_rows(self.handle, [texts[i] for i in ok], self.batch_size)
        for j, i in enumerate(ok):
            values[i], errors[i] = got[j], errs[j]
        carried = {"path": table.column("path")} if "path" in table.column_names else {}
        return pa.table({
            "id": table.column("id"), "block": table.column("block"), **carried,
            **self.spec.columns(self.handle, values),
            "variant": pa.array([self.variant] * len(texts), type=pa.string()),
            "error": pa.array(errors, type=pa.string()),
        })


# -- the run -------------------------------------------------------------------------------
@dataclass
class BatchResult:
    output: Path
    parts_dir: Path
    rows: int
    errors: int
    blocks: int
    blocks_skipped: int
    seconds: float
    workers: int
    variant: str
    column: str
    rows_per_s: float = 0.0
    error_examples: list[dict[str, Any]] = field(default_factory=list)
    skipped: int = 0  # an image folder's files that are not images

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["output"], d["parts_dir"] = str(self.output), str(self.parts_dir)
        return d


def parts_dir_for(output: str | Path) -> Path:
    return Path(str(output) + ".parts")


def _part_path(parts: Path, block: int) -> Path:
    return parts / f"part-{block:06d}.parquet"


def _auto_block_rows(parts: Path, rows: int, workers: int) -> int:
    """Blocks are the unit of scheduling: with fewer rows than workers × 1,024, smaller
    blocks keep every worker busy. A run being resumed keeps the block size it started
    with, so re-running with another --workers still resumes."""
    meta = parts / RUN_FILE
    if meta.exists():
        return int(json.loads(meta.read_text()).get("block_rows", DEFAULT_BLOCK_ROWS))
    return max(1, min(DEFAULT_BLOCK_ROWS, -(-rows // workers)))


def _prepare_parts(parts: Path, run: dict[str, Any]) -> None:
    """Create the parts directory, or check that the one there is from the same run."""
    meta = parts / RUN_FILE
    if meta.exists():
        old = json.loads(meta.read_text())
        if old != run:
            diff = sorted(k for k in run if old.get(k) != run[k])
            raise UserError(f"{parts} holds parts of a different run (differs in "
                            f"{', '.join(diff)}); delete it or choose another --output")
        return
    parts.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps(run, indent=2))


def _write_atomic(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)  # a crash never leaves a half-written part that looks finished


def _block_tables(texts: list[str | None], errors: list[str | None], blocks: list[int],
                  block_rows: int, paths: list[str] | None = None) -> list[Any]:
    """One Arrow table per block: id, block, text (an image's absolute path), error, and
    an image's relative `path` (carried to the output)."""
    import pyarrow as pa

    out = []
    for b in blocks:
        lo, hi = b * block_rows, min((b + 1) * block_rows, len(texts))
        carried = {} if paths is None else {"path": pa.array(paths[lo:hi], type=pa.string())}
        out.append(pa.table({
            "id": pa.array(range(lo, hi), type=pa.int64()),
            "block": pa.array([b] * (hi - lo), type=pa.int64()), **carried,
            "text": pa.array(texts[lo:hi], type=pa.string()),
            "error": pa.array(errors[lo:hi], type=pa.string()),
        }))
    return out


def merge_parts(parts: Path, n_blocks: int, output: Path) -> None:
    """All parts in block (= id) order into one zstd Parquet file, streaming."""
    import pyarrow.parquet as pq

    tmp = output.with_suffix(f".tmp{os.getpid()}")
    writer = None
    try:
        for b in range(n_blocks):
            table = pq.read_table(_part_path(parts, b))
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    os.replace(tmp, output)


class _Progress:
    """One line on stderr: rows done, rows/s, blocks; tqdm when the stream is a tty."""

    def __init__(self, total: int, done: int, enabled: bool):
        self.total, self.done, self.enabled = total, done, enabled
        self.start, self.last = time.perf_counter(), 0.0
        self.new = 0

    def update(self, rows: int, blocks_done: int, n_blocks: int) -> None:
        self.done += rows
        self.new += rows
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 1.0 and self.done < self.total):
            return
        self.last = now
        rate = self.new / max(now - self.start, 1e-9)
        print(f"\rbatch: {self.done:,}/{self.total:,} rows · {rate:,.0f} rows/s · "
              f"{blocks_done}/{n_blocks} blocks", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            print(file=sys.stderr)


def run_batch(model: ModelSource, input_path: str | Path, output: str | Path | None = None,
              workers: int = 1, batch_size: int = 32, column: str = "text",
              ray_address: str | None = None, block_rows: int | None = None,
              max_chars: int = DEFAULT_MAX_CHARS, cpus_per_worker: float = 1,
              progress: bool = True) -> BatchResult:
    """Run `model` over every row of `input_path`; see the module docstring. `block_rows`
    None: blocks of up to 1,024 rows, smaller when that gives every worker a block."""
    if workers < 1 or batch_size < 1 or (block_rows is not None and block_rows < 1):
        raise UserError("--workers, --batch-size and --block-rows must be at least 1")
    input_path = Path(input_path)
    output = Path(output) if output else input_path.with_name(input_path.stem + ".out.parquet")
    handle = resolve(model)  # in the driver too: the task decides how the input is read,
    variant = variant_of(handle)  # and the variant what "resume" means
    paths: list[str] | None = None
    skipped = 0
    if takes_images(handle.task):
        texts, paths, skipped = read_images(input_path)
        errors: list[str | None] = [None] * len(texts)
        digest = file_digest(input_path, [Path(t) for t in texts if t is not None])
    else:
        texts, errors = read_input(input_path, column, max_chars)
        digest = file_digest(input_path)
    parts = parts_dir_for(output)
    block_rows = block_rows or _auto_block_rows(parts, len(texts), workers)
    n_blocks = -(-len(texts) // block_rows)
    _prepare_parts(parts, {"input": str(input_path.resolve()), "input_sha256":
                           digest, "column": column, "variant": variant,
                           "task": handle.task, "rows": len(texts), "block_rows": block_rows,
                           "max_chars": max_chars})
    pending = [b for b in range(n_blocks) if not _part_path(parts, b).exists()]
    start = time.perf_counter()
    if pending:
        # Ship names/paths as is (each actor loads them); in-memory handles go pickled
        # through Ray's object store (never to disk), without a built runner.
        source = model if isinstance(model, (str, os.PathLike)) else handle.derive()
        if isinstance(source, os.PathLike):
            source = str(Path(source).resolve())
        _run_pending(source, _block_tables(texts, errors, pending, block_rows, paths),
                     len(texts), pending, n_blocks, block_rows, parts, workers, batch_size,
                     cpus_per_worker, ray_address, progress)
    seconds = time.perf_counter() - start
    merge_parts(parts, n_blocks, output)
    result = _summarise(output, parts, n_blocks, n_blocks - len(pending), seconds, workers,
                        variant, OUTPUTS[handle.task].column,
                        sum(min(block_rows, len(texts) - b * block_rows) for b in pending))
    result.skipped = skipped
    return result


def _run_pending(source: ModelSource, tables: list[Any], rows: int, pending: list[int],
                 n_blocks: int, block_rows: int, parts: Path, workers: int, batch_size: int,
                 cpus_per_worker: float, ray_address: str | None, progress: bool) -> None:
    import pyarrow as pa

    expected = {b: min(block_rows, rows - b * block_rows) for b in pending}
    bar = _Progress(rows, rows - sum(expected.values()), progress)
    buffers: dict[int, list[Any]] = {}
    threads = max(1, int(cpus_per_worker))
    with ray_api.session(ray_address):
        ds = ray_api.data_from_arrow(tables)
        ds = ray_api.data_map_batches(ds, BlockPredictor, {
            "source": source, "batch_size": batch_size, "threads": threads},
            workers=workers, num_cpus=cpus_per_worker)
        done = n_blocks - len(pending)
        # Ray Data may hand results back re-chunked; group rows by their block.
        for table in ray_api.data_iter_tables(ds):
            for b in sorted(set(table.column("block").to_pylist())):
                mask = pa.compute.equal(table.column("block"), b)
                buffers.setdefault(b, []).append(table.filter(mask))
                have = sum(t.num_rows for t in buffers[b])
                if have == expected[b]:
                    part = pa.concat_tables(buffers.pop(b)).sort_by("id").drop_columns("block")
                    _write_atomic(part, _part_path(parts, b))
                    done += 1
                    bar.update(have, done, n_blocks)
    bar.close()
    if buffers:  # cannot happen unless Ray lost rows; never write a short result silently
        raise RuntimeError(f"blocks {sorted(buffers)} came back incomplete")


def _summarise(output: Path, parts: Path, n_blocks: int, skipped: int, seconds: float,
               workers: int, variant: str, column: str, new_rows: int) -> BatchResult:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(output, columns=["id", "error"])
    bad = t.filter(pc.is_valid(t.column("error")))
    return BatchResult(output=output, parts_dir=parts, rows=t.num_rows, errors=bad.num_rows,
                       blocks=n_blocks, blocks_skipped=skipped, seconds=round(seconds, 3),
                       workers=workers, variant=variant, column=column,
                       rows_per_s=round(new_rows / seconds, 1) if seconds > 0 else 0.0,
                       error_examples=bad.slice(0, 5).to_pylist())
