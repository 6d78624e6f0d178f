"""Recall (sensitivity), macro-averaged over classes by default (evaluate metric script shipped with hf-lcrypt)."""

from hf_lcrypt.training.metrics import _scores


class Recall(_scores.AveragedScore):
    """The fraction of a class's images that are found; macro recall is balanced accuracy."""

    score = "recall"
    description = (
        "Recall = TP / (TP + FN) per class, averaged without weights by default: of the images of a class, how many "
        "are found. Macro recall equals balanced accuracy."
    )
