"""F1 score, macro-averaged over classes by default (evaluate metric script shipped with hf-lcrypt)."""

from hf_lcrypt.training.metrics import _scores


class F1(_scores.AveragedScore):
    """The harmonic mean of precision and recall; macro averaging weighs a rare class as much as a common one."""

    score = "f1"
    description = (
        "F1 = 2 * precision * recall / (precision + recall), computed per class and (by default) averaged without "
        "weights, so that a classifier cannot score well by ignoring a rare class."
    )
