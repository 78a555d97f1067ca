"""`react batch`: the command line over reactinfer.cluster."""
from __future__ import annotations

import argparse

from .loading import add_load_args, loaded
from .registry import command, print_json


@command("batch", "Run a model or artifact over a file (text lines, JSONL or Parquet) or a "
                  "folder of images on a Ray actor pool; writes Parquet with id, output, "
                  "variant and error columns.")
def _batch(p: argparse.ArgumentParser):
    p.add_argument("model", help="artifact directory, built-in name or model path")
    p.add_argument("--input", required=True,
                   help="text file (one row per line), JSONL with a text field, or "
                        "Parquet; for an image model, a folder of images (class subfolders "
                        "optional; other files are skipped and counted)")
    p.add_argument("--output", help="output Parquet file (default INPUT.out.parquet); parts "
                                    "go to OUTPUT.parts/ and make re-runs resume")
    p.add_argument("--workers", type=int, default=1, help="actors, one model copy each")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--column", default="text", help="JSONL field / Parquet column with the text")
    p.add_argument("--block-rows", type=int, default=None,
                   help="rows per block, the unit of scheduling and of resuming (default: "
                        "1024, or fewer so that every worker gets a block)")
    p.add_argument("--cpus-per-worker", type=float, default=1,
                   help="CPUs Ray reserves per actor (also its torch threads)")
    p.add_argument("--max-chars", type=int, default=None,
                   help="rows longer than this are reported as errors (default 20000)")
    p.add_argument("--ray-address", help="join this Ray cluster instead of starting a local one")
    add_load_args(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-progress", action="store_true")

    def run(a: argparse.Namespace) -> int:
        from ..cluster.batch import DEFAULT_MAX_CHARS, run_batch

        res = run_batch(loaded(a.model, a), a.input, a.output, workers=a.workers,
                        batch_size=a.batch_size, column=a.column,
                        ray_address=a.ray_address, block_rows=a.block_rows,
                        max_chars=a.max_chars or DEFAULT_MAX_CHARS,
                        cpus_per_worker=a.cpus_per_worker, progress=not a.no_progress)
        if a.json:
            print_json(res.to_dict())
            return 0
        print(f"wrote {res.output} ({res.rows:,} rows, column {res.column!r}, variant "
              f"{res.variant}); parts in {res.parts_dir}")
        if res.skipped:
            print(f"skipped {res.skipped} file(s) that are not images")
        print(f"{res.blocks - res.blocks_skipped} block(s) run, {res.blocks_skipped} reused; "
              f"{res.seconds:.1f} s, {res.rows_per_s:,.1f} rows/s with {res.workers} worker(s)")
        if res.errors:
            print(f"{res.errors} row(s) have an error (see the 'error' column), e.g.:")
            for e in res.error_examples:
                print(f"  id {e['id']}: {e['error']}")
        return 0

    return run
