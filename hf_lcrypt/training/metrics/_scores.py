"""What the precision, recall and F1 scripts share; they import this module (not its class) so that evaluate, which
takes the first metric class it finds in a script's namespace, picks the script's own class."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np
from sklearn import metrics

SKLEARN_CITATION = """\
@article{scikit-learn,
  title   = {Scikit-learn: Machine Learning in {P}ython},
  author  = {Pedregosa, F. and Varoquaux, G. and Gramfort, A. and Michel, V. and Thirion, B. and Grisel, O. and
             Blondel, M. and Prettenhofer, P. and Weiss, R. and Dubourg, V. and Vanderplas, J. and Passos, A. and
             Cournapeau, D. and Brucher, M. and Perrot, M. and Duchesnay, E.},
  journal = {Journal of Machine Learning Research},
  volume  = {12},
  pages   = {2825--2830},
  year    = {2011}
}
"""

LABEL_FEATURES = datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")})

AVERAGED_INPUTS = """
Args:
    predictions (`list` of `int`): predicted class ids.
    references (`list` of `int`): true class ids.
    labels (`list` of `int`, optional): the classes to score and average over; by default every class that occurs in
        `references` or `predictions`.
    average (`str` or `None`, defaults to `"macro"`): `"macro"` (unweighted mean over classes), `"micro"`,
        `"weighted"`, `"binary"` (class `pos_label` only) or `None` for one score per class in `labels` order.
    pos_label (`int`, defaults to 1): the positive class when `average="binary"`.
    zero_division (`float`, defaults to 0.0): the score of a class whose denominator is zero.
Returns:
    `{name: float}`, or `{name: list of float}` when `average=None`.
"""


class AveragedScore(evaluate.Metric):
    """Precision, recall or F1 through scikit-learn; subclasses set `score` (the sklearn name) and `description`."""

    score: str
    description: str

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=self.description,
            citation=SKLEARN_CITATION,
            inputs_description=AVERAGED_INPUTS,
            features=LABEL_FEATURES,
            reference_urls=[
                f"https://scikit-learn.org/stable/modules/generated/sklearn.metrics.{self.score}_score.html"
            ],
        )

    def _compute(
        self,
        predictions: list[int],
        references: list[int],
        labels: list[int] | None = None,
        average: str | None = "macro",
        pos_label: int = 1,
        zero_division: float = 0.0,
    ) -> dict[str, float | list[float]]:
        fn = getattr(metrics, f"{self.score}_score")
        value = fn(
            references, predictions, labels=labels, average=average, pos_label=pos_label, zero_division=zero_division
        )
        return {self.score: float(value) if np.ndim(value) == 0 else [float(v) for v in value]}
