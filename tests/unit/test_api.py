"""The public verbs are plain functions whatever was imported first (no subpackage shares their
names), and `import reactinfer` stays light."""
import subprocess
import sys

import pytest

SCRIPT = """
import importlib, inspect, pkgutil
import reactinfer
for m in pkgutil.iter_modules(reactinfer.__path__):  # every subpackage first
    if m.ispkg:
        importlib.import_module("reactinfer." + m.name)
import reactinfer as ri
from reactinfer.compression import PruneFFN
from reactinfer.testing import tiny_handle, tiny_texts
for verb in ("load", "compress", "optimize", "bench", "serve"):
    fn = getattr(ri, verb)
    assert inspect.isfunction(fn), (verb, fn)
    assert fn.__doc__ and inspect.signature(fn).parameters, verb
h = ri.compress(ri.load(tiny_handle("embedding")), [PruneFFN(keep=0.5)])
r = ri.bench(h, batch_size=4, eval_texts=tiny_texts(8), latency_runs=2, progress=False)
print(h.transforms[0]["type"], r["task"])
"""


@pytest.mark.slow  # a fresh process that imports every subpackage
def test_verbs_are_functions_whatever_was_imported_first():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["PruneFFN", "embedding"]


def test_import_is_light():
    code = "import sys, reactinfer; print(any(m in sys.modules for m in " \
           "('torch', 'transformers', 'onnxruntime', 'ray', 'fastapi', 'llama_cpp')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_configs_resolve_in_a_fresh_process():
    code = ("from reactinfer.core.transform import config_from_dict; "
            "print(type(config_from_dict({'type': 'PruneFFN', 'keep': 0.5})).__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "PruneFFN", out.stderr
