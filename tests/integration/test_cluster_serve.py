"""Ray Serve replicas on loopback: the API answers from several replicas, and a replica
killed under load is restarted while requests on the other replica are unaffected."""
from __future__ import annotations

import os
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("ray")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from reactinfer.cluster import ray_api  # noqa: E402
from reactinfer.cluster.serve_ray import run  # noqa: E402
from reactinfer.serving import ServeConfig  # noqa: E402
from reactinfer.testing import save_tiny_hf, tiny_texts  # noqa: E402

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.environ.get("REACT_SLOW_TESTS") != "1",
                       reason="Ray Serve start-up and a replica restart add about a minute "
                              "on 2 cores; set REACT_SLOW_TESTS=1"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_local):
    model = save_tiny_hf(tmp_path_factory.mktemp("m") / "tiny", "embedding")
    # with an API key: it must reach every replica with the rest of the settings
    s = run([model], ServeConfig(api_key=KEY), replicas=2, port=free_port(),
            cpus_per_replica=0.5)
    yield s
    s.stop()


KEY = "replica-key"


def post(url, texts, timeout=30, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(url + "/v1/embeddings", json={"input": texts}, timeout=timeout,
                      headers=headers)


def test_embeddings_from_two_replicas(served):
    pids = set()
    for _ in range(30):
        r = post(served.url, tiny_texts(3))
        assert r.status_code == 200
        body = r.json()
        assert [d["index"] for d in body["data"]] == [0, 1, 2]
        e = np.array([d["embedding"] for d in body["data"]])
        np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
        pids.add(r.headers["x-react-replica"])
        if len(pids) == 2:
            break
    assert len(pids) == 2
    assert httpx.get(served.url + "/v2/health/ready").status_code == 200
    assert post(served.url, [""]).status_code == 400
    for _ in range(4):  # whichever replica answers, it knows the key
        assert post(served.url, ["a"], key=None).status_code == 401
        assert post(served.url, ["a"], key="wrong").status_code == 401


def test_killed_replica_restarts_and_other_replica_is_unaffected(served):
    actors = served.replica_actors()
    assert len(actors) == 2
    victim_pid = ray_api.get(actors[0].__ray_call__.remote(lambda self: os.getpid()))
    results: list[tuple[str | None, int]] = []
    stop = threading.Event()

    def client():
        n = 0
        while not stop.is_set() and n < 3000:  # bounded loop (~0.05 s apart)
            n += 1
            try:
                r = post(served.url, tiny_texts(2), timeout=20)
                results.append((r.headers.get("x-react-replica"), r.status_code))
            except httpx.HTTPError:
                results.append((None, -1))
            time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    time.sleep(2)
    before = len(results)
    ray_api.kill(actors[0], no_restart=False)
    survivor = {p for p, s in results[:before] if p and p != str(victim_pid)}
    # the Serve controller replaces the replica: wait for answers from a new process
    deadline, new_pids = time.time() + 150, set()
    while time.time() < deadline:
        new_pids = {p for p, s in results if s == 200 and p not in survivor | {str(victim_pid)}}
        if new_pids:
            break
        time.sleep(1)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert before > 0 and new_pids, "no restarted replica answered"
    on_survivor = [s for p, s in results if p in survivor]
    assert on_survivor and all(s == 200 for s in on_survivor)
    failed = [r for r in results if r[1] != 200]
    assert len(failed) <= len(threads)  # at most the requests in flight on the killed one


def test_cli_serve_ray_stops_cleanly_on_sigterm(tmp_path):
    """SIGTERM to `react serve --ray`: Serve and Ray shut down in order, one line, exit 0
    (not Ray's SystemExit half-way through its teardown, with a native stack dump)."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    model = save_tiny_hf(tmp_path / "tiny", "embedding")
    port = free_port()
    src = Path(__file__).resolve().parents[2] / "src"
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "reactinfer", "serve", str(model), "--ray",
                             "--replicas", "1", "--port", str(port)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):  # bounded: Ray start-up takes tens of seconds on 2 cores
            try:
                if httpx.get(base + "/v2/health/ready", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(1)
        assert post(base, ["open the file"]).status_code == 200
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert err.strip().splitlines()[-1] == "react serve: SIGTERM: Ray Serve stopped"
    assert "Traceback" not in err and "SIGTERM received" not in err and "***" not in err
