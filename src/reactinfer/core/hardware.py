"""Hardware profile: what this machine can do, recorded in every manifest and report."""
from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass, field

import psutil

# ISA flags that decide which kernels pay here (int8 GEMM needs VNNI/AMX to gain much).
_ISA_FLAGS = {
    "avx2": ("avx2",),
    "avx512": ("avx512f",),
    "vnni": ("avx512_vnni", "avx_vnni", "avx512vnni"),
    "avx_vnni": ("avx_vnni",),                 # VNNI on 256-bit registers (Alder Lake on)
    "avx512_bf16": ("avx512_bf16",),           # native bf16 dot products (Zen 4, Cooper Lake)
    "avx512_fp16": ("avx512_fp16",),
    "amx": ("amx_tile", "amx_int8", "amx_bf16"),
    "amx_bf16": ("amx_bf16",),
    "amx_int8": ("amx_int8",),
    "f16c": ("f16c",),
    "fma": ("fma",),
    "neon": ("neon", "asimd"),
}


@dataclass(frozen=True)
class HardwareProfile:
    cores_physical: int
    cores_logical: int
    cpu_model: str
    isa: dict[str, bool]
    memory_gb: float
    machine: str
    gpu: bool = False
    gpu_name: str | None = None
    gpu_memory_gb: float | None = None
    extra: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        flags = isa_text(self.isa)
        gpu = f", GPU {self.gpu_name}" if self.gpu else ", no GPU"
        return (f"{self.cpu_model} ({self.cores_physical} cores / {self.cores_logical} threads, "
                f"ISA: {flags}), {self.memory_gb:.0f} GiB{gpu}")


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set[str]()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:  # not Linux: ISA flags stay unknown (False)
        pass
    return model, flags


def isa_from_flags(flags: set[str]) -> dict[str, bool]:
    """The ISA features we decide by, from the kernel's CPU flag names."""
    return {name: any(f in flags for f in aliases) for name, aliases in _ISA_FLAGS.items()}


def int8_saturates(isa: dict[str, bool]) -> bool:
    """Whether this CPU's int8 GEMM kernels can saturate. Without VNNI, x86 sums pairs of
    u8×s8 products into 16 bits (VPMADDUBSW) and clamps; VNNI / AMX and Arm's dot products
    add into 32 bits. Where it saturates, quantizers keep weights to 7 bits (ONNX Runtime's
    `reduce_range`, NNCF's overflow fix)."""
    return not (isa.get("vnni") or isa.get("amx_int8") or isa.get("neon"))


# The ISA flags that compute each half-precision format natively; elsewhere engines
# emulate it, slower than fp32.
NATIVE_HALF = {"bf16": ("amx_bf16", "avx512_bf16"), "fp16": ("avx512_fp16",)}


def native_flags(isa: dict[str, bool], fmt: str) -> list[str]:
    """The flags of this CPU that run `fmt` (bf16, fp16) natively; [] where none do."""
    return [name for name in NATIVE_HALF.get(fmt, ()) if isa.get(name)]


def native_bf16(isa: dict[str, bool]) -> bool:
    """Whether the CPU computes bf16 natively (AVX-512 BF16 or AMX)."""
    return bool(native_flags(isa, "bf16"))


def isa_text(isa: dict[str, bool]) -> str:
    """The ISA features present, as reports print them (e.g. `avx2,avx512,vnni,avx512_bf16`)."""
    return ",".join(k for k, v in isa.items() if v) or "none"


@functools.lru_cache(maxsize=1)
def hardware_profile() -> HardwareProfile:
    model, flags = _cpuinfo()
    isa = isa_from_flags(flags)
    gpu, gpu_name, gpu_mem = False, None, None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = True
            props = torch.cuda.get_device_properties(0)
            gpu_name, gpu_mem = props.name, round(props.total_memory / 2**30, 1)
    except ImportError:  # ONNX-only deployments profile without torch
        pass
    return HardwareProfile(
        cores_physical=psutil.cpu_count(logical=False) or os.cpu_count() or 1,
        cores_logical=psutil.cpu_count(logical=True) or os.cpu_count() or 1,
        cpu_model=model,
        isa=isa,
        memory_gb=round(psutil.virtual_memory().total / 2**30, 1),
        machine=platform.machine(),
        gpu=gpu,
        gpu_name=gpu_name,
        gpu_memory_gb=gpu_mem,
    )


def package_versions(names: tuple[str, ...] = ("reactinfer", "torch", "transformers", "numpy",
                                               "onnxruntime", "openvino", "nncf",
                                               "llama_cpp_python", "ray")) -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            continue
    return out
