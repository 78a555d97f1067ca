"""The docs are executed: every command and Python example in README.md and docs/*.md runs
here, in a fresh directory per document, so a guide that drifts from the code fails
`make test-docs` (CI runs it after `make test`: the guides' real optimize runs, Ray
start-ups and engine builds take about 15 minutes on 2 cores, longer than the rest of the
suite; the checks below that the SKIP and EXPECT tables still match the docs run in
`make test`). Budgets, durations and eval sizes are shrunk (SHRINK) so each guide takes
minutes; a line that cannot run here is listed in SKIP with the reason, and a test checks
that every SKIP entry still names a line of the docs.

Blocks run in the order a reader meets them. Shell blocks run line by line with bash (the
environment's `react` first on PATH): `react serve` starts a server in the background on
a free port, later `curl` and `react loadtest` lines talk to it, and it is stopped with
SIGTERM before the next server or at the end of the block. Each Python block is a
self-contained example and runs as a script of its own.

What each command or example prints is checked too, loosely: EXPECT holds, for the lines
and Python blocks whose output a reader sees, patterns that must be in that output (key
words and shapes, never figures a machine changes). Tests check that every such line and
block has a rule, and that every rule still names a line of the docs."""
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
    "make test": "CI runs it; this test runs in `make test-docs`, beside it",
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
RETRIES_WITHIN_BUDGET = 3  # the command as written, then with the budget a refusal named
TOO_SMALL = re.compile(r"too small for a whole output.*?give --budget-s (\d+)", re.S)
FIXTURES = {
    "texts.jsonl": "".join(f'{{"text": "open the file number {i} and read it"}}\n'
                           for i in range(40)),
}
LONG_S = 900
# The guides repeat some long commands on a built-in model (the README's `react optimize
# minilm` is serve.md's too; planner.md and vision.md optimize resnet18-digits alike; three
# guides compress minilm with the example recipe). Such a command, the same but for its
# output directory, runs once per session: a later document gets a copy of that directory
# and of what it printed (checked again), as a reader who ran the first guide would have.
ONCE = re.compile(r"^react (optimize|compress) (?P<model>[\w.-]+) .*-o (?P<out>\S+)")
DONE: dict[str, tuple[Path, str]] = {}  # the command, its -o replaced → (its output, stdout)
# the planner's verdict, whichever way it goes on this machine (every form finish.verdict writes)
VERDICT = r"(no step paid|best effort: ×\d+\.\d\d on |×\d+\.\d\d on )"
BENCH = (r"latency @ batch 1\s+p50 [\d.]+ ms", r"throughput @ batch \d+\s+[\d.]+ items/s",
         r"peak memory \(RSS\)", r"size\s+[\d.]+ MiB")
# What a reader sees printed. Every rule whose key (a regex) matches a shell line as the
# docs write it, or any line of a Python block, applies: each of its patterns must be found
# (re.M) in what that line or block printed on stdout.
EXPECT: list[tuple[str, tuple[str, ...]]] = [
    # -- shell lines
    (r"^react models", ("minilm", "smollm2", "efficientnet-lite0", "resnet18-digits")),
    (r"^react bench (?!.*--json)", BENCH),
    (r"^react bench .*--json", (r"^\{$", r'"throughput": \{', r'"latency_ms": \{')),
    (r"^react bench .*--backend auto", (r'"backend_selection": \{',)),
    (r"^react bench .*--backend (onnxruntime|openvino) ",
     (r'(on |"backend": ")(onnxruntime|openvino)',)),
    (r"^react bench smollm2 --backend llama\.cpp", (r"on llama\.cpp", r"tokens/s")),
    (r"^react bench (react-out/\S+/best|digits-folded)", (r"quality vs \S+",)),
    (r"^react optimize", (r"^- result: \*\*" + VERDICT, r"^report: \S+/report\.md")),
    (r"^react info", (r"^artifact ", r"^transforms ", r"^verified\s+every file matches")),
    (r"^react compress .*--recipe", (r"^saved \S+ \(\d+ step", r"^quality vs original")),
    (r"^react compress .*--sensitivity", (r"^per-layer sensitivity", r"^\s+[\d.-]+ dB  \S")),
    (r"^react batch", (r"^wrote \S+ \([\d,]+ rows",)),
    (r"^react batch efficientnet-lite0 --input photos", (r"^skipped 1 file",)),
    (r"^react loadtest", (r"^\S+: \d+ sent", r"^latency ms\s+p50", r"^status\s+.*\b200: \d+")),
    (r"^react loadtest .*--slo-ms", (r"^SLO \d+ ms\s+met by",)),
    (r"^curl .*/v2/health/ready", (r'"ready":\s*true',)),
    (r"^curl .*/v1/models", (r'"id":\s*"minilm"',)),
    (r"^curl .*/v1/embeddings .*-D -", (r"^HTTP/1\.1 200",)),
    (r"^curl .*/v1/embeddings .*base64", (r'"embedding":\s*"[A-Za-z0-9+/=]+"',)),
    (r"^curl .*X-Deadline-Ms", (r'"embedding"|"error"',)),  # answered, or refused at once
    (r"^curl .*/v2/models/minilm/infer", (r'"outputs":\s*\[', r'"name":\s*"embedding"')),
    (r"^curl .*/metrics", (r"^react_batch_size_count", r"^react_active_variant",
                           r"^react_effective_quality")),
    (r"^curl .*/v1/chat/completions", (r"^data: \{", r"^data: \[DONE\]")),
    (r"^curl .*/v1/completions", (r'"choices":\s*\[', r'"text":')),
    (r"^curl .*-w '%\{http_code\}", (r"^200$",)),
    (r"^curl -s localhost:8000/v2/models/efficientnet-lite0$", (r'"top5_labels"',
                                                              r'"preprocess"')),
    (r"^curl .*-d @pixels\.json", (r'"name":\s*"top5_labels"',)),
    (r"^python -c .*pq\.read_table\('emb\.parquet'\)",  # pandas elides middle columns
     (r"^\[3 rows x \d+ columns\]", r"empty text")),
    (r"^python -c .*open\('answer\.json'\)\)\['outputs'\] if", (r"^\[\[",)),
    (r"^python -c .*open\('answer\.json'\)\)\['outputs'\]\[2\]", (r"'name': 'top5_labels'",)),
    (r"^python -c .*pq\.read_table\('photos\.parquet'", (r"'top5_labels': \['", r"coffee")),
    # -- Python blocks, keyed by one of their lines
    (r"^print\(lm\.tokenizer\.decode\(ids\)\)", (r"\w",)),
    (r"^print\(len\(layers\), layers\[-1\]\)",
     (r"^12 /model/encoder/layer\.1/output/dense/MatMul$",
      r"^[\[(]'/model/encoder/layer\.1/output/dense/MatMul',?[\])]$")),
    (r"^print\(ov8\.backend_options\)", (r"'smooth_quant': ", r"'overflow_fix': ",
                                        r"^openvino \{.*'mean_cosine'")),
    (r'^print\(r\["n_eval"\], "texts in"', (r"^\d+ texts in [\d.]+ s$", r"^[\d.]+ \S")),
    (r"^    print\(f\"\{row\['sqnr_db'\]", (r"^\s*[\d.-]+ dB  \S+", r"'mean_cosine'")),
    (r'^print\(small\.metrics\["prune_channels"\]\)',
     (r"'params_before'.*'macs_after'", r"'accuracy'")),
    (r'^print\("accuracy", round', (r"^accuracy [\d.]+ \d+ images/s$", r"^" + VERDICT,
                                    r"^best: ")),
    (r'^print\(report\["verdict"\], report\["best_recipe"\]\)', (r"^" + VERDICT,)),
    (r'^print\(keep\.backend_options\["fp32_layers"\]\)', (r"'accuracy'", r"^[\[(]'\S+',?[\])]$")),
    (r'^print\(report\["quality"\], f', (r"^\S.* \d+ images/s$",)),
    (r'^    print\(f"max \|Δ logit\|', (r"^max \|Δ logit\| [\d.]+e[-+]\d+ 0 BatchNorms left$",)),
]


def blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, code) of each fenced block."""
    return [(m.group(1), m.group(2))
            for m in re.finditer(r"```(\w*)\n(.*?)```", doc.read_text(encoding="utf-8"), re.S)]


def shell_commands(code: str) -> list[str]:
    """Commands of a shell block: continuation lines joined, comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def rules(lines: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The EXPECT rules that apply to a shell line or to a Python block's lines."""
    return [(key, pats) for key, pats in EXPECT if any(re.search(key, ln) for ln in lines)]


def prints(cmd: str) -> bool:
    """Whether a reader sees this shell line print something worth checking."""
    if cmd.startswith("curl "):  # unless its body goes to a file
        return " -o " not in cmd.replace(" -o /dev/null", "")
    return (cmd.startswith("react ") and not cmd.startswith("react serve")) \
        or (cmd.startswith("python -c") and "print(" in cmd)


def check_output(what: str, lines: list[str], stdout: str) -> None:
    missing = [pat for _, pats in rules(lines) for pat in pats
               if not re.search(pat, stdout, re.M)]
    assert not missing, f"`{what}` printed no match for {missing}:\n{stdout[-3000:]}"


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

    def run(self, cmd: str, ok_codes: tuple[int, ...] = (0,)) -> str:
        """Its stdout."""
        out = self.execute(cmd)
        assert out.returncode in ok_codes, f"`{cmd}` exited {out.returncode}:\n" \
            f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        assert "Traceback" not in out.stderr, f"`{cmd}` printed a traceback:\n{out.stderr}"
        return out.stdout

    def run_within_budget(self, cmd: str, retry: Callable[[str, int], str]) -> str:
        """A run with a shrunk budget that the planner refuses as too small for a whole
        output on this machine (it names the smallest that works, in one line) runs again
        with that budget: the refusal is what a user meets, and the guide's command works
        with the budget it names."""
        given = cmd
        for _ in range(RETRIES_WITHIN_BUDGET):
            out = self.execute(cmd)
            smallest = TOO_SMALL.search(out.stderr) if out.returncode else None
            if smallest is None:
                break
            # each refusal measures again: on a busy machine the budget it names can grow
            cmd = retry(given, int(smallest.group(1)))
        # ran, or failed otherwise: judged as any other command
        assert out.returncode == 0, f"`{cmd}` exited {out.returncode}:\n" \
            f"{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        assert "Traceback" not in out.stderr, f"`{cmd}` printed a traceback:\n{out.stderr}"
        return out.stdout

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
    for written in shell_commands(code):
        if skipped(written):
            continue
        cmd, stdout, key = shrink(written), "", ""
        once = ONCE.match(cmd)
        if once and not any((s.cwd / w).exists() for w in cmd.split()  # no file made here
                            if w != once["out"] and not w.startswith("examples/")):
            key = re.sub(r"\s+#.*", "", cmd.replace(f"-o {once['out']}", "-o OUT"))
            if key in DONE:
                shutil.copytree(DONE[key][0], s.cwd / once["out"])
                s.log.append(f"   0.0 s  copied  {cmd}")
                check_output(written, [written], DONE[key][1])
                continue
        if cmd.startswith("react serve"):
            s.start_server(cmd)
        elif cmd.startswith("curl"):
            if shutil.which("curl") is None:
                continue  # reported by test_curl_is_there
            # An HTTP error fails the line; a request that states a deadline may get 429.
            stdout = s.run(s.to_server(cmd.replace("curl ", "curl --fail-with-body ", 1)),
                           ok_codes=(0, 22) if "X-Deadline-Ms" in cmd else (0,))
        elif cmd.startswith("react loadtest"):
            stdout = s.run(s.to_server(cmd))
        else:
            if cmd.startswith("react bench") and "--n-eval" not in cmd:
                cmd = re.sub(r"(\s+#.*)?$", BENCH_SMALL, cmd, count=1)
            if cmd.startswith("react optimize"):
                stdout = s.run_within_budget(cmd, lambda c, n: re.sub(
                    r"--budget-s \d+", f"--budget-s {n} --resume", c))
            else:
                stdout = s.run(cmd)
        check_output(written, [written], stdout)
        if once and key and key not in DONE:
            DONE[key] = (s.cwd / once["out"], stdout)
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

    stdout = s.run_within_budget(f"{sys.executable} doc_example.py", retry)
    check_output(code.strip().splitlines()[0] + " ...", code.splitlines(), stdout)


@pytest.mark.docs
@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_the_document_runs(doc: Path, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    for name, text in FIXTURES.items():
        (tmp_path / name).write_text(text)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONUNBUFFERED": "1"}
    if env.get("PYTHONPATH"):  # the commands run elsewhere: `PYTHONPATH=src` must still hold
        env["PYTHONPATH"] = os.pathsep.join(os.path.abspath(p)
                                            for p in env["PYTHONPATH"].split(os.pathsep) if p)
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


def test_every_line_and_example_that_prints_has_an_expect_rule() -> None:
    """A reader compares what they see with the docs: so does this test, for every line
    and example that prints (a new one needs its rule in EXPECT)."""
    unchecked = []
    for d in DOCS:
        for lang, code in blocks(d):
            if lang in ("sh", "bash"):
                unchecked += [f"{d.name}: {c}" for c in shell_commands(code)
                              if prints(c) and not skipped(c) and not rules([c])]
            elif lang == "python" and "print(" in code and not skipped(code) \
                    and not rules(code.splitlines()):
                unchecked.append(f"{d.name}: the Python block {code.splitlines()[0]!r} ...")
    assert not unchecked, "lines and examples whose output nothing checks:\n" + \
        "\n".join(unchecked)


def test_every_expect_rule_still_names_a_line_of_the_docs() -> None:
    lines = [c for d in DOCS for lang, code in blocks(d)
             for c in (shell_commands(code) if lang in ("sh", "bash") else code.splitlines())]
    stale = [key for key, _ in EXPECT if not any(re.search(key, ln) for ln in lines)]
    assert not stale, f"EXPECT rules that no doc line matches any more: {stale}"


def test_curl_is_there() -> None:
    assert shutil.which("curl"), "the serving guides' examples use curl: install it"
