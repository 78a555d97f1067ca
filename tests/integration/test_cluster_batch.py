"""`react batch` on a real local Ray: order, completeness, equality with a single
process, bad rows, resuming, and a worker killed mid-run."""
from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from reactinfer.cluster.batch import parts_dir_for, run_batch  # noqa: E402
from reactinfer.tasks.base import run_in_order  # noqa: E402
from reactinfer.testing import tiny_handle, tiny_texts  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_local")]  # conftest.py


@pytest.fixture(scope="module")
def handle():
    return tiny_handle("embedding")


def reference(handle, texts):
    return run_in_order(handle.runner(), handle.tokenizer, texts, 16, handle.max_length)


def read(path):
    t = pq.read_table(path)
    return t.column("id").to_pylist(), t.column("embedding").to_pylist(), \
        t.column("error").to_pylist(), t.column("variant").to_pylist()


def test_order_errors_equality_and_resume(tmp_path, handle):
    texts = tiny_texts(90)
    lines = [t.encode() for t in texts]
    lines[5] = b""                                   # empty
    lines[17] = b"caf\xe9 latin-1 bytes"             # not UTF-8
    lines[40] = ("word " * 50).encode()              # too long for max_chars=200
    (tmp_path / "in.txt").write_bytes(b"\n".join(lines) + b"\n")
    kw = dict(workers=2, batch_size=8, block_rows=16, max_chars=200, progress=False)
    res = run_batch(handle, tmp_path / "in.txt", tmp_path / "out.parquet", **kw)
    ids, emb, err, variant = read(tmp_path / "out.parquet")
    assert res.rows == 90 and ids == list(range(90))
    bad = {i: e for i, e in enumerate(err) if e is not None}
    assert sorted(bad) == [5, 17, 40]
    assert "empty" in bad[5] and "UTF-8" in bad[17] and "too long" in bad[40]
    assert all(emb[i] is None for i in bad)
    good = [i for i in range(90) if i not in bad]
    ref = reference(handle, [texts[i] for i in good])
    got = np.array([emb[i] for i in good], dtype=np.float32)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    assert set(variant) == {res.variant} and res.variant.startswith("tiny-embedding@")
    assert res.errors == 3 and res.blocks == 6 and res.blocks_skipped == 0

    # resuming: everything done -> nothing runs; a lost part -> only that block runs
    again = run_batch(handle, tmp_path / "in.txt", tmp_path / "out.parquet", **kw)
    assert again.blocks_skipped == 6
    (parts_dir_for(tmp_path / "out.parquet") / "part-000002.parquet").unlink()
    third = run_batch(handle, tmp_path / "in.txt", tmp_path / "out.parquet", **kw)
    assert third.blocks_skipped == 5
    ids3, emb3, err3, _ = read(tmp_path / "out.parquet")
    assert ids3 == ids and err3 == err
    np.testing.assert_allclose(np.array([emb3[i] for i in good]), got, atol=1e-6)
    # a different block size is a different run: refuse rather than mix parts
    with pytest.raises(ValueError, match="different run"):
        run_batch(handle, tmp_path / "in.txt", tmp_path / "out.parquet", block_rows=7,
                  progress=False)


def _map_workers():
    import psutil

    me = psutil.Process()
    out = []
    for p in me.children(recursive=True):
        try:
            if "MapWorker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_killed_actor_is_retried_without_losing_rows(tmp_path, handle):
    n, block = 8000, 400
    texts = [tiny_texts(30)[i % 30] for i in range(n)]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n")
    parts = parts_dir_for(tmp_path / "k.parquet")
    killed: dict[str, int] = {}

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            done = len(list(parts.glob("part-*.parquet"))) if parts.exists() else 0
            workers = _map_workers()
            if done >= 1 and workers:
                killed["pid"], killed["parts_done"] = workers[0].pid, done
                os.kill(workers[0].pid, signal.SIGKILL)  # a real crash of a process we started
            time.sleep(0.02)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    res = run_batch(handle, tmp_path / "in.txt", tmp_path / "k.parquet", workers=2,
                    batch_size=32, block_rows=block, progress=False)
    t.join(timeout=5)
    assert killed, "no worker was killed"
    assert killed["parts_done"] < n // block, "the run finished before the kill"
    ids, emb, err, _ = read(tmp_path / "k.parquet")
    assert res.rows == n and ids == list(range(n)) and not any(err)
    uniq = reference(handle, tiny_texts(30))
    np.testing.assert_allclose(np.array(emb, dtype=np.float32), uniq[np.arange(n) % 30],
                               atol=1e-5)


def test_cli_jsonl_and_parquet_inputs(tmp_path, capsys):
    from reactinfer.cli.main import main
    from reactinfer.testing import save_tiny_hf

    model = save_tiny_hf(tmp_path / "tiny", "embedding")
    texts = tiny_texts(12)
    rows = [json.dumps({"text": t}) for t in texts]
    rows[3] = "{not json"
    rows[6] = json.dumps({"body": "no text field"})
    (tmp_path / "in.jsonl").write_text("\n".join(rows) + "\n")
    rc = main(["batch", str(model), "--input", str(tmp_path / "in.jsonl"), "--output",
               str(tmp_path / "j.parquet"), "--workers", "1", "--json", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 12 and summary["errors"] == 2
    ids, emb, err, _ = read(tmp_path / "j.parquet")
    assert ids == list(range(12)) and err[3].startswith("not valid JSON") and "field" in err[6]

    table = pa.table({"body": pa.array(texts[:5], type=pa.string())})
    pq.write_table(table, tmp_path / "in.parquet")
    # a missing column is the user's mistake: exit code 2 with a one-line message
    assert main(["batch", str(model), "--input", str(tmp_path / "in.parquet"),
                 "--output", str(tmp_path / "q.parquet"), "--no-progress"]) == 2
    assert "--column" in capsys.readouterr().err


def _image_folder(root):
    """3 classes of tiny PNGs, one JPEG, a text file and a hidden file."""
    from PIL import Image

    from reactinfer.testing import tiny_images

    for i, img in enumerate(tiny_images(9, seed=2)):
        d = root / ("cat", "dog", "owl")[i % 3]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(d / f"{i}.{'jpg' if i == 4 else 'png'}")
    (root / "dog" / "notes.txt").write_text("not an image")
    jpg = (root / "dog" / "4.jpg").read_bytes()
    (root / "owl" / "cut.jpg").write_bytes(jpg[:len(jpg) // 2])  # truncated: skipped too
    return root


def test_image_folder_gives_paths_logits_and_top5(tmp_path):
    from reactinfer.core.images import open_image
    from reactinfer.testing import tiny_image_handle

    h = tiny_image_handle()
    folder = _image_folder(tmp_path / "images")
    res = run_batch(h, folder, tmp_path / "img.parquet", workers=2, batch_size=4, block_rows=4,
                    progress=False)
    assert res.rows == 9 and res.skipped == 2 and res.errors == 0 and res.column == "logits"
    t = pq.read_table(tmp_path / "img.parquet")
    assert t.column_names == ["id", "path", "logits", "top5_ids", "top5_labels", "variant",
                              "error"]
    paths = t.column("path").to_pylist()
    assert t.column("id").to_pylist() == list(range(9)) and paths == sorted(paths)
    assert paths[0] == "cat/0.png" and "dog/4.jpg" in paths and "owl/cut.jpg" not in paths
    logits = np.array(t.column("logits").to_pylist(), dtype=np.float32)  # (9, 10)
    ref = h.runner()(h.tokenizer([open_image(folder / p) for p in paths]))
    np.testing.assert_allclose(logits, ref, atol=1e-5)
    ids = t.column("top5_ids").to_pylist()
    assert ids == np.argsort(-ref, axis=1, kind="stable")[:, :5].tolist()
    assert t.column("top5_labels").to_pylist() == [[str(i) for i in row] for row in ids]


def test_cli_image_folder_and_empty_folder(tmp_path, capsys):
    from reactinfer.cli.main import main

    folder = _image_folder(tmp_path / "images")
    rc = main(["batch", "resnet18-digits", "--input", str(folder), "--json", "--no-progress"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == 9 and summary["skipped"] == 2 and summary["errors"] == 0
    labels = pq.read_table(tmp_path / "images.out.parquet").column("top5_labels").to_pylist()
    assert all(len(row) == 5 and set(row) <= set("0123456789") for row in labels)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    assert main(["batch", "resnet18-digits", "--input", str(tmp_path / "empty"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no images" in err[0]
