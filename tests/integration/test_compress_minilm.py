"""Real minilm: one structured prune + one quantization, saved and reloaded."""
import numpy as np
import pytest

from reactinfer import compress, load
from reactinfer.compression import PruneFFN, QuantizeDynamicInt8
from reactinfer.core.artifact import Artifact
from reactinfer.data import texts_for
from reactinfer.tasks import get_task, tokenize

pytestmark = pytest.mark.integration


def test_minilm_prune_ffn_then_int8_reloads(minilm, tmp_path):
    h = minilm
    p = compress(h, [PruneFFN(keep=0.75, importance="activation"),
                     QuantizeDynamicInt8(per_channel=True)])
    assert p.model.config.intermediate_size == 1152
    texts = texts_for("eval", limit=64)
    task = get_task("embedding")
    ref = task.evaluate(h.runner(), h.tokenizer, texts, 16, h.max_length)
    cand = task.evaluate(p.runner(), p.tokenizer, texts, 16, p.max_length)
    q = task.compare(ref, cand)
    assert q["mean_cosine"] > 0.8  # a real but bounded loss without recovery training
    Artifact.save(p, tmp_path / "a")
    back = load(tmp_path / "a")
    batch = tokenize(h.tokenizer, texts[:8], h.max_length)
    assert np.array_equal(back.runner()(batch), p.runner()(batch))
    assert back.checkpoint.config.intermediate_size == 1152  # the float weights replayed
