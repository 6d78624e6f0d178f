"""Classification metrics shipped as `evaluate` scripts inside the package, so they load by path with no Hub access.

Each metric lives in `<name>/<name>.py` (evaluate wants the folder and the script to share the name).
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import evaluate

METRIC_NAMES = ("accuracy", "f1", "precision", "recall", "roc_auc")


def metric_path(name: str) -> str:
    """The folder of a shipped metric script, as `evaluate.load` takes it."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; hf-lcrypt ships {list(METRIC_NAMES)}.")
    return str(resources.files(__name__) / name)


@cache
def load_metric(name: str) -> evaluate.EvaluationModule:
    """Load (once per process) a shipped metric; kept in memory so that concurrent runs share no cache files."""
    return evaluate.load(metric_path(name), keep_in_memory=True)
