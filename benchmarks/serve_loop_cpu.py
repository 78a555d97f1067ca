"""Event-loop CPU per request of `react serve` under 10x overload, this tree against a base
revision, in alternating pairs in one run (the machine is noisy: only pairs count).

Each server serves serve_bench.py's ladder (minilm fp32, int8, 3 layers + int8) with the
benchmark's flags; the load generator sends a Poisson load at `--rate` for `--seconds`.
The figure is the CPU time of the server's main thread (the event loop: HTTP, admission,
shedding, answers) divided by the requests sent, so it does not depend on how fast the
model thread ran. The base revision is checked out in a temporary git worktree.

    PYTHONPATH=src python benchmarks/serve_loop_cpu.py --base REV --work /tmp/sb-work
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import serve_bench as sb
from _common import ROOT, table_head, write_results

from reactinfer.serving.loadtest import run_loadtest


def loop_cpu(src: Path, paths: list[str], texts: list[str], rate: float, seconds: float
             ) -> dict:
    with sb.server(paths, "--slo-ms", "300", "--max-batch", "16", src=src) as (base, proc):
        main = psutil.Process(proc.pid)  # the main thread's id is the process id

        def cpu() -> float:
            t = next(t for t in main.threads() if t.id == proc.pid)
            return t.user_time + t.system_time

        before = cpu()
        load = run_loadtest(base + "/v1/embeddings", rate, seconds, slo_ms=300, texts=texts,
                            seed=3, repeat_inputs=True)
        used = cpu() - before
    return {"loop_cpu_us_per_request": 1e6 * used / load["sent"], "sent": load["sent"],
            "status_counts": load["status_counts"],
            "shed_round_trip_ms": load["shed_round_trip_ms"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="git revision to compare against")
    ap.add_argument("--work", required=True, help="serve_bench.py's --work (the variants)")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--rate", type=float, default=800.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = ap.parse_args()
    variants = json.loads((Path(a.work) / "variants.json").read_text())
    paths = [variants[k]["path"] for k in sb.LADDER]
    texts = sb.short_texts()
    rev = subprocess.run(["git", "rev-parse", "--short", a.base], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip()
    rows = []
    with tempfile.TemporaryDirectory(prefix="react-base-") as tmp:
        wt = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "-q", "--detach", str(wt), rev], cwd=ROOT,
                       check=True)
        try:
            for i in range(a.pairs):
                for name, src in ((f"base {rev}", wt / "src"), ("this tree", ROOT / "src")):
                    r = loop_cpu(src, paths, texts, a.rate, a.seconds)
                    rows.append({"pair": i + 1, "code": name, **r})
                    print(name, f"{r['loop_cpu_us_per_request']:.0f} us/request", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(wt)], cwd=ROOT)
    mean = {n: sum(r["loop_cpu_us_per_request"] for r in rows if r["code"] == n) / a.pairs
            for n in (f"base {rev}", "this tree")}
    lines = ["# Event-loop CPU per request under overload: this tree vs a base revision", "",
             f"Command: `PYTHONPATH=src python benchmarks/serve_loop_cpu.py "
             f"{' '.join(sys.argv[1:])}`. Poisson {a.rate:g} req/s for {a.seconds:g} s, "
             "alternating pairs in one run; the load generator shares the machine.", "",
             *table_head("pair", "code", "loop CPU µs / request", "429 round trip p99 ms",
                         "statuses")]
    lines += [f"| {r['pair']} | {r['code']} | {r['loop_cpu_us_per_request']:.0f} | "
              f"{r['shed_round_trip_ms']['p99'] or 0:.1f} | {r['status_counts']} |" for r in rows]
    base_mean, new_mean = mean.values()
    lines += ["", f"Mean: base {base_mean:.0f} µs, this tree {new_mean:.0f} µs "
              f"({100 * (new_mean / base_mean - 1):+.0f} %)."]
    write_results(Path(a.out) / "serve_loop_cpu", {"args": vars(a), "rows": rows},
                  "\n".join(lines) + "\n", indent=1)


if __name__ == "__main__":
    main()
