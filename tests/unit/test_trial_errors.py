"""A candidate an engine cannot take is a failed trial; a bug of ours stops the run, with its
traceback, after writing the report of what was measured."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from reactinfer.core import errors
from reactinfer.core.errors import UserError, UserTypeError, is_our_bug
from reactinfer.core.transform import TransformConfig, register_transform
from reactinfer.planner import Action, optimize
from reactinfer.testing import save_tiny_hf, tiny_texts

OUR_FILE = str(errors._PACKAGE / "planner" / "somewhere.py")  # a frame in the package


def _raised(code: str, filename: str, **names) -> BaseException:
    try:
        exec(compile(code, filename, "exec"), dict(names))
    except BaseException as e:  # noqa: BLE001
        return e
    raise AssertionError("the code raised nothing")


def test_bug_types_from_our_frames_are_bugs_engine_and_user_errors_are_not():
    assert is_our_bug(_raised("None.handle", OUR_FILE))
    assert is_our_bug(_raised("{}['k']", OUR_FILE))
    assert is_our_bug(_raised("undefined_name", OUR_FILE))
    assert is_our_bug(_raised("len(1, 2)", OUR_FILE))
    # an attribute our code asked a torch module for: torch's __getattr__ raises it
    assert is_our_bug(_raised("m.no_such_layer", OUR_FILE, m=torch.nn.Linear(2, 2)))
    # what engines and transforms raise for a candidate they cannot take
    assert not is_our_bug(_raised("raise RuntimeError('ORT: not implemented')", OUR_FILE))
    assert not is_our_bug(_raised("raise NotImplementedError", OUR_FILE))
    assert not is_our_bug(_raised("raise MemoryError", OUR_FILE))
    assert not is_our_bug(_raised("raise UserError('no')", OUR_FILE, UserError=UserError))
    assert not is_our_bug(_raised("raise E('metric')", OUR_FILE, E=UserTypeError))
    # the same bug type raised inside a library is the library refusing
    assert not is_our_bug(_raised("None.handle", "/usr/lib/python3/site-packages/ov/x.py"))
    # a torch error (RuntimeError) from a call of ours: the engine's, not ours
    assert not is_our_bug(_raised("torch.zeros(2, 2) @ torch.zeros(3, 3)", OUR_FILE,
                                  torch=torch))


@dataclasses.dataclass(frozen=True)
class ReturnsNothing(TransformConfig):
    """A transform whose handler forgets to return: compress() (our code) then reads an
    attribute of None."""
    kind = "test.ReturnsNothing"


@register_transform(ReturnsNothing)
def _returns_nothing(handle, cfg):
    return None


@dataclasses.dataclass(frozen=True)
class EngineRefuses(TransformConfig):
    kind = "test.EngineRefuses"


@register_transform(EngineRefuses)
def _engine_refuses(handle, cfg):
    raise RuntimeError("[ONNXRuntimeError] : 9 : NOT_IMPLEMENTED : Could not find an "
                       "implementation for MatMulInteger")


def _expect(gain):
    return lambda ctx: (gain, f"test action expected ×{gain}")


def _run(tmp_path, actions):
    d = save_tiny_hf(tmp_path / "tiny", "embedding")
    data = tmp_path / "data.txt"
    words = " ".join(tiny_texts(10)).split()
    data.write_text("\n".join(" ".join(np.random.default_rng(i).choice(words, 8))
                              for i in range(200)))
    return optimize(str(d), data=str(data), out=tmp_path / "run", n_eval=16, batch_size=8,
                    latency_runs=2, confirm_n_eval=16, progress=False, budget_s=120,
                    actions=actions)


def test_an_engine_error_is_a_failed_trial_and_a_bug_of_ours_stops_the_run(tmp_path):
    refuses = Action("engine refuses", "refuses", _expect(3.0),
                     steps=({"type": "test.EngineRefuses"},))
    buggy = Action("buggy step", "buggy", _expect(2.0), steps=({"type": "test.ReturnsNothing"},))
    with pytest.raises(AttributeError, match="NoneType") as info:
        _run(tmp_path, [refuses, buggy])
    # the traceback is ours: it ends in compress(), where the bug is
    assert "core/transform.py" in "".join(str(f.path) for f in info.traceback[-1:])
    assert any("report.md" in n for n in info.value.__notes__)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    by_action = {t["action"]: t for t in report["trials"]}
    assert by_action["engine refuses"]["decision"] == "failed"  # and the run went on
    assert "NOT_IMPLEMENTED" in by_action["engine refuses"]["reason"]
    assert "buggy step" not in by_action  # not recorded as one more failed step
    assert report["stop"].startswith("stopped by an error in ReAct itself: AttributeError")
    assert "AttributeError" in (tmp_path / "run" / "report.md").read_text()
