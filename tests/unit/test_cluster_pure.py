"""Pure parts of reactinfer.cluster (no Ray): input reading, shares, gather, ensembles,
compression, and pipeline stage splitting run in-process."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from reactinfer.cluster.aggregate import (
    compress_embeddings,
    compression_report,
    decompress_embeddings,
    ensemble,
    ordered_gather,
)
from reactinfer.cluster.shard import capability_shares
from reactinfer.core.errors import UserError


def test_import_reactinfer_does_not_import_ray():
    code = ("import sys, reactinfer, reactinfer.cluster, reactinfer.cluster.batch, "
            "reactinfer.cluster.aggregate, reactinfer.cluster.shard, reactinfer.cluster.pipeline;"
            " print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_documented_names_import_from_the_package_without_ray():
    import reactinfer.cluster as cluster

    code = ("import sys; from reactinfer.cluster import " + ", ".join(cluster.__all__) +
            "; print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    blob = cluster.compress_embeddings(np.eye(3, dtype=np.float32), "float16")
    np.testing.assert_array_equal(cluster.decompress_embeddings(blob), np.eye(3))


def test_read_input_text_jsonl_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    from reactinfer.cluster.batch import read_input

    (tmp_path / "a.txt").write_bytes(b"first\r\n\n  \nbad \xff\nlast\n")
    texts, errors = read_input(tmp_path / "a.txt", max_chars=100)
    assert texts == ["first", None, None, None, "last"]
    assert errors[1] == errors[2] == "empty text" and "UTF-8" in errors[3]
    (tmp_path / "b.jsonl").write_text('{"text": "ok"}\n{"text": 3}\n\n[1]\n{"text": "' + "x" * 20
                                      + '"}\n')
    texts, errors = read_input(tmp_path / "b.jsonl", max_chars=10)
    assert texts == ["ok", None, None, None, None]
    assert [e is None for e in errors] == [True, False, False, False, False]
    assert "too long" in errors[4]
    pq.write_table(pa.table({"t": ["a b", None]}), tmp_path / "c.parquet")
    assert read_input(tmp_path / "c.parquet", column="t")[1] == [None, "missing text (null)"]
    with pytest.raises(UserError, match="--column"):
        read_input(tmp_path / "c.parquet", column="text")
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="no rows"):
        read_input(tmp_path / "empty.txt")


@pytest.mark.parametrize("caps,n", [([1, 1], 10), ([3, 1], 100), ([2.5, 1.0, 0.5], 7),
                                    ([100.0, 1.0], 3)])
def test_capability_shares_are_proportional_and_complete(caps, n):
    shares = capability_shares(caps, n)
    assert sum(shares) == n and all(s >= 0 for s in shares)
    exact = np.array(caps) / sum(caps) * n
    assert np.all(np.abs(np.array(shares) - exact) < 1.0)  # largest remainder: within one row


def test_capability_shares_rejects_nonpositive():
    with pytest.raises(UserError):
        capability_shares([1.0, 0.0], 5)


def test_ordered_gather_orders_and_refuses_gaps():
    vals = np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 3), np.float32)
    shards = [(np.array([7, 8, 9]), vals[7:]), (np.array([0, 1, 2, 3]), vals[:4]),
              (np.array([4, 5, 6]), vals[4:7])]
    np.testing.assert_array_equal(ordered_gather(shards, 10), vals)
    with pytest.raises(RuntimeError, match="missing \\[4, 5, 6\\]"):
        ordered_gather(shards[:2], 10)
    with pytest.raises(RuntimeError, match="duplicated \\[0"):
        ordered_gather(shards + [(np.array([0]), vals[:1])], 10)


def test_ensemble_mean_and_vote():
    a = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    b = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    m = ensemble([a, b], "mean", "embedding")
    np.testing.assert_allclose(m[0], [2 ** -0.5, 2 ** -0.5], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-6)
    l1 = np.array([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    l2 = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    l3 = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert ensemble([l1, l2, l3], "vote", "classification").tolist() == [0, 2]
    # a 1-1 tie is broken by mean probability: model 2 is far more confident in class 2
    assert ensemble([l1, l2], "vote", "classification").tolist() == [0, 2]
    with pytest.raises(UserError):
        ensemble([a, b], "vote", "embedding")
    with pytest.raises(UserError, match="shape"):
        ensemble([a, np.ones((2, 3))], "mean", "embedding")


def test_compression_roundtrip_ratio_and_quality():
    pytest.importorskip("zstandard")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 64)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(decompress_embeddings(compress_embeddings(x, "float32")), x)
    rep = compression_report(x)
    assert rep["float32"]["mean_cosine"] == pytest.approx(1.0, abs=1e-7)
    assert rep["float16"]["ratio"] > 1.8 and rep["float16"]["min_cosine"] > 0.99999
    assert rep["int8"]["ratio"] > 3.0 and rep["int8"]["min_cosine"] > 0.999
    assert rep["int8"]["mean_cosine"] < rep["float16"]["mean_cosine"]  # the cost is real
    json.dumps(rep)  # reportable
    with pytest.raises(UserError):
        compress_embeddings(x, "int4")
    with pytest.raises(UserError):
        decompress_embeddings(b"nope" + bytes(10))


def test_pipeline_stages_in_process_equal_unsplit_model():
    from reactinfer.cluster.pipeline import StageWorker, split_stages
    from reactinfer.tasks.base import tokenize
    from reactinfer.testing import tiny_handle, tiny_texts

    h = tiny_handle("embedding", layers=4)
    batch = tokenize(h.tokenizer, tiny_texts(12), h.max_length)
    ref = h.runner()(batch)
    for n in (1, 2, 4):
        stages = split_stages(h, n)
        assert [len(s.encoder.layer) for s in stages] == [4 // n] * n
        x = dict(batch, idx=np.arange(12))
        for k, s in enumerate(stages):
            x = StageWorker(s, k == 0, k == n - 1, threads=1).forward(x)
        np.testing.assert_allclose(x["embeddings"], ref, atol=1e-6)
    with pytest.raises(UserError, match="between 1"):
        split_stages(h, 5)
    with pytest.raises(UserError, match="embedding"):
        split_stages(tiny_handle("causal-lm"), 2)


def test_default_blocks_give_every_worker_work_and_resume_keeps_them(tmp_path):
    from reactinfer.cluster.batch import RUN_FILE, _auto_block_rows

    parts = tmp_path / "out.parquet.parts"
    assert _auto_block_rows(parts, 1000, 2) == 500        # two workers, two blocks
    assert _auto_block_rows(parts, 5000, 2) == 1024       # plenty of blocks already
    assert _auto_block_rows(parts, 3, 8) == 1             # more workers than rows
    parts.mkdir()
    (parts / RUN_FILE).write_text(json.dumps({"block_rows": 500}))
    assert _auto_block_rows(parts, 1000, 4) == 500        # resuming: the old layout stands


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_blocking_ray_serve_waits_for_the_signal_and_names_it(sig):
    """`react serve --ray` blocks here; the signal is noted (not raised in the middle of
    Ray's teardown), handlers are put back, and a repeated SIGTERM is then ignored."""
    import os
    import signal
    import threading
    import time

    from reactinfer.cluster.serve_ray import _wait_for_stop_signal

    before = signal.getsignal(signal.SIGINT)
    term_before = signal.getsignal(signal.SIGTERM)
    signum = getattr(signal, sig)

    def send_once_handled() -> None:  # only once the waiter's handler is in place
        deadline = time.monotonic() + 30
        while signal.getsignal(signum) in (before, term_before) and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signum)

    sender = threading.Thread(target=send_once_handled, daemon=True)
    sender.start()
    try:
        assert _wait_for_stop_signal() == sig
        assert signal.getsignal(signal.SIGINT) is before
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        sender.join(timeout=30)
        signal.signal(signal.SIGTERM, term_before)


def test_image_rows_that_cannot_be_read_say_so_and_spare_their_neighbours(tmp_path):
    from PIL import Image

    from reactinfer.cluster.worker import run_rows
    from reactinfer.testing import tiny_image_handle, tiny_images

    h = tiny_image_handle()
    paths = []
    for i, img in enumerate(tiny_images(3)):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    paths.insert(1, str(tmp_path / "gone.png"))  # deleted between listing and running
    values, errors = run_rows(h, paths, 4)
    assert errors[1] is not None and errors[1].startswith("cannot read image")
    assert values[1] is None and all(values[i].shape == (10,) for i in (0, 2, 3))
    assert errors.count(None) == 3
