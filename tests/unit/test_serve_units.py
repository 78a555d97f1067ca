"""Pure parts of the server: service-time curves, the ladder, admission, cache, metrics,
config checks, and the load generator's arrival schedule and loopback guard."""
from __future__ import annotations

import asyncio
import math
import time
from types import SimpleNamespace

import pytest

from reactinfer.core.errors import UserError
from reactinfer.serving.batcher import GATHER, Batcher, Rejected, Request
from reactinfer.serving.cache import ResponseCache, normalise
from reactinfer.serving.config import ServeConfig
from reactinfer.serving.ladder import (
    Calibration,
    Job,
    Ladder,
    ServiceTime,
    Variant,
    variant_quality,
)
from reactinfer.serving.loadtest import arrival_times, check_loopback, summarise
from reactinfer.serving.metrics import Metrics


def _variant(name: str, per_batch: dict[int, float], quality: float = 1.0) -> Variant:
    st = ServiceTime(alpha=0.5)
    for n, s in per_batch.items():
        st.set(n, s)
    handle = SimpleNamespace(task="embedding", tokenizer=SimpleNamespace(eos_token_id=None))
    return Variant(name, handle, quality, st)  # type: ignore[arg-type]


def test_service_time_interpolates_extrapolates_and_learns():
    st = ServiceTime(alpha=0.5)
    assert st.predict(4) == 0.0  # nothing measured yet: no prediction
    st.set(1, 0.010)
    st.set(8, 0.024)
    assert st.predict(1) == pytest.approx(0.010)
    assert st.predict(4) == pytest.approx(0.010 + (0.014 * 3 / 7))
    assert st.predict(16) == pytest.approx(0.048)  # per item beyond the largest size
    st.observe(8, 0.100)  # a slow live batch pulls the estimate up by alpha
    assert st.predict(8) == pytest.approx(0.5 * 0.024 + 0.5 * 0.100)
    assert st.predict(1) == pytest.approx(0.010)  # other sizes keep their points


def _ladder(**kw) -> Ladder:
    big = _variant("big", {1: 0.010, 8: 0.040})
    small = _variant("small", {1: 0.002, 8: 0.008}, quality=0.9)
    args = dict(slo_s=0.1, max_batch=8, max_delay_s=0.0, down_headroom=0.8, up_ratio=0.5,
                up_hold_s=1.0) | kw
    return Ladder([small, big], **args)


def test_ladder_orders_by_cost_and_predicts_edf_batches():
    ladder = _ladder()
    ladder.order_by_cost()
    assert [v.name for v in ladder.variants] == ["big", "small"] and ladder.active == 1
    ladder.active = 0
    now = 0.0
    jobs = [Job(now + 0.1, items=4), Job(now + 0.1, items=4), Job(now + 0.1, items=1)]
    done = ladder.finish_times(0, jobs, busy_s=0.0)
    # the first two fill one batch of 8; the third waits for it
    assert done[0] == done[1] == pytest.approx(0.040)
    assert done[2] == pytest.approx(0.050)


def test_ladder_steps_down_at_once_and_up_only_after_hold():
    ladder = _ladder()
    ladder.order_by_cost()
    ladder.active = 0
    heavy = [Job(0.1, items=8) for _ in range(3)]  # 3 full batches: 120 ms on big, 24 on small
    assert ladder.update(heavy, now=0.0) == 1
    light: list[Job] = []
    assert ladder.update(light, now=0.1) == 1  # low load, but the hold has not passed
    assert ladder.update(light, now=0.6) == 1
    assert ladder.update(light, now=1.2) == 0  # held for 1.1 s: step up
    # inside the hysteresis band (fits big, but not under up_ratio * SLO) nothing moves
    ladder.active = 1
    band = [Job(10.0, items=8), Job(10.0, items=8)]  # 80 ms on big: > 50 ms
    for t in (2.0, 3.5, 5.0):
        assert ladder.update(band, now=t) == 1
    assert [(a, b) for _, a, b in ladder.switches] == [(0, 1), (1, 0)]


def test_without_an_slo_the_ladder_stays_at_its_start_and_comes_back_to_it():
    """A `react optimize` run's ladder starts at the variant the run chose. Without an SLO
    there is nothing to trade quality for: it does not climb to the slower, better
    variants above, and after a client's own deadline made it step down it comes back to
    its start, not above."""
    big = _variant("big", {1: 0.010, 8: 0.040})
    mid = _variant("mid", {1: 0.005, 8: 0.020}, quality=0.95)
    small = _variant("small", {1: 0.002, 8: 0.008}, quality=0.9)
    ladder = Ladder([big, mid, small], slo_s=math.inf, max_batch=8, max_delay_s=0.0,
                    up_hold_s=1.0, start=1)
    ladder.order_by_cost()
    assert ladder.current.name == "mid" and ladder.top == 1
    for t in (0.0, 2.0, 5.0):  # idle for long: no step up to "big"
        assert ladder.update([], now=t) == 1
    rushed = [Job(5.01, items=8) for _ in range(3)]  # a client's 10 ms deadline
    assert ladder.update(rushed, now=5.0) == 2
    assert ladder.update([], now=5.5) == 2 and ladder.update([], now=6.6) == 1
    assert ladder.update([], now=9.0) == 1
    # with an SLO, quality is traded back up to the top of the ladder
    held = Ladder([big, mid, small], slo_s=0.1, max_batch=8, max_delay_s=0.0, up_hold_s=1.0,
                  start=1)
    held.order_by_cost()
    assert held.top == 0
    held.update([], now=0.0)
    assert held.update([], now=1.5) == 0


def test_admission_refuses_when_no_variant_meets_the_deadline():
    ladder = _ladder()
    assert ladder.least_finish([], Job(0.1, items=1), busy_s=0.0) <= 0.1
    queue = [Job(0.05, items=8) for _ in range(20)]  # 160 ms even on the small variant
    assert ladder.least_finish(queue, Job(0.1, items=1), busy_s=0.0) > 0.1
    # a job with an earlier deadline goes ahead of the queue (EDF): it fits
    assert ladder.least_finish(queue, Job(0.01, items=1), busy_s=0.0) <= 0.01
    # busy time adds to every finish time
    assert ladder.least_finish(queue, Job(0.1, items=1), busy_s=0.5) == pytest.approx(
        0.5 + ladder.least_finish(queue, Job(0.1, items=1), busy_s=0.0))


def test_a_batch_gathers_beyond_max_batch_only_when_the_earliest_deadline_allows():
    """Under load the worker takes up to GATHER x max_batch queued texts (the runner still
    calls the model with max_batch at a time, sorted by token count); a request whose
    deadline the bigger batch would miss keeps batches at max_batch."""
    loop = asyncio.new_event_loop()
    try:
        for deadline_s, most in ((math.inf, GATHER * 4), (1e-6, 4)):
            ladder = _ladder()
            b = Batcher("m", ladder, ServeConfig(max_batch=4, max_delay_ms=0), Metrics())
            for _ in range(GATHER * 4):
                b.queue.items.append(Request("encode", Job(time.monotonic() + deadline_s, items=1),
                                        loop, loop.create_future(), texts=["x"]))
            batch, _ = b._next()
            assert sum(r.job.items for r in batch) == most
    finally:
        loop.close()


def test_admission_memo_follows_the_queue_and_the_worker():
    ladder = _ladder()
    b = Batcher("m", ladder, ServeConfig(slo_ms=1000, max_batch=4, max_delay_ms=0), Metrics())
    calls = []
    real = ladder.least_finish
    ladder.least_finish = lambda *a: calls.append(a) or real(*a)  # count the full predictions
    loop = asyncio.new_event_loop()
    try:
        def admit(items: int) -> float:
            req = Request("encode", Job(time.monotonic() + 1.0, items=items), loop,
                          loop.create_future(), texts=["x"] * items)
            b.admit(req)
            return req.predicted

        now = time.monotonic()
        for _ in range(5):  # refusals and admissions with the same queue: one prediction
            assert b.refusal(now + 1.0, now) is None
        first = admit(1)
        assert len(calls) == 1
        second = admit(4)  # the queue changed: predicted anew, and later
        assert len(calls) == 2 and second > first
        batch, _ = b._next()  # the worker takes a batch: busy now, the queue shorter
        assert sum(r.job.items for r in batch) <= GATHER * 4 and len(b.queue.items) < 2
        now = time.monotonic()
        job = Job(now + 1.0, items=1)
        predicted = b._least_finish(job, max(0.0, b._busy_until - now))
        edf = sorted((r.job for r in b.queue.items), key=lambda j: j.deadline)
        assert predicted == pytest.approx(real(edf, job, max(0.0, b._busy_until - now)))
        assert len(calls) == 3
    finally:
        loop.close()


def test_calibration_learns_the_quantile_of_actual_over_predicted():
    c = Calibration(quantile=0.99, window=200, min_samples=50, floor_s=0.01)
    for _ in range(49):
        c.observe(0.1, 0.3)
    assert c.factor == 1.0  # too few answers yet
    c._ratios.clear()
    for _ in range(49):
        c.observe(0.1, 0.15)
    for i in range(151):  # 200 answers: 1% take 3x the prediction, the rest 1.5x
        c.observe(0.1, 0.3 if i < 2 else 0.15)
    assert c.factor == pytest.approx(3.0)  # still inside the window's 99th percentile
    for _ in range(200):  # the slow spell leaves the window
        c.observe(0.1, 0.15)
    assert c.factor == pytest.approx(1.5)
    for _ in range(200):  # optimistic reality never makes admission looser than predicted
        c.observe(0.1, 0.05)
    assert c.factor == 1.0
    c.observe(0.001, 0.004)  # under the floor: judged against 10 ms, not 1 ms
    assert c._ratios[-1] == pytest.approx(0.4)


def test_admission_scales_its_prediction_by_the_calibration():
    ladder = _ladder()  # small variant: 2 ms for one item
    b = Batcher("m", ladder, ServeConfig(slo_ms=100), Metrics())
    loop = asyncio.new_event_loop()
    try:
        def ask(ms: float) -> None:
            b.admit(Request("encode", Job(time.monotonic() + ms / 1e3), loop,
                            loop.create_future(), texts=["x"]))

        ask(3)  # 2 ms predicted, 3 ms left: admitted
        b.queue.items.clear()
        ask(10_000)  # one request with a late deadline waits (EDF: behind the next ones)
        for _ in range(60):  # answers have been taking 4x their prediction
            b.calibration.observe(0.010, 0.040)
        assert b.calibration.factor == pytest.approx(4.0)
        with pytest.raises(Rejected) as e:
            ask(3)  # 2 ms x 4 = 8 ms > 3 ms left
        assert "predicted 8 ms" in str(e.value)
        ask(20)
        assert b.queue.items[-1].predicted == pytest.approx(0.002)  # stored uncalibrated
        # idle and still refusing: the factor from a slow spell is forgotten, not kept
        b.queue.items.clear()
        with pytest.raises(Rejected):
            ask(3)
        assert b.calibration.factor == 1.0
        ask(3)
    finally:
        loop.close()


def test_batcher_answers_429_at_once_when_the_queue_is_full():
    ladder = _ladder()
    cfg = ServeConfig(max_queue=2, slo_ms=10_000)
    b = Batcher("m", ladder, cfg, Metrics())  # worker not started: the queue stays full
    loop = asyncio.new_event_loop()
    try:
        for _ in range(2):
            b.admit(Request("encode", Job(time.monotonic() + 10), loop, loop.create_future(),
                            texts=["x"]))
        t0 = time.perf_counter()
        with pytest.raises(Rejected) as e:
            b.admit(Request("encode", Job(time.monotonic() + 10), loop, loop.create_future(),
                            texts=["x"]))
        assert e.value.status == 429 and e.value.retry_after >= 1
        assert "queue is full" in str(e.value)
        assert time.perf_counter() - t0 < 1.0  # answered without waiting for the queue
        b.draining = True
        with pytest.raises(Rejected) as e:
            b.admit(Request("encode", Job(time.monotonic() + 10), loop, loop.create_future()))
        assert e.value.status == 503
    finally:
        loop.close()


def test_cache_is_lru_and_exact():
    c = ResponseCache(2)
    c.put(("v", "a"), 1)
    c.put(("v", "b"), 2)
    assert c.get(("v", "a")) == 1  # a is now most recent
    c.put(("v", "c"), 3)  # evicts b
    assert c.get(("v", "b")) is None and c.get(("v", "c")) == 3
    assert c.get(("w", "a")) is None  # another variant never shares an answer
    assert (c.hits, c.misses) == (2, 2)
    assert normalise("  a\u0301  b\n") == normalise("\u00e1 b")
    off = ResponseCache(0)
    off.put("k", 1)
    assert off.get("k") is None and len(off) == 0


def test_metrics_text_format():
    m = Metrics()
    m.requests.inc(endpoint="/v1/embeddings", status="200")
    m.batch_size.observe(3, model="m", variant='a"b')
    m.record_quality("m", 0.9, on_time=True)
    m.record_quality("m", 1.0, on_time=False)
    text = m.render()
    assert 'react_requests_total{endpoint="/v1/embeddings",status="200"} 1' in text
    assert 'react_batch_size_bucket{model="m",variant="a\\"b",le="2"} 0' in text
    assert 'react_batch_size_bucket{model="m",variant="a\\"b",le="4"} 1' in text
    assert 'react_batch_size_count{model="m",variant="a\\"b"} 1' in text
    assert 'react_effective_quality{model="m"} 0.45' in text  # late answer counts as 0
    assert 'react_ontime_quality{model="m"} 0.9' in text
    assert "# TYPE react_batch_size histogram" in text


def test_variant_quality_from_manifest_metrics():
    h = SimpleNamespace(metrics={"quality_drop": 0.03}, transforms=(), backend="torch")
    assert variant_quality(h) == pytest.approx(0.97)
    h = SimpleNamespace(metrics={"quality": {"mean_cosine": 0.95}}, transforms=({},),
                        backend="torch")
    assert variant_quality(h) == pytest.approx(0.95)
    assert variant_quality(SimpleNamespace(metrics={}, transforms=(), backend="torch")) == 1.0
    assert variant_quality(SimpleNamespace(metrics={}, transforms=({},), backend="torch")) is None


@pytest.mark.parametrize("metrics, quality", [
    # react compress: under the step that measured it (the pruned variant)
    ({"compress": {"quality": {"mean_cosine": 0.871, "top10_recall": 0.6}, "n_eval": 100}},
     0.871),
    # react optimize: the trial's observation at the top, drop and quality both there
    ({"quality": {"mean_cosine": 0.98}, "quality_drop": 0.02, "latency_ms": {"p50": 1.0}},
     0.98),
    # a bench report saved as metrics, under its own name
    ({"bench": {"quality": {"mean_cosine": 0.9}, "quality_drop": 0.1}}, 0.9),
    # the top describes the artifact as saved: it wins over a section
    ({"quality": {"mean_cosine": 0.95}, "distill": {"best_error": 0.1},
      "compress": {"quality": {"mean_cosine": 0.8}}}, 0.95),
    # compress --no-eval, a NaN figure: nothing measured
    ({"compress": None}, None),
    ({"quality": {"mean_cosine": float("nan")}}, None),
])
def test_variant_quality_wherever_the_artifact_recorded_it(metrics, quality):
    h = SimpleNamespace(metrics=metrics, transforms=({},), backend="torch", task="embedding")
    assert variant_quality(h) == (pytest.approx(quality) if quality is not None else None)


def test_answers_of_unknown_quality_are_counted_not_skipped():
    m = Metrics()
    m.record_quality("m", 0.8, on_time=True)
    m.record_quality("m", None, on_time=True)
    text = m.render()
    assert 'react_effective_quality{model="m"} 0.8' in text
    assert 'react_unknown_quality_answers_total{model="m"} 1' in text


@pytest.mark.parametrize("bad", [dict(slo_ms=0), dict(max_batch=0), dict(long_text="cut"),
                                 dict(up_ratio=0.9, down_headroom=0.8), dict(max_delay_ms=-1),
                                 dict(admit_quantile=1.5), dict(admit_quantile=0),
                                 dict(max_image_bytes=0), dict(tpot_ms=0), dict(tpot_ms=-5)])
def test_config_refuses_bad_values(bad):
    with pytest.raises(UserError):
        ServeConfig(**bad)
    with pytest.raises(UserError, match="unknown option"):
        ServeConfig.from_kwargs(slo=5)


def test_an_image_models_body_limit_holds_one_image_in_base64():
    assert ServeConfig().image_body_limit == (20 << 20) // 3 * 4 + 4 + (1 << 20)
    assert ServeConfig(max_image_bytes=3).image_body_limit == 4 + (1 << 20)
    assert ServeConfig(max_body_bytes=1 << 30).image_body_limit == 1 << 30


def test_missing_serving_packages_are_named():
    from reactinfer.serving.config import SERVER_PACKAGES, require

    require(SERVER_PACKAGES, "react serve")  # installed here: no error
    with pytest.raises(UserError, match=r"react serve needs no_such_pkg_xyz: pip install"):
        require(("fastapi", "no_such_pkg_xyz"), "react serve")


def test_loadtest_schedule_and_loopback_guard():
    assert len(arrival_times(10, 2, "constant")) == 20
    poisson = arrival_times(200, 5, "poisson", seed=1)
    assert 800 < len(poisson) < 1200 and poisson == sorted(poisson)
    assert poisson == arrival_times(200, 5, "poisson", seed=1)
    with pytest.raises(UserError, match="at most"):
        arrival_times(1e6, 10, "poisson")
    assert check_loopback("http://127.0.0.1:8000/v1/embeddings") == \
        ("http://127.0.0.1:8000", "/v1/embeddings")
    assert check_loopback("http://localhost:9")[1] == ""
    for url in ("http://10.1.2.3:8000", "http://example.com", "ftp://127.0.0.1"):
        with pytest.raises(UserError):
            check_loopback(url)
    s = summarise([(200, 0.01, "a"), (200, 0.2, "b"), (429, 0.001, "")], 1.0, 3, 1,
                  "constant", 100, "/v1/embeddings")
    assert s["status_counts"] == {"200": 2, "429": 1}
    assert s["slo_attainment_admitted"] == 0.5 and s["slo_violations"] == 1
    assert s["variant_mix"] == {"a": 1, "b": 1}


def test_array_json_writes_numpy_rows_exactly():
    import json

    import numpy as np

    from reactinfer.serving.protocol import ArrayJSON

    y = np.random.default_rng(0).standard_normal((3, 384)).astype(np.float32)
    body = ArrayJSON({"data": [{"index": i, "embedding": row} for i, row in enumerate(y)],
                      "flat": y.reshape(-1)}).body
    back = json.loads(body)
    got = np.array([d["embedding"] for d in back["data"]], dtype=np.float32)
    assert got.tobytes() == y.tobytes()
    assert np.array(back["flat"], dtype=np.float32).tobytes() == y.tobytes()
    # shortest float32 form: smaller than json.dumps of the float64 values
    assert len(ArrayJSON(y).body) < len(json.dumps(y.tolist()))
    # what orjson does not take itself (a strided view, float64) is written as plain lists
    odd = {"strided": y[:, ::2], "f64": y[0].astype(np.float64)}
    back = json.loads(ArrayJSON(odd).body)
    assert np.array_equal(np.array(back["strided"], dtype=np.float32), y[:, ::2])
    assert np.array_equal(np.array(back["f64"]), y[0].astype(np.float64))


def test_loadtest_summary_prints():
    from reactinfer.serving.loadtest import cache_summary, format_summary

    s = summarise([(200, 0.01, "a"), (429, 0.001, "")], 1.0, 2, 1, "poisson", 100,
                  "/v1/embeddings")
    s["inputs"], s["cache"] = "unique", cache_summary((5, 10), (5, 12))
    text = format_summary(s)
    assert "2 sent" in text and "429: 1" in text and "a: 1" in text and "SLO 100 ms" in text
    assert "cache       0 hits, 2 misses (0.0% hit); inputs unique per request" in text
    s["inputs"], s["cache"] = "repeated", None
    assert "not reported by the server; inputs repeated (--repeat-inputs)" in format_summary(s)


def test_loadtest_inputs_are_unique_unless_repeated():
    from reactinfer.serving.cache import normalise
    from reactinfer.serving.loadtest import request_texts

    texts = ["open the file", "a queue  that blocks"]
    first, second = request_texts(texts, 5), request_texts(texts, 5)
    # unique within a run and across runs, as the server's cache sees them
    assert len({normalise(t) for t in first + second}) == 10
    assert first[2].startswith("open the file ")
    assert request_texts(texts, 3, repeat_inputs=True) == [texts[0], texts[1], texts[0]]
    with pytest.raises(UserError):
        request_texts([], 3)


def test_without_an_slo_requests_have_no_deadline_and_queue_up_to_the_bound():
    """Defaults (#15): no client deadline and no operator SLO mean no deadline, so only a
    full queue refuses; a stated deadline is still judged."""
    import math

    from reactinfer.serving.admission import deadline_for

    cfg = ServeConfig(max_queue=50)
    assert cfg.slo_ms is None and cfg.slo_s == math.inf
    assert deadline_for(cfg, 10.0, None) == math.inf
    assert deadline_for(cfg, 10.0, 250.0) == pytest.approx(10.25)
    assert deadline_for(ServeConfig(slo_ms=100), 10.0, None) == pytest.approx(10.1)
    ladder = _ladder()
    b = Batcher("m", ladder, cfg, Metrics())  # worker not started: the queue only grows
    loop = asyncio.new_event_loop()
    try:
        now = time.monotonic()
        for _ in range(50):  # far more work than any deadline of 100 ms would allow
            b.admit(Request("encode", Job(deadline_for(cfg, now, None), items=16), loop,
                            loop.create_future(), texts=["x"] * 16))
        with pytest.raises(Rejected, match="queue is full"):
            b.admit(Request("encode", Job(math.inf, items=1), loop, loop.create_future(),
                            texts=["x"]))
        b2 = Batcher("m", _ladder(), cfg, Metrics())
        b2.admit(Request("encode", Job(math.inf, items=16), loop, loop.create_future(),
                         texts=["x"] * 16))
        with pytest.raises(Rejected, match="deadline cannot be met"):  # stated, hopeless
            b2.admit(Request("encode", Job(deadline_for(cfg, time.monotonic(), 1e-3),
                                           items=16), loop, loop.create_future(),
                             texts=["x"] * 16))
        # the ladder keeps the best variant when nothing has a deadline
        assert ladder.update([r.job for r in b.queue.items], time.monotonic()) == 0
    finally:
        loop.close()


def test_api_key_is_checked_in_constant_time_and_never_shown(monkeypatch):
    from reactinfer.serving.auth import API_KEY_ENV, api_key_from_env, authorized, needs_key

    def scope(*headers: tuple[bytes, bytes]) -> dict:
        return {"headers": list(headers)}

    assert authorized(scope((b"authorization", b"Bearer s3cret")), "s3cret")
    assert authorized(scope((b"authorization", b"bearer s3cret")), "s3cret")
    for bad in (b"Bearer s3cre", b"Bearer s3cret2", b"Basic s3cret", b"s3cret", b"Bearer "):
        assert not authorized(scope((b"authorization", bad)), "s3cret"), bad
    assert not authorized(scope(), "s3cret")
    for path in ("/v1/embeddings", "/v1/chat/completions", "/v1/models",
                 "/v2/models/minilm/infer", "/v2/models/minilm"):
        assert needs_key(path), path
    for path in ("/v2/health/ready", "/v2/health/live", "/metrics", "/openapi.json",
                 "/v2/models/minilm/ready"):
        assert not needs_key(path), path
    cfg = ServeConfig(api_key="s3cret")
    assert "s3cret" not in repr(cfg) and cfg.to_dict()["api_key"] == "set"
    with pytest.raises(UserError):
        ServeConfig(api_key=" ")
    monkeypatch.setenv(API_KEY_ENV, "from-env")
    assert api_key_from_env(None) == "from-env" and api_key_from_env("flag") == "flag"
    monkeypatch.setenv(API_KEY_ENV, "")
    assert api_key_from_env(None) is None


def test_an_optimize_output_directory_serves_its_variants(tmp_path):
    from reactinfer.serving.app import load_models, model_refs, optimize_run_variants

    run = tmp_path / "run"
    for d in ("variants/01-int8", "variants/00-fp32", "best"):
        (run / d).mkdir(parents=True)
        (run / d / "manifest.json").write_text("{}")
    (run / "variants" / "stray").mkdir()  # not an artifact: left out
    assert optimize_run_variants(run) == [run / "variants/00-fp32", run / "variants/01-int8"]
    assert model_refs(["minilm", str(run)]) == ["minilm", run / "variants/00-fp32",
                                                run / "variants/01-int8"]
    assert optimize_run_variants(run / "best") is None  # an artifact: served as itself
    for d in ("00-fp32", "01-int8"):
        (run / "variants" / d / "manifest.json").unlink()
    assert optimize_run_variants(run) == [run / "best"]  # no variants saved: the best
    (run / "best" / "manifest.json").unlink()
    with pytest.raises(UserError, match="no saved artifact"):
        optimize_run_variants(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="nor is it the output directory of `react optimize`"):
        load_models([str(empty)])


def test_a_client_calling_in_a_loop_is_not_held_for_companions():
    """Requests that each come after the last one's answer never overlap: waiting
    max_delay for a companion would only add it to every round trip (the batch-1 latency
    over HTTP was about 2.9 ms of model plus a 5 ms wait)."""
    import math

    b = Batcher("m", _ladder(), ServeConfig(max_delay_ms=5), Metrics())
    loop = asyncio.new_event_loop()
    try:
        def admit() -> Request:
            r = Request("encode", Job(math.inf), loop, loop.create_future(), texts=["x"])
            b.admit(r)
            return r

        for _ in range(10):  # one at a time, close together
            r = admit()
            assert b._ready_at() == r.arrival
            batch, _ = b._next()
            assert batch == [r]
            b._finish(r, value=None)
        first = admit()
        for _ in range(9):  # now they overlap: a companion is worth the wait
            admit()
        assert b._ready_at() == pytest.approx(first.arrival + 0.005)
    finally:
        loop.close()


def test_the_server_runs_onnx_runtime_without_spinning_threads_unless_the_artifact_chose():
    pytest.importorskip("onnxruntime")
    from reactinfer.backends import to_backend
    from reactinfer.serving.state import for_serving
    from reactinfer.testing import tiny_handle

    h = tiny_handle("embedding")
    assert for_serving(h) is h  # torch: nothing to set
    o = for_serving(to_backend(h, "onnxruntime"))
    assert o.backend_options["spinning"] is False
    opts = o.runner().session.get_session_options()
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    chosen = o.derive(backend_options={**o.backend_options, "spinning": True})
    assert for_serving(chosen) is chosen


def test_a_failing_probe_is_logged_and_counted(caplog):
    """An idle probe of the better variant that fails leaves the ladder stepped down: the
    failure must show (a log line with the traceback, react_probe_errors_total), not pass
    unseen; the worker keeps running."""
    import logging

    def broken_runner():
        raise RuntimeError("the engine fell over")

    ladder = _ladder()
    ladder.variants[0].handle.runner = broken_runner  # what the probe calls first
    metrics = Metrics()
    b = Batcher("m", ladder, ServeConfig(max_batch=4, max_delay_ms=0), metrics)
    with caplog.at_level(logging.WARNING, logger="reactinfer.serving.batcher"):
        b._probe(0)
        b._probe(0)
    name = ladder.variants[0].name
    assert metrics.probe_errors.get(model="m", variant=name) == 2
    assert f'react_probe_errors_total{{model="m",variant="{name}"}} 2' in metrics.render()
    failed = [r for r in caplog.records if "probe" in r.getMessage()]
    assert len(failed) == 2 and "the engine fell over" in str(failed[0].exc_info[1])


def test_a_react_optimize_run_is_served_from_the_variant_it_chose(tmp_path):
    from reactinfer.core.artifact import save_artifact
    from reactinfer.planner.artifacts import TRIAL_KEY, link_copy
    from reactinfer.serving.app import load_models
    from reactinfer.serving.state import ServingState
    from reactinfer.testing import tiny_handle

    run = tmp_path / "run"
    for i, key in enumerate(("original", "chosen", "smaller")):
        save_artifact(tiny_handle("embedding"), run / "variants" / f"0{i}-{key}",
                      metrics={TRIAL_KEY: key})
    link_copy(run / "variants" / "01-chosen", run / "best")
    handles = load_models([run])
    assert [h.name for h in handles] and sum(bool(h.metrics.get("serve_first"))
                                             for h in handles) == 1
    state = ServingState(handles, ServeConfig())
    (group,) = state.groups.values()
    assert group.ladder.current.name == "01-chosen" and len(group.ladder.variants) == 3
