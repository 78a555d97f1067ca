"""The user's metric (tasks/metrics.py): `--metric accuracy|f1` on labelled data, or
`metric=callable(outputs, items)`, bounds the relative drop of that metric instead of
agreement with the original; labels from image class subfolders or JSONL `label`."""
import json

import numpy as np
import pytest

import reactinfer as ri
from reactinfer.cli.main import main
from reactinfer.core.errors import UserError
from reactinfer.data import LabelledText, items_for, number_labels, read_texts, texts_for
from reactinfer.data.images import load_digits
from reactinfer.measure import format_report
from reactinfer.planner import optimize
from reactinfer.planner.catalogue import default_actions
from reactinfer.planner.settings import PlanSettings
from reactinfer.tasks import bound_decided, quality_drop, within_bound
from reactinfer.tasks.metrics import (
    METRIC_KEY,
    accuracy,
    check_labelled,
    macro_f1,
    metric_name,
    relative_drop,
    resolve_metric,
    with_metric,
)
from reactinfer.testing import save_tiny_hf, tiny_model


class Item:
    def __init__(self, label):
        self.label = label


def _logits(pred, classes=3):
    return np.eye(classes, dtype=np.float32)[pred]


# -- the metrics ----------------------------------------------------------------------------

def test_accuracy_and_macro_f1_match_their_definitions():
    labels = [0, 0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 0, 1, 1, 1, 2, 0]
    items = [Item(v) for v in labels]
    assert accuracy(_logits(pred), items) == pytest.approx(6 / 8)
    # per class F1 = 2TP / (2TP + FP + FN): class 0 (3, 1, 1), class 1 (2, 1, 0), 2 (1, 0, 1)
    want = np.mean([6 / 8, 4 / 5, 2 / 3])
    assert macro_f1(_logits(pred), items) == pytest.approx(want)
    sk = pytest.importorskip("sklearn.metrics")
    assert macro_f1(_logits(pred), items) == pytest.approx(sk.f1_score(labels, pred,
                                                                        average="macro"))
    with pytest.raises(UserError, match="3 classes"):
        accuracy(_logits(pred), [Item(v + 1) for v in labels])  # label 3 of a 3-class model


def test_metrics_resolve_by_name_or_callable_and_refuse_clearly():
    assert resolve_metric(None) is None
    assert resolve_metric("accuracy", "image-classification").fn is accuracy
    with pytest.raises(UserError, match="unknown metric 'acc'.*accuracy, f1"):
        resolve_metric("acc")
    with pytest.raises(UserError, match="classification and image-classification"):
        resolve_metric("f1", "embedding")
    with pytest.raises(TypeError, match="callable"):
        resolve_metric(3)

    def recall_at_1(outputs, items):
        return 1.0

    mine = resolve_metric(recall_at_1, "embedding")  # a callable fits any task
    assert mine.name == metric_name(recall_at_1) and mine.name.endswith(
        "test_metrics_resolve_by_name_or_callable_and_refuse_clearly.<locals>.recall_at_1")
    with pytest.raises(TypeError, match="must return a float"):
        with_metric({}, resolve_metric(lambda o, i: "good"), "logits",
                    {"logits": _logits([0])}, {"logits": _logits([1])}, [Item(0)])


def test_the_drop_is_relative_to_the_reference_value():
    assert relative_drop(0.8, 0.76) == pytest.approx(0.05)
    assert relative_drop(-2.0, -2.2) == pytest.approx(0.1)  # |reference|: lower is a drop
    assert relative_drop(0.0, -0.1) == pytest.approx(0.1)  # no scale: the difference
    ref, cand = {"logits": _logits([0, 1, 2, 0])}, {"logits": _logits([0, 1, 2, 1])}
    items = [Item(v) for v in (0, 1, 2, 1)]
    q = with_metric({"top1_agreement": 0.75}, resolve_metric("accuracy"), "logits", ref,
                    cand, items)
    assert q[METRIC_KEY] == {"name": "accuracy", "reference": 0.75, "candidate": 1.0,
                             "drop": pytest.approx(-1 / 3)}


def test_the_bound_is_on_the_metric_not_on_agreement():
    """A candidate that keeps agreement but loses accuracy is outside the bound, and one
    that loses agreement but keeps accuracy is inside."""
    task = "image-classification"
    loses_accuracy = {"top1_agreement": 1.0, METRIC_KEY: {
        "name": "accuracy", "reference": 0.9, "candidate": 0.85, "drop": relative_drop(0.9, 0.85)}}
    ok, why = within_bound(task, loses_accuracy, 0.02)
    assert not ok and "accuracy drop 0.0556" in why and "> bound 0.02" in why
    assert quality_drop(task, loses_accuracy) == pytest.approx(0.0556, abs=1e-4)
    keeps_accuracy = {"top1_agreement": 0.9, "ci95": {"top1_agreement": [0.85, 0.95]},
                      METRIC_KEY: {"name": "accuracy", "reference": 0.9, "candidate": 0.9,
                                   "drop": 0.0}}
    assert within_bound(task, keeps_accuracy, 0.02)[0]
    assert bound_decided(task, keeps_accuracy, 0.02)
    assert not within_bound(task, {"top1_agreement": 0.9}, 0.02)[0]  # the default bound
    # embeddings: the metric replaces the recall floor too
    assert within_bound("embedding", {"mean_cosine": 0.5, "top10_recall": 0.1, METRIC_KEY: {
        "name": "mine", "reference": 1.0, "candidate": 1.0, "drop": 0.0}}, 0.01)[0]


# -- labels in the data ---------------------------------------------------------------------

def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_labels_ids_names_and_digit_strings(tmp_path):
    ids = read_texts(_jsonl(tmp_path / "a.jsonl", [{"text": "x", "label": 2},
                                                    {"text": "y", "label": "0"}]))
    assert ids == ["x", "y"] and [t.label for t in ids] == [2, 0]  # plain strings with labels
    named = read_texts(_jsonl(tmp_path / "b.jsonl", [{"text": "p", "label": "pos"},
                                                      {"text": "n", "label": "neg"},
                                                      {"text": "m", "label": "pos"}]))
    assert [t.label for t in number_labels(named)] == [1, 0, 1]  # sorted names
    by_model = number_labels(named, {"pos": 0, "neg": 1, "neutral": 2})
    assert [t.label for t in by_model] == [0, 1, 0]  # the model's own names win
    with pytest.raises(UserError, match="'neg', 'pos'.*not classes of the model"):
        number_labels(named, {"good": 0, "bad": 1})
    assert read_texts(_jsonl(tmp_path / "c.jsonl", [{"text": "z"}])) == ["z"]
    with pytest.raises(UserError, match=r"c2.jsonl:2: no 'label'.*every line or on none"):
        read_texts(_jsonl(tmp_path / "c2.jsonl", [{"text": "x", "label": 1}, {"text": "y"}]))
    with pytest.raises(UserError, match="class id .* or a class name"):
        read_texts(_jsonl(tmp_path / "d.jsonl", [{"text": "x", "label": 1.5}]))
    with pytest.raises(UserError, match="mixes class ids and class names"):
        number_labels([LabelledText("a", 1), LabelledText("b", "pos")])


def test_string_labels_follow_the_models_class_names(tmp_path):
    model = tiny_model("classification")
    model.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    model.config.label2id = {"neg": 0, "neu": 1, "pos": 2}
    d = tmp_path / "m"
    model.save_pretrained(d, safe_serialization=True)
    from reactinfer.testing.tiny import tiny_tokenizer
    tiny_tokenizer().save_pretrained(d)
    rows = [{"text": f"the cat sat {i}", "label": ["pos", "neu"][i % 2]} for i in range(30)]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    items = items_for(ri.load(str(d)), "eval", str(data))
    assert items and all(t.label == (2 if t.endswith(tuple("02468")) else 1) for t in items)
    # a model with transformers' default names (LABEL_0...): sorted names instead
    assert {t.label for t in texts_for("eval", str(data))} <= {0, 1}


def test_a_metric_on_unlabelled_data_is_one_clear_line(tmp_path):
    check_labelled(resolve_metric("accuracy"), [Item(0)], None)  # labelled: fine
    with pytest.raises(UserError) as e:
        check_labelled(resolve_metric("accuracy"), ["a", "b"], "texts.txt")
    assert "\n" not in str(e.value) and "--metric accuracy needs labelled data" in str(e.value)
    check_labelled(resolve_metric(lambda o, i: 1.0), ["a"], None)  # a callable: its business


# -- the planner and bench on a labelled image folder -------------------------------------

@pytest.fixture
def digit_folder(tmp_path):
    """200 of the bundled 8×8 digits as PNG files, one subfolder per class (0..9)."""
    from PIL import Image

    images, labels = load_digits()
    root = tmp_path / "digits"
    for i in range(200):
        d = root / str(labels[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(d / f"{i}.png")
    return root


def _fold_only():
    return [a for a in default_actions() if a.name == "fold BatchNorm"]


def test_optimize_bounds_accuracy_on_a_labelled_folder_and_reports_both(
        tiny_cnn_model, digit_folder, tmp_path):
    out = tmp_path / "run"
    r = optimize(tiny_cnn_model, data=str(digit_folder), metric="accuracy", out=out,
                 budget_s=120, n_eval=20, batch_size=16, latency_runs=2, confirm_n_eval=20,
                 max_trials=1, progress=False, actions=_fold_only())
    base, trial = r["trials"][0], r["trials"][1]
    # the original's accuracy, computed here from its own answers on the same items
    model = ri.load(tiny_cnn_model)
    items = items_for(model, "eval", str(digit_folder), 20)
    logits = model.runner()(model.tokenizer(items))
    want = float(np.mean(logits.argmax(-1) == [it.label for it in items]))
    m = base["observation"]["quality"][METRIC_KEY]
    assert m["name"] == "accuracy" and m["reference"] == pytest.approx(want)
    assert m["candidate"] == m["reference"] and m["drop"] == 0
    obs = trial["observation"]
    assert obs["quality"][METRIC_KEY]["reference"] == pytest.approx(want)
    assert obs["quality_drop"] == obs["quality"][METRIC_KEY]["drop"]  # the bound's figure
    assert "top1_agreement" in obs["quality"]  # agreement is still measured
    assert "accuracy drop" in trial["reason"]
    assert r["settings"]["metric"] == "accuracy" and r["metric"]["name"] == "accuracy"
    assert "top1_agreement" in r["metric"]["agreement"]
    md = (out / "report.md").read_text()
    assert "drop ≤ 0.01 in accuracy" in md and "accuracy of the best" in md
    assert "agreement with the original: top1_agreement" in md
    assert json.loads((out / "report.json").read_text())["metric"]["name"] == "accuracy"
    with pytest.raises(UserError, match="different settings.*metric"):  # the store keys on it
        optimize(tiny_cnn_model, data=str(digit_folder), metric="f1", out=out, resume=True,
                 budget_s=60, n_eval=20, progress=False, actions=_fold_only())


def test_a_callable_metric_judges_a_candidate_that_keeps_agreement(tiny_cnn_model,
                                                                    digit_folder, tmp_path):
    """Folding BatchNorm keeps every top-1 answer (agreement 1), but the user's metric
    (here: whether the outputs are the original's, bit for bit) drops: rolled back."""
    seen = {}

    def same_bits(outputs, items):
        assert len(outputs) == len(items) and outputs.ndim == 2  # logits (N, C), items
        first = seen.setdefault("outputs", outputs.copy())
        return 1.0 if np.array_equal(outputs, first) else 0.5

    r = optimize(tiny_cnn_model, data=str(digit_folder), metric=same_bits,
                 out=tmp_path / "run", budget_s=120, n_eval=20, batch_size=16,
                 latency_runs=2, confirm_n_eval=0, max_trials=1, progress=False,
                 actions=_fold_only())
    fold = r["trials"][1]
    q = fold["observation"]["quality"]
    assert q["top1_agreement"] == 1.0
    assert q[METRIC_KEY]["drop"] == pytest.approx(0.5) and fold["decision"] == "rolled back"
    assert "same_bits drop 0.5000" in fold["reason"]
    assert r["settings"]["metric"].endswith("same_bits")


def test_accuracy_without_labels_is_refused_before_any_trial(tiny_cnn_model, tmp_path):
    from PIL import Image

    images, _ = load_digits()
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(40):
        Image.fromarray(images[i]).save(flat / f"{i}.png")
    with pytest.raises(UserError, match="--metric accuracy needs labelled data"):
        optimize(tiny_cnn_model, data=str(flat), metric="accuracy", out=tmp_path / "run",
                 budget_s=60, progress=False, actions=_fold_only())
    with pytest.raises(UserError, match="unknown metric"):
        PlanSettings(model="m", metric="top5").validate()
    assert main(["optimize", tiny_cnn_model, "--data", str(flat), "--metric", "f1", "-o",
                 str(tmp_path / "cli"), "--no-progress"]) == 2  # one line, no traceback


def test_bench_reports_the_metric_on_labelled_data(tiny_cnn_model, digit_folder):
    r = ri.bench(tiny_cnn_model, data=str(digit_folder), metric="f1", latency_runs=2,
                 batch_size=16, progress=False)
    assert r["metric"]["name"] == "f1" and 0 <= r["metric"]["value"] <= 1
    assert r["quality"][METRIC_KEY]["drop"] == 0  # its own reference
    assert "f1" in format_report(r) and "reference" in format_report(r)


def test_cli_bench_metric_on_labelled_jsonl(tmp_path, capsys):
    d = save_tiny_hf(tmp_path / "m", "classification")
    rows = [{"text": f"the cat sat on the mat {i}", "label": i % 3} for i in range(40)]
    data = _jsonl(tmp_path / "d.jsonl", rows)
    assert main(["bench", str(d), "--data", str(data), "--metric", "accuracy",
                 "--batch-size", "4", "--latency-runs", "2", "--no-progress", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["metric"]["name"] == "accuracy"
    assert r["quality"]["accuracy"] == pytest.approx(r["metric"]["value"])  # the task's too
    unlabelled = tmp_path / "u.txt"
    unlabelled.write_text("one text\nanother text\n")
    assert main(["bench", str(d), "--data", str(unlabelled), "--metric", "accuracy",
                 "--no-progress"]) == 2
    assert "needs labelled data" in capsys.readouterr().err
