"""Every command-line default equals the library's own (ServeConfig, PlanSettings,
optimize()): the CLI reads them from the dataclasses, so the two cannot drift."""
import argparse
import dataclasses
import inspect

from reactinfer.cli.main import build_parser
from reactinfer.planner.api import optimize
from reactinfer.planner.settings import PlanSettings
from reactinfer.serving.config import ServeConfig


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def _field_defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls)
            if f.default is not dataclasses.MISSING}


def _check(command: str, cls, expected_dests: set) -> None:
    fields = _field_defaults(cls)
    flags = {a.dest: a.default for a in _subparser(command)._actions if a.dest in fields}
    assert expected_dests <= set(flags), expected_dests - set(flags)
    for dest, default in flags.items():
        assert default == fields[dest] and type(default) is type(fields[dest]), \
            f"react {command}: --{dest.replace('_', '-')} defaults to {default!r}, " \
            f"{cls.__name__}.{dest} to {fields[dest]!r}"


def test_serve_flags_default_to_serve_config():
    _check("serve", ServeConfig, {
        "slo_ms", "tpot_ms", "max_batch", "max_delay_ms", "max_queue", "cache_size",
        "max_inputs", "max_body_bytes", "max_image_bytes", "max_image_pixels", "long_text",
        "admit_quantile", "max_tokens", "llm_backend", "warmup", "deadline_admission",
        "api_key", "speculate", "draft_tokens", "draft"})


def test_serve_flags_build_the_default_config(monkeypatch):
    from reactinfer.cli.serve import _serve_config
    from reactinfer.serving.auth import API_KEY_ENV

    monkeypatch.delenv(API_KEY_ENV, raising=False)

    a = _subparser("serve").parse_args(["some-model"])
    assert _serve_config(a) == ServeConfig()
    off = _subparser("serve").parse_args(["m", "--no-warmup", "--no-deadline-admission"])
    assert not _serve_config(off).warmup and not _serve_config(off).deadline_admission


def test_optimize_flags_and_function_default_to_plan_settings():
    _check("optimize", PlanSettings, {"objective", "max_drop", "budget_s", "n_eval",
                                      "batch_size", "max_trials", "target"})
    fields = _field_defaults(PlanSettings)
    for name, param in inspect.signature(optimize).parameters.items():
        if name in fields and param.default is not inspect.Parameter.empty:
            assert param.default == fields[name], name
