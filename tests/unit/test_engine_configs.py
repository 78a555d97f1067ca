"""One source for engine configurations: what each backend declares it runs per task
(Backend.engine_configs) is what `bench --backend auto` measures and what the planner's
engine and number-format actions offer, on every CPU (synthetic profiles: the answer must
not depend on the CPU running the test)."""
import dataclasses
import json

import pytest

from reactinfer.core.backend import engine_configs, list_backends
from reactinfer.core.handle import task_names
from reactinfer.core.hardware import hardware_profile, isa_from_flags, native_bf16
from reactinfer.measure.choose import auto_grid, candidate_grid
from reactinfer.planner.catalogue import REFERENCE, default_actions
from reactinfer.testing import tiny_image_handle

CPUS = {
    "avx2": {"avx2", "fma", "f16c"},
    "vnni": {"avx2", "avx512f", "avx512_vnni"},
    "vnni+bf16": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16"},
    "amx": {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16",
            "amx_int8"},
}


def _hw(cpu):
    return dataclasses.replace(hardware_profile(), isa=isa_from_flags(CPUS[cpu]), gpu=False)


def _key(backend, options):
    return backend, json.dumps(options, sort_keys=True)


def _available(name):
    b = list_backends().get(name)
    return b is not None and b.available()


def _grid(task, hw):
    configs, _ = auto_grid(task, hw.isa, include=list(list_backends()))  # slow ones too
    return {_key(c.backend, c.options) for c in configs if c.backend != REFERENCE}


@pytest.mark.parametrize("cpu", CPUS)
def test_the_auto_grid_and_the_catalogue_offer_the_same_engine_configs(cpu):
    hw = _hw(cpu)
    actions = default_actions(hw)
    for task in task_names():
        grid = _grid(task, hw)
        engine = {_key(*a.backend) for a in actions if a.backend and task in a.tasks}
        assert grid == engine, (task, grid ^ engine)
        # a number format's form on an engine is one of that engine's declared configs
        for a in actions:
            if task in a.tasks:
                assert all(_key(e, o) in set().union(*(_grid(t, hw) for t in a.tasks))
                           for e, o in a.formats.items()), a.name


@pytest.mark.parametrize("cpu", CPUS)
def test_bf16_configs_appear_only_where_the_profile_says_native_bf16(cpu):
    hw = _hw(cpu)
    native = native_bf16(hw.isa)
    for task in task_names():
        configs, skipped = auto_grid(task, hw.isa)
        bf16 = [c for c in configs if "bf16" in c.native]
        assert bool(bf16) == (native and _available("openvino") and task != "causal-lm"), task
        if not native and task != "causal-lm" and _available("openvino"):
            assert any("no native bf16" in s["why"] for s in skipped), task
    names = {a.name for a in default_actions(hw)}
    assert ("openvino bf16" in names) == (native and _available("openvino"))
    bf16_action = next(a for a in default_actions(hw) if a.name == "bf16")
    assert ("openvino" in bf16_action.formats) == native


def test_the_image_grid_measures_openvino_and_static_int8():
    grid, skipped = candidate_grid(tiny_image_handle())
    assert grid[0] == ("torch", {})  # the reference first
    want = []
    if _available("openvino"):
        want += [("openvino", {"precision": "fp32"}), ("openvino", {"precision": "int8"})]
    if _available("onnxruntime"):
        want += [("onnxruntime", {"precision": "fp32"}),
                 ("onnxruntime", {"precision": "int8-static"})]
    assert all(w in grid for w in want), grid
    bf16 = ("openvino", {"precision": "bf16"}) in grid
    assert bf16 == (native_bf16(hardware_profile().isa) and _available("openvino"))
    # dynamic int8 quantizes MatMul/Gemm only: it is never offered to a CNN
    assert ("onnxruntime", {"precision": "int8-dynamic"}) not in grid


def test_declarations_name_each_config_once_and_keep_the_catalogue_names():
    names = [c.name for c in engine_configs()]
    assert len(names) == len(set(names))
    for name in ("onnxruntime fp32", "openvino fp32", "openvino int8", "openvino bf16",
                 "openvino int8 (bf16 rest)", "onnxruntime int8 dynamic",
                 "onnxruntime int8 static (per-channel)", "torch.compile",
                 "llama.cpp (packaged GGUF)", "llama.cpp q8_0", "llama.cpp q4_0"):
        assert name in names
    for c in engine_configs():
        assert set(c.tasks) <= set(task_names()), c.name
        assert set(c.tasks) <= set(list_backends()[c.backend].capabilities()["tasks"]), c.name


def test_a_backend_that_declares_none_for_a_task_says_why():
    configs, skipped = auto_grid("causal-lm", hardware_profile().isa)
    assert all(c.backend != "onnxruntime" for c in configs)
    if _available("onnxruntime"):
        assert any(s["backend"] == "onnxruntime" and "KV cache" in s["why"] for s in skipped)
