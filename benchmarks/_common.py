"""What the benchmark scripts share, built on reactinfer's public API: a free port, a
server process held up for a block, timing, alternating rounds, the hardware fields and
the result files. Importing it loads neither torch nor a model, so that every script's
`--help` stays fast (tests/unit/test_benchmarks.py runs them all).
"""
from __future__ import annotations

import contextlib
import json
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T, float]:
    """fn's result and its wall time in seconds."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def alternate(steps: dict[str, Callable[[], T]], rounds: int) -> dict[str, list[T]]:
    """Each step's figures over `rounds` rounds, every step once per round in turn: the
    machine is shared and drifts, so a slow spell hits all the candidates alike (compare
    the medians)."""
    out: dict[str, list[T]] = {k: [] for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            out[k].append(step())
    return out


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def hardware() -> dict[str, Any]:
    """The fields every result file carries: this machine's profile, its one-line summary
    and the package versions."""
    from reactinfer.core.hardware import hardware_profile, package_versions

    hw = hardware_profile()
    return {"hardware": hw.to_dict(), "hardware_summary": hw.summary(),
            "versions": package_versions()}


def write_results(stem: Path, result: dict[str, Any], md: str | None = None, *,
                  indent: int = 2, echo: bool = True) -> None:
    """STEM.json (and STEM.md when `md` is given, printed too when `echo`)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    (stem.parent / f"{stem.name}.json").write_text(
        json.dumps(result, indent=indent, default=str) + "\n")
    if md is not None:
        (stem.parent / f"{stem.name}.md").write_text(md)
        if echo:
            print(md)


def table_head(*columns: str) -> list[str]:
    """A markdown table's header and rule, with as many rule cells as columns."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def stop(proc: subprocess.Popen[bytes], wait_s: float = 60) -> None:
    """SIGTERM (a server drains), then kill if it has not exited after `wait_s`."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def serving(cmd: list[str], ready_path: str, env: dict[str, str] | None = None, *,
            timeout_s: float = 600, poll_s: float = 0.1, log: IO[bytes] | None = None,
            preexec_fn: Callable[[], Any] | None = None
            ) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run `cmd --port N` on a free port until the block ends; yield its base URL and its
    process once `ready_path` answers 200. Its output goes to `log` (a file: a pipe
    nobody reads fills and blocks a chatty server), else stderr to a pipe the caller may
    read after the process ends."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([*cmd, "--port", str(port)], env=env, preexec_fn=preexec_fn,
                            stdout=log or subprocess.DEVNULL, stderr=log or subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + ready_path).status_code == 200:
                    break
            if proc.poll() is not None:
                raise RuntimeError(_tail(proc, log))
            time.sleep(poll_s)
        else:
            raise RuntimeError(f"{cmd[:4]} not ready after {timeout_s} s")
        yield base, proc
    finally:
        stop(proc)


def _tail(proc: subprocess.Popen[bytes], log: IO[bytes] | None) -> str:
    """The end of what a server that exited early wrote (why it exited)."""
    if log is not None:
        log.seek(0)
        return log.read().decode(errors="replace")[-2000:]
    return proc.stderr.read().decode(errors="replace") if proc.stderr else f"exit {proc.poll()}"
