import pytest

import reactinfer as ri
from reactinfer.core.errors import UserError
from reactinfer.core.hardware import hardware_profile
from reactinfer.data import PARTS, corpus_part, read_texts, texts_for
from reactinfer.testing import save_tiny_hf


def test_unknown_model_is_a_clear_error():
    with pytest.raises(UserError, match="not a built-in"):
        ri.load("no-such-model")


def test_wrong_task_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="unknown task"):
        ri.load("minilm", task="translation")


def test_module_without_task_or_tokenizer():
    from reactinfer.testing import tiny_model, tiny_tokenizer

    with pytest.raises(UserError, match="task="):
        ri.load(tiny_model("embedding"))
    with pytest.raises(UserError, match="tokenizer="):
        ri.load(tiny_model("embedding"), task="embedding")
    h = ri.load(tiny_model("embedding"), task="embedding", tokenizer=tiny_tokenizer())
    assert h.source["kind"] == "module" and len(h.source["sha256"]) == 64


@pytest.mark.parametrize("task", ["embedding", "classification", "causal-lm"])
def test_hf_directory_detects_task(tmp_path, task):
    d = save_tiny_hf(tmp_path / task, task)
    h = ri.load(d)
    assert h.task == task and h.source["kind"] == "hf"


def test_pickle_only_directory_is_refused(tmp_path):
    d = save_tiny_hf(tmp_path / "m", "embedding")
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle formats are refused"):
        ri.load(d)


def test_unrecognised_path(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(UserError, match="not a model ReAct can load"):
        ri.load(tmp_path / "x.txt")


@pytest.mark.slow  # builds the corpus from scratch once more
def test_corpus_is_deterministic_and_disjoint():
    parts = {p: corpus_part(p) for p in PARTS}
    assert len(parts["eval"]) == 1000 and len(parts["calibration"]) == 512
    assert len(parts["train"]) > 3000
    assert not set(parts["eval"]) & set(parts["train"])
    assert not set(parts["eval"]) & set(parts["calibration"])
    from reactinfer.data.corpus import build_corpus

    assert build_corpus()["eval"][:1000] == parts["eval"]  # same result rebuilt from scratch
    more = corpus_part("eval", 2000)  # asked for: the rest of the part, for a re-measure
    assert len(more) > 1500 and more[:1000] == parts["eval"]
    assert not set(more) & set(parts["train"])


def test_read_texts_lines_and_jsonl(tmp_path):
    (tmp_path / "a.txt").write_text("one\n\ntwo\n", encoding="utf-8")
    assert read_texts(tmp_path / "a.txt") == ["one", "two"]
    (tmp_path / "b.jsonl").write_text('{"text": "x"}\n{"text": "y"}\n')
    assert read_texts(tmp_path / "b.jsonl") == ["x", "y"]
    assert texts_for("eval", str(tmp_path / "b.jsonl"))  # tiny files still evaluate


@pytest.mark.parametrize("content,match", [
    (b"", "empty"), (b"\xff\xfe\x00bad", "not UTF-8"), (b'{"txt": 1}\n', "string 'text'"),
    (b'{"text": "a"}\n{oops\n', "not valid JSON")])
def test_bad_data_files(tmp_path, content, match):
    p = tmp_path / "d.jsonl"
    p.write_bytes(content)
    with pytest.raises(UserError, match=match):
        read_texts(p)
    with pytest.raises(UserError, match="does not exist"):
        read_texts(tmp_path / "missing.txt")


def test_hardware_profile_fields():
    hw = hardware_profile().to_dict()
    assert hw["cores_logical"] >= 1 and hw["memory_gb"] > 0
    assert set(hw["isa"]) >= {"avx2", "avx512", "vnni", "amx"}
    assert isinstance(hw["gpu"], bool)
