"""Sharding, pipeline stages and ensembles on a real local Ray (one start per module)."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray")

from reactinfer.cluster.aggregate import run_ensemble  # noqa: E402
from reactinfer.cluster.pipeline import run_pipeline  # noqa: E402
from reactinfer.cluster.shard import WorkerSpec, run_sharded  # noqa: E402
from reactinfer.tasks.base import run_in_order  # noqa: E402
from reactinfer.testing import tiny_handle, tiny_texts  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ray_local")]  # conftest.py


def single(handle, texts):
    return run_in_order(handle.runner(), handle.tokenizer, texts, 16, handle.max_length)


def test_capability_weights_follow_measured_speed():
    h = tiny_handle("embedding")
    texts = tiny_texts(30) * 20  # 600 rows
    # A real difference in capability: batching 32 rows vs one row at a time.
    workers = [WorkerSpec(num_cpus=1, batch_size=32), WorkerSpec(num_cpus=1, batch_size=1)]
    rep = run_sharded(h, texts, workers, probe_rows=32)
    caps = [w["capability_rows_per_s"] for w in rep["workers"]]
    rows = [w["rows"] for w in rep["workers"]]
    assert sum(rows) == len(texts)
    assert all(c > 0 for c in caps)  # measured, not assumed (which is faster is the CPU's)
    expected = np.array(caps) / sum(caps) * len(texts)
    assert np.all(np.abs(np.array(rows) - expected) <= 1.0)
    np.testing.assert_allclose(rep["outputs"], single(h, texts), atol=1e-5)
    assert all(w["finish_s"] > 0 for w in rep["workers"]) and rep["balance"] >= 1.0


def test_pipeline_stages_give_unsplit_outputs():
    h = tiny_handle("embedding", layers=4)
    texts = tiny_texts(40)
    rep = run_pipeline(h, texts, stages=2, micro_batch=8)
    assert [s["layers"] for s in rep["stages"]] == [2, 2]
    np.testing.assert_allclose(rep["embeddings"], single(h, texts), atol=1e-5)


def test_ensemble_across_workers():
    texts = tiny_texts(20)
    a, b = tiny_handle("embedding", seed=0), tiny_handle("embedding", seed=1)
    rep = run_ensemble([a, b], texts, "mean")
    ea, eb = single(a, texts), single(b, texts)
    np.testing.assert_allclose(rep["members"][0], ea, atol=1e-5)
    m = (ea + eb) / 2
    np.testing.assert_allclose(rep["output"], m / np.linalg.norm(m, axis=1, keepdims=True),
                               atol=1e-5)
    assert rep["variants"][0] != rep["variants"][1]
    ca, cb, cc = (tiny_handle("classification", seed=s) for s in (0, 1, 2))
    vote = run_ensemble([ca, cb, cc], texts, "vote")["output"]
    assert vote.shape == (20,) and set(vote.tolist()) <= {0, 1, 2}
