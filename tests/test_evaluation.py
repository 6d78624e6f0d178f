"""The shipped evaluate metrics (loaded by path, offline) against hand computations, and the confusion-matrix PNG."""

import itertools
import json
import os
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image
from transformers import EvalPrediction

from hf_lcrypt.training.evaluation import compute_classification_metrics, make_compute_metrics, plot_confusion_matrix
from hf_lcrypt.training.metrics import METRIC_NAMES, load_metric, metric_path

# Three classes. Per class (TP, FP, FN): 0 -> (1, 1, 0), 1 -> (1, 1, 1), 2 -> (2, 0, 1).
PREDS = [0, 1, 1, 2, 2, 0]
REFS = [0, 1, 2, 2, 2, 1]
PRECISION = [Fraction(1, 2), Fraction(1, 2), Fraction(1)]
RECALL = [Fraction(1), Fraction(1, 2), Fraction(2, 3)]
F1 = [2 * p * r / (p + r) for p, r in zip(PRECISION, RECALL, strict=True)]  # 2/3, 1/2, 4/5


def pairwise_auc(positive, negative):
    """AUROC by definition: P(score of a positive > score of a negative), ties counting one half."""
    wins = [1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(positive, negative)]
    return sum(wins) / len(wins)


def test_every_metric_loads_from_its_folder_with_proper_info():
    for name in METRIC_NAMES:
        assert os.path.isfile(os.path.join(metric_path(name), f"{name}.py"))
        metric = load_metric(name)
        assert metric.name == name
        assert "references" in metric.features
    assert load_metric("roc_auc").features["references"].dtype == "int64"
    with pytest.raises(ValueError, match="ships"):
        metric_path("bleu")


def test_metrics_load_offline_in_a_fresh_process(tmp_path):
    """A fresh module cache and an unreachable endpoint: loading must not need the Hub."""
    script = (
        "import json\n"
        "from hf_lcrypt.training.metrics import METRIC_NAMES, load_metric\n"
        "print(json.dumps(load_metric('f1').compute(predictions=[0, 1, 1], references=[0, 1, 0])))\n"
        "print(json.dumps([load_metric(n).name for n in METRIC_NAMES]))\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_EVALUATE_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "HF_ENDPOINT": "http://127.0.0.1:9",
        "HF_HOME": str(tmp_path / "hf_home"),
    }
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    f1_line, names_line = done.stdout.strip().splitlines()[-2:]
    assert json.loads(f1_line)["f1"] == pytest.approx(2 / 3)  # class 0: P 1, R 1/2; class 1: P 1/2, R 1
    assert json.loads(names_line) == list(METRIC_NAMES)


def test_label_metrics_match_hand_counts():
    assert load_metric("accuracy").compute(predictions=PREDS, references=REFS)["accuracy"] == pytest.approx(4 / 6)
    for name, per_class in (("precision", PRECISION), ("recall", RECALL), ("f1", F1)):
        metric = load_metric(name)
        macro = metric.compute(predictions=PREDS, references=REFS)[name]
        assert macro == pytest.approx(float(sum(per_class) / 3)), name
        each = metric.compute(predictions=PREDS, references=REFS, average=None, labels=[0, 1, 2, 3])[name]
        assert each == pytest.approx([float(v) for v in per_class] + [0.0]), name


def test_auroc_binary_uses_the_positive_class_score():
    scores = [[0.4, 0.6], [0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]
    refs = [1, 0, 1, 0]  # positives score 0.6 and 0.8, negatives 0.1 and 0.7: 3 of 4 pairs ranked right
    assert load_metric("roc_auc").compute(prediction_scores=scores, references=refs)["roc_auc"] == pytest.approx(0.75)
    flipped = [[b, a] for a, b in scores]
    assert load_metric("roc_auc").compute(prediction_scores=flipped, references=refs)["roc_auc"] == pytest.approx(0.25)


def test_auroc_multiclass_is_the_macro_mean_of_one_vs_rest():
    rng = np.random.default_rng(0)
    refs = np.array([0, 0, 1, 1, 1, 2, 2, 0, 1, 2])
    scores = rng.random((10, 3))
    scores[5, 2] = scores[6, 2] = scores[0, 2]  # a tie across positive and negative
    expected = np.mean([pairwise_auc(scores[refs == c, c], scores[refs != c, c]) for c in range(3)])
    got = load_metric("roc_auc").compute(prediction_scores=scores, references=refs)["roc_auc"]
    assert got == pytest.approx(expected)


def test_auroc_leaves_out_a_class_missing_from_the_references():
    scores = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    refs = np.array([0, 1, 1, 0])  # class 2 never occurs: its one-vs-rest AUROC is undefined
    expected = np.mean([pairwise_auc(scores[refs == c, c], scores[refs != c, c]) for c in (0, 1)])
    assert load_metric("roc_auc").compute(prediction_scores=scores, references=refs)["roc_auc"] == pytest.approx(
        expected
    )
    assert np.isnan(load_metric("roc_auc").compute(prediction_scores=scores[:2], references=[0, 0])["roc_auc"])


def test_compute_classification_metrics_from_logits():
    logits = 3.0 * np.eye(3)[PREDS] + np.random.default_rng(0).random((6, 3))  # argmax is PREDS; no tied scores
    id2label = {"0": "glioma", "1": "meningioma", "2": "pituitary"}  # string keys, as in a config.json
    results = compute_classification_metrics(logits, np.array(REFS)[:, None], id2label)
    assert results["accuracy"] == pytest.approx(4 / 6)
    assert results["f1"] == pytest.approx(float(sum(F1) / 3))
    assert results["precision"] == pytest.approx(float(sum(PRECISION) / 3))
    assert results["recall"] == pytest.approx(float(sum(RECALL) / 3))
    assert results["f1_meningioma"] == pytest.approx(0.5) and results["f1_pituitary"] == pytest.approx(0.8)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    refs = np.array(REFS)
    auc = np.mean([pairwise_auc(probs[refs == c, c], probs[refs != c, c]) for c in range(3)])
    assert results["roc_auc"] == pytest.approx(auc)
    json.dumps(results)  # plain floats, loggable by the Trainer
    with pytest.raises(ValueError, match="shape"):
        compute_classification_metrics(logits[:, :2], REFS, id2label)


def test_make_compute_metrics_takes_an_eval_prediction_with_extra_outputs():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 3.0]])
    labels = np.array([0, 1, 1, 1])
    compute = make_compute_metrics({0: "malignant", 1: "normal_or_benign"})
    results = compute(EvalPrediction(predictions=(logits, np.zeros((4, 5, 8))), label_ids=labels))
    assert results["accuracy"] == pytest.approx(0.75)
    assert results["roc_auc"] == pytest.approx(1.0)  # class-1 probabilities of positives all exceed the negative's
    assert set(results) >= {"f1_malignant", "f1_normal_or_benign"}


def test_confusion_matrix_png_colours_each_cell_by_the_recall_of_its_row(tmp_path):
    from matplotlib import colormaps

    path = plot_confusion_matrix(REFS, PREDS, ["a", "b", "c", "never_seen"], tmp_path / "plots" / "cm.png")
    with Image.open(path) as image:
        assert image.width > 300 and image.height > 300
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3).astype(int)

    def area(rate: float) -> int:
        """Pixels in the colour of `rate` (the colour bar holds each colour in a thin band only)."""
        colour = np.round(np.array(colormaps["Blues"](rate)[:3]) * 255)
        return int((np.abs(pixels - colour).max(axis=1) <= 2).sum())

    # Rows (true class) a: 1 of 1 right; b: 1 of 2 right, 1 taken for a; c: 2 of 3 right, 1 taken for b.
    cell = area(1.0)  # the one cell at rate 1: a predicted as a
    assert cell > 2000
    assert area(0.5) > 1.5 * cell  # two cells at 0.5
    assert 0.7 * cell < area(2 / 3) < 1.3 * cell and 0.7 * cell < area(1 / 3) < 1.3 * cell
    assert area(0.75) < 0.1 * cell and area(0.25) < 0.1 * cell  # rates that no cell has
