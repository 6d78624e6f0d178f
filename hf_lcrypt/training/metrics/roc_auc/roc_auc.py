"""Area under the ROC curve from class probabilities: binary, or one-vs-rest macro for more classes (evaluate metric
script shipped with hf-lcrypt)."""

import datasets
import evaluate
import numpy as np
from sklearn.metrics import roc_auc_score

from hf_lcrypt.training.metrics import _scores

_DESCRIPTION = (
    "AUROC: the probability that a random positive image scores higher than a random negative one (ties count one "
    "half). With two classes it is the AUROC of class 1's score; with more, each class is scored against the rest "
    "and the AUROCs are averaged without weights (one-vs-rest macro). Unlike accuracy it does not depend on a "
    "decision threshold."
)

_INPUTS = """
Args:
    prediction_scores (`list` of `list` of `float`): one row per image, one score per class (probabilities, or any
        score that ranks images within a class).
    references (`list` of `int`): true class ids, indexing the columns of `prediction_scores`.
Returns:
    `{"roc_auc": float}`; classes absent from `references` (or present in every row) have no AUROC and are left out
    of the mean, and the result is NaN when no class has one.
"""


class RocAuc(evaluate.Metric):
    """AUROC that also works on validation sets in which a class happens to be missing."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_scores.SKLEARN_CITATION,
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "prediction_scores": datasets.Sequence(datasets.Value("float64")),
                    "references": datasets.Value("int64"),
                }
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.roc_auc_score.html"],
        )

    def _compute(self, prediction_scores: list[list[float]], references: list[int]) -> dict[str, float]:
        scores = np.asarray(prediction_scores, dtype=np.float64)
        refs = np.asarray(references)
        if scores.ndim != 2 or scores.shape[1] < 2:
            raise ValueError(f"prediction_scores must be (N, num_classes) with at least 2 classes, got {scores.shape}.")
        classes = [1] if scores.shape[1] == 2 else range(scores.shape[1])
        aucs = [roc_auc_score(refs == c, scores[:, c]) for c in classes if 0 < np.sum(refs == c) < len(refs)]
        return {"roc_auc": float(np.mean(aucs)) if aucs else float("nan")}
