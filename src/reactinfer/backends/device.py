"""Where the torch backends run: the `device` option ('auto', 'cpu', 'cuda').

'auto' is CUDA when torch sees a GPU and the model can run there, else the CPU. The
runner holds its own copy of the model on a GPU; the handle's model stays where it was
(the planner derives handles from it and must be able to roll back)."""
from __future__ import annotations

import copy
import itertools
from typing import TYPE_CHECKING

from ..core.errors import UserError

if TYPE_CHECKING:
    import torch

DEVICES = ("auto", "cpu", "cuda")
# torch.ao's quantized modules (dynamic int8) run on CPU kernels only (fbgemm / qnnpack)
_CPU_ONLY_MODULES = ("torch.ao.nn.quantized", "torch.nn.quantized",
                     "torch.ao.nn.intrinsic.quantized")


def cpu_only_reason(model: torch.nn.Module) -> str | None:
    """Why `model` cannot run on CUDA, or None when it can."""
    for name, m in model.named_modules():
        if type(m).__module__.startswith(_CPU_ONLY_MODULES):
            return (f"{name or 'the model'} is a torch dynamic-int8 quantized module "
                    f"({type(m).__name__}), which has CPU kernels only; run it with "
                    "device='cpu', or quantize for the GPU another way (CastHalf fp16 / bf16, "
                    "QuantizeWeightOnly)")
    return None


def resolve_device(device: str | None, model: torch.nn.Module) -> str:
    """'cpu' or 'cuda' for `device`; a UserError when the model cannot run where asked."""
    import torch

    device = device or "auto"
    if device not in DEVICES:
        raise UserError(f"device {device!r} is not one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    has_gpu = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_gpu and cpu_only_reason(model) is None else "cpu"
    if not has_gpu:
        raise UserError("device='cuda' was asked for, but torch sees no CUDA GPU here "
                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda}); "
                        "use device='cpu' or 'auto'")
    reason = cpu_only_reason(model)
    if reason:
        raise UserError(f"cannot run on CUDA: {reason}")
    return "cuda"


def place(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """`model` itself when it is already on `device`, else a copy moved there: the
    caller's module is never moved."""
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    if first is None or first.device.type == device:
        return model
    return copy.deepcopy(model).to(device)
