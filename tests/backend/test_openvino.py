"""The OpenVINO backend on tiny models: fp32 matches torch eager, int8 (NNCF) runs with its
quality measured, bf16 only where the CPU has it, fp32_layers stays float, artifacts hold
the IR (hashed, refused when corrupt) and run without torch. Settings chosen from the
CPU are tested with synthetic hardware profiles, never by assuming the one running."""
import json
import subprocess
import sys

import numpy as np
import pytest

import reactinfer as ri
from reactinfer.backends import to_backend
from reactinfer.core.errors import UserError
from reactinfer.core.hardware import hardware_profile, isa_from_flags, native_bf16
from reactinfer.tasks import tokenize
from reactinfer.testing import assert_tamper_refused, sqnr_db, tiny_handle

pytest.importorskip("openvino", reason="openvino is not installed (pip install openvino nncf)")
pytest.importorskip("nncf", reason="nncf is not installed (pip install openvino nncf)")

from reactinfer.backends import openvino as ovb  # noqa: E402

AVX2 = isa_from_flags({"avx2", "fma", "f16c"})                      # Zen 1, Haswell
VNNI = isa_from_flags({"avx2", "avx512f", "avx512_vnni"})           # Cascade Lake
BF16 = isa_from_flags({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"})  # Zen 4
AMX = isa_from_flags({"avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8"})
FFN = "/model/encoder/layer.0/intermediate/dense/MatMul"  # a node of the exported graph


@pytest.fixture(scope="module")
def embed():
    return tiny_handle("embedding")


@pytest.fixture(scope="module")
def int8(embed):
    # one SmoothQuant alpha (NNCF's default), not the tuned "auto" that quantizes once per
    # alpha: the tests on this fixture do not depend on the alpha; the tuning has its own
    return to_backend(embed, "openvino", precision="int8", calibration_texts=16,
                      fp32_layers=[FFN], smooth_quant=0.95)


def _batch(handle, texts):
    return tokenize(handle.tokenizer, texts, handle.max_length)


@pytest.mark.parametrize("task", ["embedding", "classification"])
@pytest.mark.parametrize("hint", ["latency", "throughput"])
def test_fp32_matches_torch_eager(task, hint, texts):
    handle = tiny_handle(task)
    conv = to_backend(handle, "openvino", precision="fp32", hint=hint, threads=2)
    assert conv.model is None and set(conv.files) == {"model.xml", "model.bin"}
    assert handle.backend == "torch"  # the input is unchanged
    for rows in (texts[:7], ["open"]):  # a batch, and one text of one word
        batch = _batch(handle, rows)
        out = conv.runner()(batch)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, handle.runner()(batch), atol=1e-4, rtol=0)


def test_int8_runs_and_its_quality_is_measured(embed, int8, texts):
    assert int8.backend_options["overflow_fix"] == ovb.overflow_fix_for(hardware_profile().isa)
    batch = _batch(embed, texts[:16])
    ref, out = embed.runner()(batch), int8.runner()(batch)
    assert np.abs(ref - out).max() > 0          # int8 really ran: outputs are not fp32's
    assert sqnr_db(ref, out) >= 15.0            # the loose floor of the other int8 paths
    r = ri.bench(int8, reference=embed, eval_texts=texts, batch_size=8, latency_runs=2,
                 progress=False)
    assert r["backend"] == "openvino" and 0.9 < r["quality"]["mean_cosine"] <= 1.0 + 1e-6


def test_fp32_layers_stay_float_and_the_rest_is_int8(int8):
    import openvino as ov

    model = ov.Core().read_model(str(int8.files["model.xml"]))
    layers = ovb.quantizable_layers(model)
    assert FFN in layers and ovb.is_float_layer(model, FFN)
    dense = [n for n in layers if n.endswith("dense/MatMul") and n != FFN]
    assert dense and not any(ovb.is_float_layer(model, n) for n in dense)
    assert int8.backend_options["fp32_layers"] == [FFN]


def test_fp32_layers_must_name_a_layer(embed):
    with pytest.raises(UserError, match="no MatMul/Conv named"):
        to_backend(embed, "openvino", precision="int8", calibration_texts=8,
                   fp32_layers=["/no/such/MatMul"])
    with pytest.raises(UserError, match="precision int8"):
        to_backend(embed, "openvino", fp32_layers=[FFN])


def test_bf16_only_where_the_cpu_has_it(embed, texts):
    for isa in (AVX2, VNNI):
        with pytest.raises(UserError, match="native bf16"):
            ovb.check_options({"precision": "bf16"}, isa)
    for isa in (BF16, AMX):
        ovb.check_options({"precision": "bf16"}, isa)
    if not native_bf16(hardware_profile().isa):
        with pytest.raises(UserError, match="native bf16"):
            to_backend(embed, "openvino", precision="bf16")
        pytest.skip("this CPU has no native bf16: the refusal is what runs here")
    conv = to_backend(embed, "openvino", precision="bf16")
    batch = _batch(embed, texts[:8])
    assert sqnr_db(embed.runner()(batch), conv.runner()(batch)) >= 30.0


def test_int8_rest_in_bf16_only_where_the_cpu_has_it(embed, int8, texts):
    for isa in (AVX2, VNNI):
        with pytest.raises(UserError, match="native bf16"):
            ovb.check_options({"precision": "int8", "rest": "bf16"}, isa)
    for isa in (BF16, AMX):
        ovb.check_options({"precision": "int8", "rest": "bf16"}, isa)
        with pytest.raises(UserError, match="with precision int8"):
            ovb.check_options({"precision": "fp32", "rest": "bf16"}, isa)
    assert ovb.compile_config("int8", "latency", None, "bf16")["INFERENCE_PRECISION_HINT"] \
        == "bf16"
    assert ovb.compile_config("int8", "latency", None)["INFERENCE_PRECISION_HINT"] == "f32"
    opts = {**int8.backend_options, "rest": "bf16"}
    if not native_bf16(hardware_profile().isa):
        with pytest.raises(UserError, match="native bf16"):
            to_backend(int8, "openvino", **opts)
        pytest.skip("this CPU has no native bf16: the refusal is what runs here")
    rest = to_backend(int8, "openvino", **opts)
    assert rest.files == int8.files and rest.backend_options["fp32_layers"] == [FFN]
    runner = rest.runner()
    ran = {op.get_rt_info()["runtimePrecision"].astype(str)
           for op in runner.compiled.get_runtime_model().get_ops()}
    assert "bf16" in ran and ran & {"u8", "i8"}  # int8 GEMMs, and float ops now in bf16
    batch = _batch(embed, texts[:16])
    out, ref = runner(batch), embed.runner()(batch)
    assert np.abs(out - int8.runner()(batch)).max() > 0  # not the fp32-rest model's answers
    assert sqnr_db(ref, out) >= 15.0


def test_settings_chosen_from_the_cpu():
    from reactinfer.backends.onnxruntime import int8_settings

    assert ovb.overflow_fix_for(AVX2) == "enable"   # u8×s8 pair sums saturate: 7-bit weights
    for isa in (VNNI, BF16, AMX, isa_from_flags({"asimd"})):
        assert ovb.overflow_fix_for(isa) == "disable"
    assert int8_settings(AVX2) == {"reduce_range": True}
    assert int8_settings(VNNI) == {"reduce_range": False}
    assert ovb.compile_config("fp32", "throughput", 2) == {
        "PERFORMANCE_HINT": "THROUGHPUT", "INFERENCE_PRECISION_HINT": "f32",
        "INFERENCE_NUM_THREADS": 2}


def test_bad_options_are_one_line_user_errors(embed):
    for opts, match in (({"precision": "int4"}, "precision"), ({"hint": "fast"}, "hint"),
                        ({"threads": 0}, "threads"), ({"warp": 1}, "unknown"),
                        ({"precision": "int8", "fp32_layers": FFN}, "list"),
                        ({"precision": "int8", "smooth_quant": 1.5}, "smooth_quant"),
                        ({"precision": "int8", "smooth_quant": "strong"}, "smooth_quant"),
                        ({"precision": "fp32", "smooth_quant": 0.8}, "int8")):
        with pytest.raises(UserError, match=match):
            to_backend(embed, "openvino", **opts)
    with pytest.raises(UserError, match="does not run"):
        to_backend(tiny_handle("causal-lm"), "openvino")


_NO_TORCH = """
import sys, json
sys.modules["torch"] = None  # any use of PyTorch now raises ImportError
import reactinfer as ri
from reactinfer.tasks import tokenize
h = ri.load(sys.argv[1])
out = h.runner()(tokenize(h.tokenizer, json.loads(sys.argv[2]), h.max_length))
print(json.dumps({"model": h.model is None, "backend": h.backend, "out": out.tolist()}))
"""


def test_artifact_holds_the_ir_reloads_without_torch_and_refuses_corruption(
        embed, int8, tmp_path, texts):
    ri.Artifact.save(int8, tmp_path / "art")
    manifest = ri.Artifact.read_manifest(tmp_path / "art")
    assert {"model.xml", "model.bin"} <= set(manifest["files"])
    assert "model.safetensors" not in manifest["files"]
    assert manifest["backend_options"]["precision"] == "int8"
    batch = _batch(embed, texts[:3])
    want = int8.runner()(batch)
    back = ri.load(tmp_path / "art")
    assert back.model is None and back.backend == "openvino"
    np.testing.assert_allclose(back.runner()(batch), want, atol=1e-5)
    run = subprocess.run([sys.executable, "-c", _NO_TORCH, str(tmp_path / "art"),
                          json.dumps(texts[:3])], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["model"] and got["backend"] == "openvino"
    np.testing.assert_allclose(np.array(got["out"]), want, atol=1e-5)
    assert_tamper_refused(tmp_path / "art", "model.bin")


def test_a_stray_bin_is_still_refused(tmp_path):
    """Only IR weights beside their .xml are safe; any other .bin may be a pickle."""
    from reactinfer.core.files import is_unsafe

    (tmp_path / "pytorch_model.bin").write_bytes(b"x")
    (tmp_path / "model.bin").write_bytes(b"x")
    (tmp_path / "model.xml").write_text("<net/>")
    assert is_unsafe(tmp_path / "pytorch_model.bin")
    assert not is_unsafe(tmp_path / "model.bin")


def test_cli_bench_takes_backend_options_and_refuses_bad_ones(tmp_path, capsys):
    from reactinfer.cli.main import main
    from reactinfer.testing import save_tiny_hf

    src = str(save_tiny_hf(tmp_path / "src", "embedding"))
    small = ["--n-eval", "8", "--latency-runs", "1", "--batch-size", "4", "--no-progress"]
    assert main(["bench", src, "--backend", "openvino", "--backend-opt", "hint=throughput",
                 "--backend-opt", "threads=1", "--json", *small]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["backend"] == "openvino"
    assert report["backend_options"] == {"precision": "fp32", "hint": "throughput", "threads": 1}
    for bad in (["--backend", "openvino", "--backend-opt", "hint=fast"],
                ["--backend", "openvino", "--backend-opt", "hint"],
                ["--backend-opt", "hint=latency"]):  # options need a named backend
        assert main(["bench", src, *bad, *small]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # bf16: refused in one line (exit 2) where the CPU lacks it, run where it has it
    code = main(["bench", src, "--backend", "openvino", "--precision", "bf16", *small])
    err = capsys.readouterr().err
    if native_bf16(hardware_profile().isa):
        assert code == 0
    else:
        assert code == 2 and "native bf16" in err and len(err.strip().splitlines()) == 1


def test_calls_from_several_threads_get_their_own_answers(embed, texts):
    from concurrent.futures import ThreadPoolExecutor

    runner = to_backend(embed, "openvino", hint="throughput").runner()
    batches = [_batch(embed, texts[i:i + 3 + i % 4]) for i in range(8)]
    want = [runner(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(runner, batches))
    for w, g in zip(want, got, strict=True):
        np.testing.assert_array_equal(w, g)


def test_backend_auto_considers_openvino_at_the_precisions_this_cpu_runs(embed):
    from reactinfer.measure.choose import candidate_grid

    grid, skipped = candidate_grid(embed)
    bf16 = native_bf16(hardware_profile().isa)
    assert [(o["precision"], o.get("rest")) for n, o in grid if n == "openvino"] == \
        ([("fp32", None), ("bf16", None), ("int8", None), ("int8", "bf16")] if bf16
         else [("fp32", None), ("int8", None)])
    assert any(s["backend"] == "openvino" and "bf16" in s["why"] for s in skipped) is not bf16
    grid, _ = candidate_grid(embed, precision="int8")
    assert ("openvino", {"precision": "int8"}) in grid


def test_smooth_quant_auto_is_recorded_and_no_worse_than_nncf_default_on_calibration(embed):
    import openvino as ov

    from reactinfer.backends.onnx_layers import calibration_feeds, calibration_items
    from reactinfer.backends.openvino_int8 import (
        SMOOTH_QUANT_ALPHAS,
        float_outputs,
        output_error,
    )

    auto = to_backend(embed, "openvino", precision="int8", calibration_items=16)
    alpha = auto.backend_options["smooth_quant"]
    assert alpha in SMOOTH_QUANT_ALPHAS  # resolved, so a report says which
    fixed = to_backend(embed, "openvino", precision="int8", calibration_items=16,
                       smooth_quant=0.95)
    assert fixed.backend_options["smooth_quant"] == 0.95
    fp32 = to_backend(embed, "openvino", precision="fp32")
    core = ov.Core()
    names = [i.get_any_name() for i in core.read_model(str(fp32.files[ovb.XML_FILE])).inputs]
    feeds = calibration_feeds(fp32, calibration_items(fp32, 16), names=names)

    def out(h):
        return float_outputs(core.read_model(str(h.files[ovb.XML_FILE])), feeds)

    ref = out(fp32)
    assert output_error(out(auto), ref) <= output_error(out(fixed), ref) + 1e-12
    off = to_backend(embed, "openvino", precision="int8", calibration_items=16,
                     smooth_quant="off")
    assert off.backend_options["smooth_quant"] == "off"


def test_a_tuned_alpha_is_kept_and_the_same_build_quantizes_once(embed, tmp_path, monkeypatch):
    """A whole SmoothQuant tuning is kept in the cache: the same model on the same
    calibration items quantizes once, at that alpha. The key moves with the items and the
    settings; a damaged entry, or one whose alpha is not one of those tried, is no entry."""
    import nncf
    import openvino as ov

    from reactinfer.backends import openvino_int8 as oi
    from reactinfer.core.cache import keep, read_kept

    monkeypatch.setenv("REACT_CACHE_DIR", str(tmp_path))
    calls, real = [], nncf.quantize
    monkeypatch.setattr(nncf, "quantize", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = to_backend(embed, "openvino", precision="int8", calibration_items=8)
    assert len(calls) == len(oi.SMOOTH_QUANT_ALPHAS)
    [entry] = (tmp_path / "smooth-quant").iterdir()
    calls.clear()
    again = to_backend(embed, "openvino", precision="int8", calibration_items=8)
    assert len(calls) == 1
    assert again.backend_options["smooth_quant"] == first.backend_options["smooth_quant"]
    model = ov.Core().read_model(str(to_backend(embed, "openvino").files[ovb.XML_FILE]))
    feeds = [{"input_ids": np.ones((1, 4), np.int64)}]
    key = oi.tuning_key(model, feeds, "enable", [])
    assert key == oi.tuning_key(model, [dict(f) for f in feeds], "enable", [])
    assert key != oi.tuning_key(model, feeds + feeds, "enable", [])  # other items
    assert key != oi.tuning_key(model, feeds, "disable", [])  # other settings
    def cached() -> float | None:
        return read_kept(oi.TUNINGS, entry.name, oi._read_alpha)

    assert cached() == first.backend_options["smooth_quant"]
    (entry / oi.ALPHA_FILE).write_text('{"alpha": 0.8}  ')  # damaged: its hash differs
    assert cached() is None
    for bad in ('{"alpha": 0.33}', "{not json", '{"other": 1}'):  # sound, but no alpha tried
        keep(oi.TUNINGS, entry.name, lambda d, b=bad: (d / oi.ALPHA_FILE).write_text(b))
        assert cached() is None  # tuned again


def test_rank_layers_puts_the_layer_whose_input_breaks_int8_first(tmp_path):
    from reactinfer.core.backend import get_backend
    from reactinfer.testing import save_outlier_hf, tiny_texts

    handle = ri.load(str(save_outlier_hf(tmp_path / "outlier")))
    ranks = get_backend("openvino").rank_layers(handle, tiny_texts(12), precision="int8",
                                                smooth_quant="off")
    # the MatMuls whose input int8 quantizes (NNCF leaves the attention outputs float here)
    assert 8 <= len(ranks) <= 12
    assert max(ranks, key=ranks.__getitem__) == "/model/encoder/layer.1/output/dense/MatMul"
