"""An exponential moving average (EMA) of the weights during training, as timm's `ModelEma` and DeiT's `--model-ema`.

Averaging keeps the key absorbable: folding the key in is one fixed linear map of the parameters (a signed
permutation with mean = std = 0.5; with other normalisations the bias also gains a linear function of the weights),
and weighted averages commute with linear maps. So the average of an `encrypted` run's keyed weights is the keyed form
of the average of the plain run's weights, and a `fold` run's average folds like any plain model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from .evaluation import compute_classification_metrics

logger = logging.getLogger(__name__)

AVERAGE_FILE = "weight_average.safetensors"


class WeightAverage(TrainerCallback):
    """Keeps `average = decay * average + (1 - decay) * weights` after every optimiser step, over every floating-point
    entry of the model's state dict (parameters and normalisation statistics).

    The decay warms up as `min(decay, (1 + step) / (10 + step))`, so that the first steps do not keep the random
    initialisation in the average for thousands of steps. The average is saved next to each checkpoint (a file of
    keyed weights, as secret as the checkpoint) and read back from `resume_from`.
    """

    def __init__(self, decay: float, resume_from: str | None = None):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"The weight-average decay must lie strictly between 0 and 1, got {decay}.")
        self.decay = decay
        self.resume_from = resume_from
        self.average: dict[str, torch.Tensor] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        weights = averaged_entries(model)
        if self.resume_from is None:
            self.average = {name: value.detach().clone() for name, value in weights.items()}
            return
        path = Path(self.resume_from) / AVERAGE_FILE
        if not path.is_file():
            raise ValueError(
                f"{self.resume_from} has no {AVERAGE_FILE}: it was not trained with a weight average. Resume "
                "without --ema_decay, or start the run again."
            )
        saved = load_file(str(path), device=str(next(iter(weights.values())).device))
        if saved.keys() != weights.keys():
            raise ValueError(f"{path} averages other weights than this model has; it belongs to another model.")
        self.average = saved

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None, **kwargs
    ) -> None:
        decay = min(self.decay, (1 + state.global_step) / (10 + state.global_step))
        weights = averaged_entries(model)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.average.values()), [weights[n] for n in self.average], 1.0 - decay)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs) -> None:
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            save_file({n: t.contiguous() for n, t in self.average.items()}, str(folder / AVERAGE_FILE))


def averaged_entries(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state-dict entries an average covers: every floating-point one (integer counters are not averaged)."""
    return {name: value for name, value in model.state_dict().items() if value.is_floating_point()}


def check_score_metric(metric: str, id2label: dict[int, str]) -> None:
    """Fail before training, not after it, when `score_weight_average` could not score by `metric`."""
    n = len(id2label)
    known = compute_classification_metrics(np.eye(n), np.arange(n), id2label)
    if metric.removeprefix("eval_") not in known:
        raise ValueError(
            f"--ema_decay compares the weight average with the best checkpoint by --metric_for_best_model, which "
            f"must then be a classification score, one of {sorted(known)}; got {metric!r}."
        )


def score_weight_average(
    model: PreTrainedModel,
    averager: WeightAverage,
    evaluate: Callable[[str], Mapping[str, float]],
    splits: Sequence[str],
    metric: str,
) -> dict[str, Any]:
    """Score the best checkpoint (the model as training left it) and the weight average on each split (`evaluate`
    scores `model` as it stands on one), then leave the average in `model`: asked for, it is the final model. The
    scores are for comparison, and the test ones are the fair ones: the checkpoint was picked for its validation
    score, the best of many, which flatters it on validation."""
    candidates = {
        "best_checkpoint": {name: value.clone() for name, value in averaged_entries(model).items()},
        "weight_average": averager.average,
    }
    score = metric.removeprefix("eval_")
    scores: dict[str, dict[str, float]] = {}
    for name, weights in candidates.items():
        model.load_state_dict(weights, strict=False)
        scores[name] = {split: evaluate(split)[score] for split in splits}
    logger.info("Weight average (decay %s) against the best checkpoint, %s: %s", averager.decay, metric, scores)
    return {"decay": averager.decay, "metric": metric, "scores": scores}
