"""Accuracy (evaluate metric script shipped with hf-lcrypt)."""

import evaluate
from sklearn.metrics import accuracy_score

from hf_lcrypt.training.metrics import _scores

_DESCRIPTION = (
    "Accuracy = (number of correct predictions) / (number of predictions). On imbalanced medical data it rewards "
    "predicting the majority class: read it next to macro F1 and AUROC."
)

_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
Returns:
    `{"accuracy": float}` in [0, 1].
"""


class Accuracy(evaluate.Metric):
    """The fraction of predictions equal to their reference."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_scores.SKLEARN_CITATION,
            inputs_description=_INPUTS,
            features=_scores.LABEL_FEATURES,
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"],
        )

    def _compute(self, predictions: list[int], references: list[int]) -> dict[str, float]:
        return {"accuracy": float(accuracy_score(references, predictions))}
