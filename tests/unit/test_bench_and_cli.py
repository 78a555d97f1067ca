import json
import os
import subprocess
import sys

import pytest

import reactinfer as ri
from reactinfer.cli.main import main
from reactinfer.core.errors import UserError
from reactinfer.testing import save_tiny_hf, tiny_handle


def test_bench_reports_every_field_and_self_quality_is_perfect(texts):
    r = ri.bench(tiny_handle("embedding"), batch_size=4, eval_texts=texts, latency_runs=5,
                 progress=False)
    for key in ("latency_ms", "throughput", "peak_rss_mb", "size_mb", "params", "quality",
                "hardware", "versions"):
        assert key in r
    lat = r["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
    assert r["throughput"]["items_per_s"] > 0 and r["throughput"]["tokens_per_s"] > 0
    assert r["quality"]["mean_cosine"] == pytest.approx(1.0)
    assert r["quality"]["top10_recall"] == 1.0


def test_bench_causal_lm_reports_generation(texts):
    r = ri.bench(tiny_handle("causal-lm"), batch_size=4, eval_texts=texts, latency_runs=3,
                 gen_tokens=4, progress=False)
    assert r["quality"]["perplexity_ratio"] == pytest.approx(1.0)
    assert r["generation"]["new_tokens"] == 4 and r["generation"]["tokens_per_s"] > 0


def test_bench_of_artifact_compares_with_its_source(tmp_path, texts):
    src = save_tiny_hf(tmp_path / "src", "classification")
    ri.Artifact.save(ri.load(src), tmp_path / "art")
    r = ri.bench(str(tmp_path / "art"), batch_size=4, eval_texts=texts, latency_runs=3,
                 progress=False)
    assert r["reference"] == "src" and r["quality"]["top1_agreement"] == 1.0


def test_cli_bench_json_on_hf_dir(tmp_path, capsys):
    d = save_tiny_hf(tmp_path / "m", "embedding")
    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"open the archive and close it {i}" for i in range(12)))
    rc = main(["bench", str(d), "--data", str(data), "--batch-size", "4", "--latency-runs", "3",
               "--json", "--no-progress"])
    assert rc == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    from reactinfer.data import texts_for

    # held-out part of the user's file: the same split calibration and training respect
    assert out["task"] == "embedding" and out["n_eval"] == len(texts_for("eval", str(data)))
    assert 0 < out["n_eval"] < 12
    # so few texts: the report says so, in a field and in one line on stderr
    assert f"only {out['n_eval']} eval text" in out["eval_warning"]
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert warning == [f"react bench: warning: {out['eval_warning']}"]


@pytest.mark.slow  # two `react bench` processes
def test_no_progress_silences_the_libraries_bars_too(tmp_path):
    env_before = os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS")
    d = save_tiny_hf(tmp_path / "m", "embedding")
    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"open the archive and close it {i}" for i in range(12)))
    cmd = [sys.executable, "-m", "reactinfer", "bench", str(d), "--data", str(data),
           "--batch-size", "4", "--latency-runs", "2", "--json"]
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    loud = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, env=env)
    quiet = subprocess.run(cmd + ["--no-progress"], capture_output=True, text=True, timeout=300,
                           check=True, env=env)
    assert "Loading weights" in loud.stderr  # transformers' bar, shown by default
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr
    # in one process the flag holds for that command only
    from transformers.utils import logging as hf_logging

    hf_logging.enable_progress_bar()
    assert main(["bench", str(d), "--data", str(data), "--batch-size", "4", "--latency-runs",
                 "2", "--json", "--no-progress"]) == 0
    assert hf_logging.is_progress_bar_enabled()
    assert os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") == env_before


def test_cli_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert main(["bench", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    empty = tmp_path / "e.txt"
    empty.write_text("")
    assert main(["bench", str(save_tiny_hf(tmp_path / "m", "embedding")), "--data",
                 str(empty)]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "manifest.json is missing" in capsys.readouterr().err


@pytest.mark.parametrize("args, words", [
    (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
    (["--latency-runs", "0"], "--latency-runs must be at least 1"),
    (["--n-eval", "-3"], "--n-eval must be at least 1"),
    (["--backend", "auto", "--max-drop", "2"], "--max-drop must be in [0, 1)"),
    (["--backend", "auto", "--max-drop", "-1"], "--max-drop must be in [0, 1)"),
    (["--backend", "auto", "--max-drop", "nan"], "--max-drop must be in [0, 1)"),
])
def test_cli_bench_bounds_are_refused_up_front(args, words, capsys):
    # checked before the model is even looked up: the unknown name is not what is reported
    assert main(["bench", "no-such-model", *args]) == 2
    err = capsys.readouterr().err
    assert words in err and "no-such-model" not in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_max_drop_is_refused_alike_by_bench_choose_and_optimize(tmp_path, capsys, texts):
    from reactinfer.core.errors import UserError
    from reactinfer.measure import choose_backend

    assert main(["optimize", "no-such-model", "--max-drop", "2", "-o", str(tmp_path / "o"),
                 "--no-progress"]) == 2
    optimize_err = capsys.readouterr().err.strip()
    assert main(["bench", "no-such-model", "--backend", "auto", "--max-drop", "2"]) == 2
    bench_err = capsys.readouterr().err.strip()
    assert optimize_err.split("error: ")[1] == bench_err.split("error: ")[1]
    with pytest.raises(UserError, match=r"must be in \[0, 1\)"):
        choose_backend(tiny_handle("embedding"), texts, max_drop=-1)


def test_cli_info_and_models_and_backends(tmp_path, capsys):
    ri.Artifact.save(tiny_handle("embedding"), tmp_path / "a")
    assert main(["info", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    assert "every file matches its sha256" in out and "embedding" in out
    assert main(["models", "--json"]) == 0
    names = [m["name"] for m in json.loads(capsys.readouterr().out)]
    assert names == ["minilm", "smollm2", "efficientnet-lite0", "resnet18-digits"]
    assert main(["backends", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "torch" in [b["name"] for b in rows]
    # the engine configurations auto selection and the planner try, as each backend declares
    from reactinfer.core.backend import engine_configs

    assert [c["name"] for b in rows for c in b["configs"]] == [c.name for c in engine_configs()]
    assert main(["backends"]) == 0
    assert "config openvino int8: precision=int8" in capsys.readouterr().out
    # a reader that left (`| head -1`) is no error and prints no traceback: here the pipe
    # is closed before the command has written anything
    p = subprocess.Popen([sys.executable, "-m", "reactinfer", "info", str(tmp_path / "a")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p.stdout.close()
    err = p.stderr.read()
    assert p.wait(timeout=120) == 0 and "Traceback" not in err, err


def test_bench_default_eval_sample_is_small_for_lms_and_recorded(tmp_path):
    # issue #14: `react bench smollm2` evaluated all 1,000 texts by default (~25 min)
    from reactinfer.data import texts_for
    from reactinfer.measure import format_report
    from reactinfer.tasks import get_task

    lm = get_task("causal-lm")

    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"open the archive and close it when done {i}"
                              for i in range(800)))
    available = len(texts_for("eval", str(data)))
    assert available > lm.default_n_eval
    kw = {"batch_size": 8, "data": str(data), "gen_tokens": 0, "progress": False}
    r = ri.bench(tiny_handle("causal-lm"), **kw)
    assert r["n_eval"] == lm.default_n_eval == 64
    assert r["n_eval_available"] == available and r["n_eval_default"] is True
    assert r["latency_ms"]["n"] == lm.latency_runs
    assert f"64 of {available}" in format_report(r) and "--n-eval all" in format_report(r)
    r = ri.bench(tiny_handle("causal-lm"), n_eval="all", latency_runs=2, **kw)
    assert r["n_eval"] == available and r["n_eval_default"] is False
    r = ri.bench(tiny_handle("embedding"), latency_runs=2, **kw)  # encoders: every text
    assert r["n_eval"] == available and not r["n_eval_default"]
    with pytest.raises(UserError, match="--n-eval"):
        ri.bench(tiny_handle("causal-lm"), n_eval=0, **kw)


def _bench_cli(tmp_path, *extra):
    d = save_tiny_hf(tmp_path / "lm", "causal-lm")
    data = tmp_path / "d.txt"
    data.write_text("\n".join(f"return a new list of items {i}" for i in range(40)))
    return main(["bench", str(d), "--data", str(data), "--batch-size", "4",
                 "--latency-runs", "2", "--json", *extra])


@pytest.mark.slow  # `--backend auto` converts and measures every engine
def test_cli_bench_shows_progress_for_each_phase_on_stderr(tmp_path, capsys):
    assert _bench_cli(tmp_path) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)  # stdout holds the JSON only
    assert report["n_eval_available"] == report["n_eval"]
    for phase in ("prepare + warm-up", "eval", "latency @ batch 1", "generation"):
        assert f"[torch] {phase}" in captured.err, phase
    assert _bench_cli(tmp_path / "auto", "--backend", "auto") == 0  # one more phase
    assert "choosing a backend for" in capsys.readouterr().err
    assert _bench_cli(tmp_path / "quiet", "--no-progress", "--n-eval", "all") == 0
    captured = capsys.readouterr()
    assert "[torch]" not in captured.err and json.loads(captured.out)["n_eval"] > 0
    assert main(["bench", "minilm", "--n-eval", "most"]) == 2  # refused before loading
    err = capsys.readouterr().err
    assert "--n-eval must be at least 1 or 'all'" in err and len(err.strip().splitlines()) == 1


def test_more_cli_numbers_and_paths_are_checked_before_any_work(tmp_path, capsys):
    (tmp_path / "recipe.json").write_text('[{"type": "PruneFFN", "keep": 0.5}]')
    (tmp_path / "afile").write_text("x")
    cases = [
        (["compress", "no-such-model", "--recipe", str(tmp_path / "recipe.json"), "-o",
          str(tmp_path / "o"), "--n-eval", "-5"], "--n-eval must be at least 1"),
        (["optimize", "minilm", "--max-trials", "0", "-o", str(tmp_path / "p")],
         "--max-trials must be at least 1"),
        (["optimize", "minilm", "--target", "-1", "-o", str(tmp_path / "q")], "--target"),
        (["optimize", "minilm", "-o", str(tmp_path / "afile")], "is a file"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "p").exists() and not (tmp_path / "q").exists()  # nothing written
