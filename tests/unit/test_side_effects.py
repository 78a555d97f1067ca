"""The library leaves the user's process as it found it: importing it writes no environment
variable, loading reaches no network without one, and what verifies a file hashes it."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import reactinfer as ri
from reactinfer.core.artifact import verify_artifact
from reactinfer.core.errors import ArtifactError
from reactinfer.core.files import _HASH_CACHE, HASH_CACHE_SIZE, sha256_file
from reactinfer.testing import tiny_handle

SRC = str(Path(ri.__file__).resolve().parents[1])

# Imports every module under reactinfer (skipping none), then loads a Hugging Face directory
# and a GGUF file with every socket refused: offline loading must come from the arguments
# (local_files_only), not from HF_HUB_OFFLINE set behind the user's back.
_CHILD = r"""
import importlib, json, os, pkgutil, socket, sys, tempfile
from pathlib import Path
before = dict(os.environ)
import reactinfer
mods = [m.name for m in pkgutil.walk_packages(reactinfer.__path__, "reactinfer.")]
for name in mods:
    importlib.import_module(name)
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
tried = []
def refuse(*a, **k):
    tried.append(repr(a[:2]))
    raise OSError("no network in this test")
socket.socket.connect = socket.getaddrinfo = socket.create_connection = refuse
from reactinfer.backends.gguf_convert import convert_to_gguf
from reactinfer.testing import tiny_handle
from reactinfer.testing.tiny import save_tiny_hf
d = Path(tempfile.mkdtemp())
reactinfer.load(save_tiny_hf(d / "hf", task="embedding"))
reactinfer.load(convert_to_gguf(tiny_handle("causal-lm"), d / "tiny.gguf", "f32"))
print(json.dumps({"modules": len(mods), "changed": changed, "tried": tried}))
"""


def test_importing_every_module_changes_no_environment_and_loading_needs_no_network(tmp_path):
    import json

    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["REACT_CACHE_DIR"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["modules"] > 50  # the walk found the package, not an empty path
    assert got["changed"] == []
    assert got["tried"] == []


def _rewrite_keeping_size_and_mtime(path: Path) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


def test_same_size_rewrite_with_restored_mtime_fails_verification(tmp_path):
    art = tmp_path / "a"
    ri.Artifact.save(tiny_handle("embedding"), art)
    verify_artifact(art)  # verified once: whatever a cache holds now must not vouch later
    _rewrite_keeping_size_and_mtime(art / "model.safetensors")
    with pytest.raises(ArtifactError, match="model.safetensors.*sha256"):
        verify_artifact(art)
    with pytest.raises(ArtifactError, match="sha256"):
        ri.load(art)


def test_hash_cache_sees_a_rewrite_and_stays_bounded(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 4096)
    first = sha256_file(f)
    _rewrite_keeping_size_and_mtime(f)
    assert sha256_file(f) != first  # ctime moved, so the cached digest is not reused
    assert sha256_file(f) == sha256_file(f, cached=False)
    for i in range(HASH_CACHE_SIZE + 10):
        g = tmp_path / f"f{i}"
        g.write_bytes(str(i).encode())
        sha256_file(g)
    assert len(_HASH_CACHE) == HASH_CACHE_SIZE
