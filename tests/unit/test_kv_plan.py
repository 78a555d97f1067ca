"""The KV cache planned from memory (backends/kv_plan.py): sequences × tokens per sequence
within a budget, never past the trained context, fewer sequences rather than very short
ones; the KV bytes of a token from the GGUF's head widths; and the start-up line."""
from __future__ import annotations

import pytest

from reactinfer.backends.kv_plan import (
    KV_MEMORY_FRACTION,
    MIN_SEQ_CONTEXT,
    UNKNOWN_MEMORY_BUDGET,
    GiB,
    available_memory,
    kv_budget,
    kv_bytes_per_token,
    plan_kv,
)
from reactinfer.core.errors import UserError

BPT = 23040  # 30 layers × 3 KV heads × (64 + 64) × 2 bytes


def test_the_bytes_of_a_token_follow_the_head_widths_of_the_metadata():
    assert kv_bytes_per_token(30, 9, 3, 576) == BPT  # head width 576 / 9 = 64
    # a head wider than embedding / heads (Gemma 3 270m: 640 wide, 4 heads of 256)
    meta = {"general.architecture": "gemma3", "gemma3.attention.key_length": 256,
            "gemma3.attention.value_length": 256}
    assert kv_bytes_per_token(18, 4, 1, 640, meta) == 18 * 1 * 512 * 2
    assert kv_bytes_per_token(30, 9, 3, 576, cache_type="f32") == 2 * BPT


def test_the_whole_context_for_every_sequence_when_the_budget_holds_it():
    p = plan_kv(BPT, 1 * GiB, trained=8192, slots=8, want=2048)
    assert (p.slots, p.n_ctx_seq) == (8, 2048) and p.bytes == 8 * 2048 * BPT
    # never more than the trained context, whatever is asked and whatever memory there is
    p = plan_kv(BPT, 64 * GiB, trained=8192, slots=8, want=100000)
    assert (p.slots, p.n_ctx_seq) == (8, 8192)
    assert plan_kv(BPT, 64 * GiB, trained=8192, slots=8).n_ctx_seq == 8192  # want: all


@pytest.mark.parametrize("budget_mib", [30, 60, 100, 200, 360, 1000])
def test_the_plan_fits_the_budget(budget_mib):
    p = plan_kv(BPT, budget_mib << 20, trained=8192, slots=8, want=2048)
    assert p.bytes <= budget_mib << 20 and 1 <= p.slots <= 8 and p.n_ctx_seq <= 2048


def test_a_short_budget_shortens_sequences_then_plans_fewer_of_them():
    # 8 × 1500 tokens fit: shorter sequences (rounded down to 256), all eight of them
    p = plan_kv(BPT, 8 * 1500 * BPT, trained=8192, slots=8, want=2048)
    assert (p.slots, p.n_ctx_seq) == (8, 1280)
    # 8 × 600 would fit, but that is under MIN_SEQ_CONTEXT: 4 sequences of 1024 or more
    p = plan_kv(BPT, 8 * 600 * BPT, trained=8192, slots=8, want=2048)
    assert p.slots == 4 and MIN_SEQ_CONTEXT <= p.n_ctx_seq <= 2048
    # one sequence of what there is, down to a useful minimum; below it, a clear error
    p = plan_kv(BPT, 300 * BPT, trained=8192, slots=8, want=2048)
    assert (p.slots, p.n_ctx_seq) == (1, 256)
    with pytest.raises(UserError, match="--kv-memory"):
        plan_kv(BPT, 10 * BPT, trained=8192, slots=8, want=2048)
    # a model trained on a short context: that context is the floor, not MIN_SEQ_CONTEXT
    p = plan_kv(128, 2 * 64 * 128, trained=128, slots=8, want=64)
    assert (p.slots, p.n_ctx_seq) == (2, 64)


def test_the_budget_is_the_users_else_a_share_of_the_memory_available():
    assert kv_budget(1.5, 10 * GiB) == int(1.5 * GiB)
    assert kv_budget(None, 8 * GiB) == int(KV_MEMORY_FRACTION * 8 * GiB)
    assert kv_budget(None, None) == UNKNOWN_MEMORY_BUDGET
    avail = available_memory()
    assert avail is None or avail > 0


def test_the_start_up_line_says_the_plan_and_the_memory():
    p = plan_kv(BPT, int(0.5 * GiB), trained=8192, slots=8, want=2048, available=20 * GiB)
    assert p.describe() == ("KV cache: 8 sequences × 2048 tokens = 0.35 GiB (f16, 23040 "
                            "B/token); budget 0.50 GiB of 20.00 GiB available")
    one = plan_kv(128, 1 << 20, trained=128, slots=1)
    assert "1 sequence × 128 tokens (the model's trained context)" in one.describe()
    assert "memory available unknown" in one.describe()
    assert one.as_dict()["bytes"] == 128 * 128


def test_the_served_engine_follows_the_plan_and_prints_it(tmp_path, capsys):
    pytest.importorskip("llama_cpp")
    from reactinfer.backends.convert import to_backend
    from reactinfer.serving.config import ServeConfig
    from reactinfer.serving.decode import engine_of
    from reactinfer.serving.ladder import ServiceTime, Variant
    from reactinfer.testing import tiny_handle

    h = to_backend(tiny_handle("causal-lm"), "llama.cpp", outtype="f32", workdir=tmp_path)
    runner = h.runner()
    bpt = runner.decode_engine(1, 8).kv_bytes_per_token
    capsys.readouterr()
    v = Variant("v", h, 1.0, ServiceTime())
    eng = engine_of(v, config=ServeConfig(context=64, kv_memory_gb=2 * 64 * bpt / GiB))
    assert (eng.slots, eng.n_ctx) == (2, 64) and v.gen.slots == 2
    assert runner.serve_context == 64  # what requests are checked against
    err = capsys.readouterr().err
    assert "react serve: v: KV cache: 2 sequences × 64 tokens" in err
    assert engine_of(v) is eng and capsys.readouterr().err == ""  # made (and said) once
