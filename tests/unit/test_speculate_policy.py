"""Speculation's policy (serving/speculate.py): who proposes a draft, how long, and when
"auto" stops (under load, or for a sequence whose drafts are refused); its settings are
checked at the door."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from reactinfer.core.errors import UserError
from reactinfer.serving.config import ServeConfig
from reactinfer.serving.metrics import Metrics
from reactinfer.serving.speculate import (
    MIN_ACCEPT,
    REPROBE_TOKENS,
    START_TOKENS,
    Speculation,
    lookup,
    record,
)
from reactinfer.tasks.sampling import Sampling

PROMPT = [5, 6, 7, 8, 9, 10, 11, 12, 5, 6]


def seq(temperature=0.0, constraint=None, tokens=(), new_tokens=50):
    req = SimpleNamespace(prompt_ids=PROMPT, constraint=constraint,
                          job=SimpleNamespace(new_tokens=new_tokens))
    return SimpleNamespace(req=req, sampling=Sampling(temperature=temperature),
                           tokens=list(tokens), accept_rate=1.0, draft_len=0, drafted_at=0)


def test_auto_proposes_for_greedy_sequences_while_the_engine_is_not_busy():
    spec = Speculation("auto", draft_tokens=4)
    assert spec.propose(seq(), decoding=1) == [7, 8, 9, 10]
    assert spec.propose(seq(), decoding=2) == [7, 8, 9, 10]
    assert spec.propose(seq(), decoding=3) == []  # off under load ...
    assert Speculation("lookup", 4).propose(seq(), decoding=8) == [7, 8, 9, 10]  # ... forced
    assert Speculation("off", 4).propose(seq(), decoding=1) == []
    assert spec.propose(seq(temperature=0.8), decoding=1) == []  # sampled: decodes plainly
    assert spec.propose(seq(constraint=object()), decoding=1) == []
    assert spec.propose(seq(new_tokens=3, tokens=[7]), decoding=1) == [8]  # max_tokens cuts
    assert spec.propose(seq(new_tokens=2, tokens=[7]), decoding=1) == []
    assert lookup([1, 2, 3, 1, 2], 8) == [3, 1, 2]


def test_a_sequence_whose_drafts_are_refused_stops_proposing():
    spec, d = Speculation("auto", draft_tokens=4), seq()
    spec.verified(d, 4, 4)
    assert d.accept_rate == 1.0
    while d.accept_rate >= MIN_ACCEPT:
        assert spec.propose(d, 1)
        spec.verified(d, 4, 0)
    assert spec.propose(d, 1) == []
    assert Speculation("lookup", 4).propose(d, 1)  # lookup proposes whatever the rate
    d.tokens += [13] * (REPROBE_TOKENS - 1)
    assert spec.propose(d, 1) == []  # paused ...
    d.tokens += [5, 6]
    assert len(spec.propose(d, 1)) == 4  # ... until a probe, START_TOKENS long


def test_a_drafts_length_follows_what_the_sequences_drafts_earned():
    spec, d = Speculation("auto", draft_tokens=16), seq(tokens=[5, 6] * 20, new_tokens=200)
    assert spec.wanted(d, 1) == START_TOKENS  # the first draft is short
    spec.verified(d, 4, 4)
    assert spec.wanted(d, 1) == 8  # accepted whole: doubled
    spec.verified(d, 8, 8)
    spec.verified(d, 16, 16)
    assert spec.wanted(d, 1) == 16  # up to draft_tokens
    spec.verified(d, 16, 2)
    assert spec.wanted(d, 1) == 3  # refused at its 3rd token: one past what was accepted
    spec.verified(d, 3, 0)
    assert spec.wanted(d, 1) == 1
    assert Speculation("auto", draft_tokens=2).wanted(seq(), 1) == 2  # never past the most


def test_metrics_count_proposed_accepted_and_tokens_per_call():
    m, labels = Metrics(), {"model": "m", "variant": "v"}
    record(m, labels, emitted=4, proposed=5, accepted=3)
    record(m, labels, emitted=1, proposed=0, accepted=0)
    by = {**labels, "source": "lookup"}  # drafts are counted by where they came from
    assert m.spec_proposed.get(**by) == 5 and m.spec_accepted.get(**by) == 3
    assert m.spec_accept_rate.get(**by) == pytest.approx(0.6)
    record(m, labels, emitted=2, proposed=4, accepted=1, source="draft")
    assert m.spec_proposed.get(**labels, source="draft") == 4
    assert m.spec_accept_rate.get(**by) == pytest.approx(0.6)
    text = m.render()
    assert 'react_speculative_tokens_per_call_sum{model="m",variant="v"} 7' in text
    assert 'react_speculative_tokens_per_call_count{model="m",variant="v"} 3' in text


@pytest.mark.parametrize("kw", [{"speculate": "maybe"}, {"speculate": "on"},
                                {"draft_tokens": 0}, {"draft_tokens": 100}])
def test_bad_settings_are_refused(kw):
    with pytest.raises(UserError, match="speculate|draft_tokens"):
        ServeConfig(**kw)
    assert ServeConfig().speculate == "auto"


def test_the_cli_flags_read_their_defaults_from_the_config(capsys):
    from reactinfer.cli.main import main

    with pytest.raises(SystemExit):
        main(["serve", "m", "--speculate", "sometimes"])
    assert "--speculate" in capsys.readouterr().err


def test_a_draft_model_is_a_setting_checked_at_the_door(tmp_path):
    with pytest.raises(UserError, match="needs a draft model"):
        ServeConfig(speculate="draft")
    with pytest.raises(UserError, match="draft must name a model"):
        ServeConfig(draft=" ")
    assert ServeConfig(draft=tmp_path / "d.gguf").draft == str(tmp_path / "d.gguf")
    assert ServeConfig(speculate="draft", draft="d.gguf").speculate == "draft"
    with pytest.raises(UserError, match="needs a draft model"):
        Speculation("draft", 4)
    assert Speculation("off", 4, draft=object()).proposer is None


def test_a_failing_draft_model_gives_way_to_prompt_lookup_in_auto():
    """A draft model whose engine cannot start: "auto" falls back to prompt lookup,
    "draft" (asked for by name) stops proposing; neither raises at every step."""
    class Broken:
        def decode_engine(self, *a, **k):
            raise RuntimeError("llama.cpp could not make a context")

    for mode, source, after in (("auto", "lookup", [7, 8, 9, 10]), ("draft", "", [])):
        spec = Speculation(mode, 4, draft=Broken())
        d = seq()
        d.variant = SimpleNamespace(draft_engine=None, engine=SimpleNamespace(
            slots=2, step_tokens=64, n_ctx=128, flash_attn="auto"))
        with pytest.raises(RuntimeError):
            spec.propose(d, 1)
        assert "from now on" in spec.failed([d])
        assert spec.source == source
        assert spec.propose(seq(), 1) == after
