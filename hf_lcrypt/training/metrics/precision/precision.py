"""Precision, macro-averaged over classes by default (evaluate metric script shipped with hf-lcrypt)."""

from hf_lcrypt.training.metrics import _scores


class Precision(_scores.AveragedScore):
    """The fraction of predictions of a class that are right."""

    score = "precision"
    description = (
        "Precision = TP / (TP + FP) per class, averaged without weights by default: of the images predicted to be in "
        "a class, how many are."
    )
