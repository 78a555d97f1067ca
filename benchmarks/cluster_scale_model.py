"""How `react batch` throughput and cost scale to 10 and 100 nodes: a calculation from
the overheads measured by benchmarks/cluster_batch.py (results/cluster.json).

    PYTHONPATH=src python benchmarks/cluster_scale_model.py [--cores-per-node 8]
        [--rows 100000000] [--price-per-node-hour 0.40] [--network-gbit 10]

Model (one worker per core; workers independent; the driver gathers every result):
    per-worker rate      w = 1 / (compute_per_row + max(ray_overhead, transport)_per_row)
    driver cap           D = 1 / (object_store_get_per_row + part_write_per_row)
    driver network cap   B = bandwidth / bytes_per_row        (results travel to the driver)
    throughput(K nodes)  X = min(K · cores · w, D, B)
    time                 T = start-up + rows / X
    cost                 K · T / 3600 · price
The assumed figures (cores per node, price, bandwidth) are parameters, printed with the
result; the per-row figures are this machine's measurements.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def model(m: dict, nodes: int, cores: int, rows: int, price: float, gbit: float,
          codec: str) -> dict:
    o = m["overheads"]
    # The end-to-end overhead estimate (Ray run minus plain loop) is within this shared
    # machine's noise; never take less than the directly measured transport costs.
    transport = o["object_store_put_get_s_per_row"] + o["part_write_s_per_row"]
    per_row = o["compute_s_per_row_1_thread"] + max(o["ray_overhead_s_per_row"], transport)
    w = 1.0 / per_row
    driver = 1.0 / (o["object_store_put_get_s_per_row"] + o["part_write_s_per_row"])
    row_bytes = o["block_bytes"] / m["block_rows"] / m["compression"][codec]["ratio"]
    network = gbit * 1e9 / 8 / row_bytes
    x = min(nodes * cores * w, driver, network)
    limit = ("workers" if x == nodes * cores * w else "driver CPU" if x == driver
             else "driver network")
    t = o["startup_s"] + rows / x
    return {"nodes": nodes, "codec": codec, "rows_per_s": x, "hours": t / 3600,
            "limited_by": limit, "cost": nodes * t / 3600 * price,
            "efficiency": x / (nodes * cores * w)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cores-per-node", type=int, default=8)
    ap.add_argument("--rows", type=int, default=100_000_000)
    ap.add_argument("--price-per-node-hour", type=float, default=0.40)
    ap.add_argument("--network-gbit", type=float, default=10.0)
    a = ap.parse_args()
    m = json.loads((RESULTS / "cluster.json").read_text())
    lines = [f"Scale-out model for {a.rows:,} rows; assumed {a.cores_per_node} cores/node, "
             f"${a.price_per_node_hour:.2f}/node-hour, {a.network_gbit:g} Gbit/s into the "
             "driver; per-row figures measured in results/cluster.json.", "",
             "| nodes | results shipped as | rows/s | hours | limited by | efficiency | cost |",
             "|---:|---|---:|---:|---|---:|---:|"]
    rows = []
    for codec in ("float32", "int8"):
        for nodes in (1, 10, 100):
            r = model(m, nodes, a.cores_per_node, a.rows, a.price_per_node_hour,
                      a.network_gbit, codec)
            rows.append(r)
            lines.append(f"| {nodes} | {codec} + zstd | {r['rows_per_s']:,.0f} | "
                         f"{r['hours']:.2f} | {r['limited_by']} | {r['efficiency']:.2f} | "
                         f"${r['cost']:,.2f} |")
    text = "\n".join(lines) + "\n"
    (RESULTS / "cluster_scale.md").write_text(text)
    (RESULTS / "cluster_scale.json").write_text(json.dumps(
        {"assumptions": vars(a), "rows": rows}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
