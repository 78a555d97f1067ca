import json

import numpy as np
import pytest

from reactinfer import load
from reactinfer.cli.main import main
from reactinfer.tasks import tokenize
from reactinfer.testing import save_tiny_hf, tiny_texts


@pytest.fixture
def setup(tmp_path):
    model = save_tiny_hf(tmp_path / "m")
    data = tmp_path / "t.txt"
    data.write_text("\n".join(tiny_texts(120)))
    return tmp_path, model, data


def test_compress_recipe_to_artifact_and_replay(setup, capsys):
    tmp, model, data = setup
    recipe = tmp / "r.json"
    recipe.write_text(json.dumps([{"type": "PruneFFN", "keep": 0.5, "importance": "activation"},
                                  {"type": "QuantizeDynamicInt8", "per_channel": True}]))
    rc = main(["compress", str(model), "--recipe", str(recipe), "-o", str(tmp / "a"),
               "--data", str(data), "--n-eval", "20"])
    out = capsys.readouterr().out
    assert rc == 0 and "params" in out and "mean_cosine" in out
    h = load(tmp / "a")
    types = [t["type"] for t in h.transforms]
    assert types == ["PruneFFN", "QuantizeDynamicInt8"]
    assert h.transforms[0]["data"] == str(data)  # --data is recorded in the recipe
    assert h.model.config.intermediate_size == 32
    again = load(tmp / "a")
    batch = tokenize(h.tokenizer, tiny_texts(5), 64)
    assert np.array_equal(h.runner()(batch), again.runner()(batch))


def test_sensitivity_only(setup, capsys):
    tmp, model, _ = setup
    assert main(["compress", str(model), "--sensitivity", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["sensitivity"]["layers"]
    assert rows and all("sqnr_db" in r for r in rows)


@pytest.mark.parametrize("recipe,match", [
    ([{"type": "PruneHeads", "keep": 0}], "keep must be a fraction"),
    ([{"type": "QuantizeWeightOnly", "bits": 4, "group_size": 24}], "does not divide"),
    ([{"type": "QuantizeDynamicInt8", "exclude": ["encoder.layer.9.output.dense"]}],
     "no layer named"),
])
def test_bad_recipes_exit_2_with_one_line(setup, capsys, recipe, match):
    tmp, model, _ = setup
    (tmp / "bad.json").write_text(json.dumps(recipe))
    rc = main(["compress", str(model), "--recipe", str(tmp / "bad.json"), "-o", str(tmp / "x"),
               "--no-eval"])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and "Traceback" not in err
    assert not (tmp / "x").exists()
