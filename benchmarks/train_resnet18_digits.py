"""The recipe of the `resnet18-digits` built-in: train, check, write the safetensors.

    PYTHONPATH=src python benchmarks/train_resnet18_digits.py [--epochs 30] [--out PATH]

Seeded (data split and training), about a minute on one CPU thread. Prints the held-out
accuracy and the file's sha256, which models/vision.py pins (RESNET_DIGITS_SHA256).
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from reactinfer.core.files import sha256_file
from reactinfer.data.images import digits_split, load_digits

DEFAULT_OUT = (Path(__file__).resolve().parents[1] / "src" / "reactinfer" / "models" / "weights"
               / "resnet18-digits.safetensors")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    a = ap.parse_args()
    import torch  # here, not above: --help stays fast
    from safetensors.torch import save_file

    from reactinfer.models.vision import train_resnet_digits

    torch.set_num_threads(1)  # small convolutions: a second thread costs more than it gives
    images, labels = load_digits()
    split = digits_split()
    t0 = time.perf_counter()
    model = train_resnet_digits(images[split["train"]], labels[split["train"]], seed=a.seed,
                                epochs=a.epochs)
    secs = time.perf_counter() - t0
    x = torch.from_numpy(images[split["eval"]].astype(np.float32) / 255.0)[:, None]
    with torch.inference_mode():
        acc = float((model(x).argmax(-1).numpy() == labels[split["eval"]]).mean())
    a.out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(a.out))
    print(f"trained {a.epochs} epochs in {secs:.0f} s; held-out accuracy {acc:.4f} "
          f"({len(split['eval'])} digits); {a.out} sha256 {sha256_file(a.out)}")


if __name__ == "__main__":
    main()
