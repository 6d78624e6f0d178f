"""Classification metrics for training and reports: the shipped `evaluate` metrics, and a confusion-matrix figure."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from .metrics import load_metric

if TYPE_CHECKING:
    from transformers import EvalPrediction


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def compute_classification_metrics(
    logits: np.ndarray, labels: np.ndarray, id2label: Mapping[int | str, str]
) -> dict[str, float]:
    """Accuracy, macro F1/precision/recall, AUROC (one-vs-rest macro, from softmax probabilities) and `f1_<class>`.

    Macro scores average over the classes that occur in `labels` or in the predictions; per-class F1 is reported for
    every class of `id2label` (0 for one that is neither present nor predicted).
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    names = {int(i): name for i, name in id2label.items()}
    if logits.ndim != 2 or logits.shape != (len(labels), len(names)):
        raise ValueError(
            f"Expected logits of shape (num_examples, num_classes) = ({len(labels)}, {len(names)}) to match the "
            f"labels and id2label, got {logits.shape}."
        )
    preds = logits.argmax(axis=-1)
    results = dict(load_metric("accuracy").compute(predictions=preds, references=labels))
    for name in ("f1", "precision", "recall"):
        results.update(load_metric(name).compute(predictions=preds, references=labels))
    results.update(load_metric("roc_auc").compute(prediction_scores=_softmax(logits), references=labels))
    classes = sorted(names)
    per_class = load_metric("f1").compute(predictions=preds, references=labels, labels=classes, average=None)["f1"]
    results.update({f"f1_{names[c]}": score for c, score in zip(classes, per_class, strict=True)})
    return results


def make_compute_metrics(id2label: Mapping[int | str, str]) -> Callable[[EvalPrediction], dict[str, float]]:
    """A `Trainer(compute_metrics=...)` function bound to the model's classes."""

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        if isinstance(logits, tuple):  # models that also return hidden states or attentions put the logits first
            logits = logits[0]
        return compute_classification_metrics(logits, prediction.label_ids, id2label)

    return compute_metrics


def plot_confusion_matrix(
    labels: Sequence[int] | np.ndarray,
    preds: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Write a PNG confusion matrix: colour and first number are the row-normalised rate (recall per true class),
    the number in brackets the count. Uses the Agg canvas directly, so it never touches the pyplot backend."""
    counts = confusion_matrix(labels, preds, labels=list(range(len(class_names))))
    totals = counts.sum(axis=1, keepdims=True)
    rates = np.divide(counts, totals, out=np.zeros(counts.shape, dtype=np.float64), where=totals > 0)

    size = 2.0 + 0.8 * len(class_names)
    fig = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, labels=class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or f"Confusion matrix (n={int(counts.sum())})")
    for (i, j), count in np.ndenumerate(counts):
        colour = "white" if rates[i, j] > 0.5 else "black"
        ax.text(j, i, f"{rates[i, j]:.2f}\n({count})", ha="center", va="center", color=colour, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path
