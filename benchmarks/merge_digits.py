"""Weight merging of compact digit classifiers: 3 students, their recursive merge
Θ = Σ αᵢ θᵢ (compression/merge.py, α = 1/3 each), and their output ensemble.

    PYTHONPATH=src python benchmarks/merge_digits.py [--ratio 0.5] [--steps 300]

Weight averaging only works inside one loss basin, so the students share a lineage:
resnet18-digits is channel-pruned once (deterministic), then 3 copies are fine-tuned by KD
from the original (plus labels) with different seeds: different data orders and random
shifts. For contrast, 3 students of the same compact layout trained FROM SCRATCH with
different seeds (different initialisations) are merged too (`--scratch-epochs 0` skips).

Averaging BatchNorm running statistics does not give the statistics of the averaged
network, so the merge is reported raw and after BatchNorm recalibration on the 256
calibration digits. Accuracy is on the 360-digit test split no step sees. Writes
benchmarks/results/merge_digits.json and .md; seeded.
"""
from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

import numpy as np
from _common import write_results
from prune_digits import OUT, accuracy, cpu_line, digits_test, distill_cfg, logits

import reactinfer as ri
from reactinfer.core.hardware import hardware_profile

if TYPE_CHECKING:  # torch and the compression package load under main(): --help stays fast
    import torch

SEEDS = (1, 2, 3)


def evaluate(h, students: list[torch.nn.Module], x: torch.Tensor, y: np.ndarray) -> dict:
    """Each student's accuracy, the recursive merge's (raw and BN-recalibrated), and the
    mean-of-logits ensemble's."""
    import torch

    from reactinfer.compression import EnsembleRunner, RecalibrateBatchNorm
    from reactinfer.compression.merge import merge_models

    merged = merge_models(students, tree=True)  # ((s1), (s2, s3)): the recursive merge
    recal = ri.compress(h.derive(model=merged), RecalibrateBatchNorm()).model

    def runner(m: torch.nn.Module):
        return lambda batch: logits(m, torch.from_numpy(batch["pixel_values"]))

    ens = EnsembleRunner([runner(m) for m in students], "image-classification", "mean")
    ens_acc = float((ens({"pixel_values": x.numpy()}).argmax(-1) == y).mean())
    return {"students": [accuracy(m, x, y) for m in students],
            "merge_raw": accuracy(merged, x, y), "merge_bn_recal": accuracy(recal, x, y),
            "ensemble": ens_acc,
            "params": sum(p.numel() for p in students[0].parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--scratch-epochs", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite the .md from the saved .json, measuring nothing")
    a = ap.parse_args()
    if a.markdown_only:
        report = json.loads((OUT / "merge_digits.json").read_text())
        (OUT / "merge_digits.md").write_text(markdown(report))
        return
    import torch

    from reactinfer.compression import PruneChannels
    from reactinfer.data.images import digits_split, load_digits
    from reactinfer.models.vision import train_resnet_digits

    torch.set_num_threads(a.threads)
    h = ri.load("resnet18-digits")
    x, y = digits_test(h)
    t0 = time.perf_counter()
    pruned = ri.compress(h, PruneChannels(ratio=a.ratio))
    assert pruned.model is not None and h.model is not None  # torch models
    students = [ri.compress(pruned, distill_cfg(a.steps, seed=s)).model for s in SEEDS]
    rows = [{"name": f"pruned {round(a.ratio * 100)}% + KD, seeds {SEEDS} (shared lineage)",
             **evaluate(h, students, x, y), "seconds": time.perf_counter() - t0}]
    if a.scratch_epochs:
        t0 = time.perf_counter()
        images, labels = load_digits()
        tr = digits_split()["train"]
        width = pruned.model.conv1.out_channels  # the same compact layout
        torch.manual_seed(0)
        scratch = [train_resnet_digits(images[tr], labels[tr], seed=s, epochs=a.scratch_epochs,
                                       width=width) for s in SEEDS]
        rows.append({"name": f"width {width} from scratch, seeds {SEEDS} (independent inits)",
                     **evaluate(h, scratch, x, y), "seconds": time.perf_counter() - t0})
    report = {"command": f"PYTHONPATH=src python benchmarks/merge_digits.py --ratio {a.ratio} "
                         f"--steps {a.steps} --scratch-epochs {a.scratch_epochs} "
                         f"--threads {a.threads}",
              "cpu": hardware_profile().to_dict(), "torch": torch.__version__,
              "teacher_accuracy": accuracy(h.model, x, y),
              "pruned_accuracy": accuracy(pruned.model, x, y), "rows": rows}
    write_results(OUT / "merge_digits", report, markdown(report))


def markdown(r: dict) -> str:
    lines = ["# Merging 3 compact digit classifiers (accuracy on 360 test digits)", "",
             f"Command: `{r['command']}`  ", cpu_line(r), "",
             f"Teacher (resnet18-digits): {r['teacher_accuracy']:.4f}; the pruned start "
             f"before any training: {r['pruned_accuracy']:.4f}.", "",
             "| students | params | student 1 | student 2 | student 3 | mean student "
             "| recursive merge (raw BN) | merge + BN-recal | ensemble (mean logits) | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for x in r["rows"]:
        s = x["students"]
        lines.append(f"| {x['name']} | {x['params']:,} | {s[0]:.4f} | {s[1]:.4f} | {s[2]:.4f} "
                     f"| {sum(s) / len(s):.4f} | {x['merge_raw']:.4f} "
                     f"| {x['merge_bn_recal']:.4f} | {x['ensemble']:.4f} "
                     f"| {x['seconds'] / 60:.1f} |")
    lines += ["", "- merge: `merge_models(students, tree=True)` = Θ = Σ αᵢ θᵢ with α = 1/3, "
              "merged recursively (s1) + (s2 + s3) with summed weights; integer buffers from "
              "student 1. The merge costs one model at inference; the ensemble costs three.",
              "- merge + BN-recal: running statistics re-estimated on the 256 calibration "
              "digits (a subset of the train split); averaged statistics are not those of "
              "the averaged weights.",
              "- shared lineage: one channel-pruned resnet18-digits, fine-tuned 3 times by KD "
              "from the original + labels with different seeds (data order, random shifts). "
              "From scratch: the same layout, independent random initialisations.",
              "- one run, one seed per student: 1 of 360 test digits is 0.0028 of accuracy, "
              "so differences of 2-3 digits (under 0.01) are within the noise of one run.",
              "- minutes: wall time of training the 3 students and evaluating, one thread, "
              "on a CPU shared with other engineers' jobs."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
