"""The docs are executed: every command and Python example in README.md and docs/*.md runs
here, in a fresh directory per document, so a guide that drifts from the code fails
`make test`. Budgets, durations and eval sizes are shrunk (SHRINK) so the whole set takes
minutes; a line that cannot run here is listed in SKIP with the reason, and a test checks
that every SKIP entry still names a line of the docs.

Blocks run in the order a reader meets them. Shell blocks run line by line with bash (the
environment's `react` first on PATH): `react serve` starts a server in the background on
a free port, later `curl` and `react loadtest` lines talk to it, and it is stopped with
SIGTERM before the next server or at the end of the block. Each Python block is a
self-contained example and runs as a script of its own."""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# A line (or Python block) starting with the key is not run, for the reason given.
SKIP = {
    "make run": "the main job: CI runs `make test`, which builds the same environment",
    "make test": "this test runs inside it",
    ". .venv/bin/activate": "the harness puts the environment's bin first on PATH",
    "react optimize ./my-hf-model": "needs the user's own model and data",
    "react compress my-model/": "needs the user's own model and data",
    "from reactinfer.compression import CastHalf": "needs a CUDA GPU",
}
# Small budgets so every guide runs in minutes; what the commands do stays the same.
SHRINK = [
    (r"--budget-s \d+", "--budget-s 45"),
    (r"\bbudget_s=\d+", "budget_s=45"),
    (r"\btime_budget_s=\d+", "time_budget_s=10"),
    (r"\bsteps=\d+", "steps=10"),
    (r"\bn_eval=\d+", "n_eval=32"),
    (r"--duration \d+", "--duration 2"),
    (r"--rate \d+", "--rate 10"),
]
BENCH_SMALL = " --n-eval 32 --latency-runs 5"
# the planner's one-line refusal of a budget too small for a whole output on this machine
TOO_SMALL = re.compile(r"too small for a whole output.*?give --budget-s (\d+)", re.S)
FIXTURES = {
    "texts.jsonl": "".join(f'{{"text": "open the file number {i} and read it"}}\n'
                           for i in range(40)),
}
LONG_S = 900


def blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return [(m.group(1), m.group(2))
            for m in re.finditer(r"```(\w*)\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)]


def shell_commands(code: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def skipped(text: str) -> str | None:
    return next((why for key, why in SKIP.items() if text.strip().startswith(key)), None)


def shrink(code: str) -> str:
    for pattern, repl in SHRINK:
        code = re.sub(pattern, repl, code)
    return code


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Session:
    """One document's run: its directory, environment and the server it started."""
    cwd: Path
    env: dict[str, str]
    log: list[str] = field(default_factory=list)
    server: subprocess.Popen | None = None
    server_log: Path = Path()
    port: int = 0

    def execute(self, cmd: str) -> subprocess.CompletedProcess:
        t0 = time.perf_counter()
        out = subprocess.run(["bash", "-c", cmd], cwd=self.cwd, env=self.env, text=True,
                             capture_output=True, timeout=LONG_S)
        self.log.append(f"{time.perf_counter() - t0:6.1f} s  rc {out.returncode}  {cmd}")
        return out

    def run(self, cmd: str, ok_codes: tuple[int, ...] = (0,)) -> None:
        out = self.execute(cmd)
        assert out.returncode in ok_codes, f"`{cmd}` exited {out.returncode}:\n" \
            f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        assert "Traceback" not in out.stderr, f"`{cmd}` printed a traceback:\n{out.stderr}"

    def run_within_budget(self, cmd: str, retry: Callable[[str, int], str]) -> None:
        """A run with a shrunk budget that the planner refuses as too small for a whole
        output on this machine (it names the smallest that works, in one line) runs again
        with that budget: the refusal is what a user meets, and the guide's command works
        with the budget it names."""
        out = self.execute(cmd)
        smallest = TOO_SMALL.search(out.stderr) if out.returncode else None
        if smallest is None:  # ran, or failed otherwise: judged as any other command
            assert out.returncode == 0, f"`{cmd}` exited {out.returncode}:\n" \
                f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
            assert "Traceback" not in out.stderr, f"`{cmd}` printed a traceback:\n{out.stderr}"
            return
        self.run(retry(cmd, int(smallest.group(1))))

    def start_server(self, cmd: str) -> None:
        self.stop_server()
        self.port = free_port()
        if re.search(r"--port \d+", cmd):
            cmd = re.sub(r"--port \d+", f"--port {self.port}", cmd)
        else:
            cmd = re.sub(r"^react serve", f"react serve --port {self.port}", cmd)
        # stderr to a file: a pipe nobody reads would block a chatty server
        self.server_log = self.cwd / f"server-{self.port}.log"
        with open(self.server_log, "w") as err:
            self.server = subprocess.Popen(["bash", "-c", "exec " + cmd], cwd=self.cwd,
                                           env=self.env, stdout=subprocess.DEVNULL, stderr=err,
                                           start_new_session=True)
        t0 = time.perf_counter()
        url = f"http://127.0.0.1:{self.port}/v2/health/ready"
        while time.perf_counter() - t0 < 300:
            if self.server.poll() is not None:
                raise AssertionError(f"`{cmd}` exited {self.server.returncode}:\n"
                                     f"{self.server_log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        self.log.append(f"{time.perf_counter() - t0:6.1f} s  ready  {cmd}")
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"`{cmd}` was not ready within 300 s")

    def stop_server(self) -> None:
        if self.server is None:
            return
        self.server.send_signal(signal.SIGTERM)
        try:
            self.server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.server.pid, signal.SIGKILL)
            self.server.wait()
            raise AssertionError("the server did not stop on SIGTERM:\n"
                                 f"{self.server_log.read_text()[-2000:]}") from None
        finally:
            self.server = None
        err = self.server_log.read_text()
        assert "Traceback" not in err, f"the server printed a traceback on stop:\n{err}"

    def to_server(self, cmd: str) -> str:
        assert self.server is not None, f"`{cmd}` needs a server, but none was started before it"
        return re.sub(r"(localhost|127\.0\.0\.1):8000", f"127.0.0.1:{self.port}", cmd)


def run_shell_block(s: Session, code: str) -> None:
    for cmd in shell_commands(code):
        if skipped(cmd):
            continue
        cmd = shrink(cmd)
        if cmd.startswith("react serve"):
            s.start_server(cmd)
        elif cmd.startswith("curl"):
            if shutil.which("curl") is None:
                continue  # reported by test_curl_is_there
            # An HTTP error fails the line; a request that states a deadline may get 429.
            s.run(s.to_server(cmd.replace("curl ", "curl --fail-with-body ", 1)),
                  ok_codes=(0, 22) if "X-Deadline-Ms" in cmd else (0,))
        elif cmd.startswith("react loadtest"):
            s.run(s.to_server(cmd))
        else:
            if cmd.startswith("react bench") and "--n-eval" not in cmd:
                cmd = re.sub(r"(\s+#.*)?$", BENCH_SMALL, cmd, count=1)
            if cmd.startswith("react optimize"):
                s.run_within_budget(cmd, lambda c, n: re.sub(
                    r"--budget-s \d+", f"--budget-s {n} --resume", c))
            else:
                s.run(cmd)
    s.stop_server()


def run_python_block(s: Session, code: str) -> None:
    """Each Python example is self-contained: it runs as a script of its own."""
    if skipped(code):
        return
    code = re.sub(r"\bport=8000\b", f"port={free_port()}", shrink(code))
    (s.cwd / "doc_example.py").write_text(code)

    def retry(cmd: str, budget: int) -> str:
        (s.cwd / "doc_example.py").write_text(
            re.sub(r"\bbudget_s=\d+", f"budget_s={budget}, resume=True", code))
        return cmd

    s.run_within_budget(f"{sys.executable} doc_example.py", retry)


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_the_document_runs(doc: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name, text in FIXTURES.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    s = Session(tmp_path, env)
    try:
        for lang, code in blocks(doc):  # in the order a reader meets them
            if lang in ("sh", "bash"):
                run_shell_block(s, code)
            elif lang == "python":
                run_python_block(s, code)
    finally:
        s.stop_server()
        print(f"\n{doc.name}:\n" + "\n".join(s.log))


def test_every_skip_still_names_a_line_of_the_docs() -> None:
    lines = [line.strip() for d in DOCS for _, code in blocks(d) for line in code.splitlines()]
    stale = [key for key in SKIP if not any(line.startswith(key) for line in lines)]
    assert not stale, f"SKIP entries that no doc line starts with any more: {stale}"


def test_curl_is_there() -> None:
    assert shutil.which("curl"), "the serving guides' examples use curl: install it"
