"""The final model on the test split, scored through `Trainer.predict`: the run's collator, batch size, precision and
`compute_metrics`, and under `accelerate launch` every process scores its shard. The single view, the test-time
augmentation views, the fold check and the weight average against the best checkpoint are each a dataset passed
through `predict`; the attack suite then runs its own loop on the test images (the attack's job)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from transformers import EvalPrediction, PreTrainedModel, Trainer

from ..attacks.model_attacks import Target
from ..attacks.suite import AttackSuite, load_plain_images
from ..attacks.weights_only import weights_only_experiment
from ..cipher import BlockCipher
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification
from ..plain_augment import Augment
from .arguments import RunArguments
from .models import Setup
from .transforms import ImageTransform
from .weight_averaging import WeightAverage, score_weight_average

logger = logging.getLogger(__name__)

# What `Trainer.predict` adds to `compute_metrics`'s scores (and the loss): timings, not scores.
_TIMINGS = ("runtime", "samples_per_second", "steps_per_second", "model_preparation_time")


@dataclass
class Prediction:
    """`Trainer.predict` on a whole split (gathered on every process, in the split's order): logits, labels, and the
    scores of the Trainer's `compute_metrics` with the loss, without the `test_` prefix."""

    logits: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float]


@dataclass
class TestResults:
    """The keyed model and what it scored on the test split, encrypted by the key holder."""

    keyed: PreTrainedModel
    labels: np.ndarray
    logits: np.ndarray
    metrics: dict[str, float]
    tta: dict[str, float] | None
    fold_check: dict[str, Any] | None
    weight_average: dict[str, Any] | None


def predict(trainer: Trainer, dataset: Dataset, model: PreTrainedModel | None = None) -> Prediction:
    """`trainer.predict(dataset)`, by `model` for once instead of the Trainer's own (the folded keyed model of a fold
    run), in the Trainer's precision."""
    with _predicting_with(trainer, model):
        output = trainer.predict(dataset, metric_key_prefix="test")
    logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
    scores = {name.removeprefix("test_"): value for name, value in output.metrics.items()}
    return Prediction(logits, output.label_ids, {n: v for n, v in scores.items() if n not in _TIMINGS})


@contextlib.contextmanager
def _predicting_with(trainer: Trainer, model: PreTrainedModel | None) -> Iterator[None]:
    """`Trainer.predict` runs `trainer.model`; another model takes its place on the Trainer's device, under the
    accelerator's autocast as the trained model (prepared by the accelerator) runs."""
    if model is None:
        yield
        return
    trained, trainer.model = trainer.model, model.to(trainer.args.device)
    try:
        with trainer.accelerator.autocast():
            yield
    finally:
        trainer.model = trained


def evaluate_on_test(
    trainer: Trainer,
    args: RunArguments,
    dataset: DatasetDict,
    processor: LCryptImageProcessor,
    plain_processor: LCryptImageProcessor,
    fold: Callable[[PreTrainedModel], PreTrainedModel],
    averager: WeightAverage | None,
) -> TestResults:
    """Score the final keyed model on the test split. With a weight average, first score it against the best
    checkpoint and make it the final model; in fold mode, fold the trained plain model and check the fold.
    `processor` is the key holder's: it encrypts the plain test images (a dataset of ciphertexts: it only resizes
    them); in fold mode the trained plain model sees them through `plain_processor`."""
    fold_mode = args.cipher.mode == "fold"
    keyed_test = dataset["test"].with_transform(ImageTransform(processor))
    trained_test = dataset["test"].with_transform(ImageTransform(plain_processor)) if fold_mode else keyed_test
    weight_average = None
    if averager is not None:  # each candidate in the trained model's own view: plain images in fold mode
        splits = {"validation": trainer.eval_dataset, "test": trained_test}
        weight_average = score_weight_average(
            trainer.model,
            averager,
            lambda split: predict(trainer, splits[split]).metrics,
            list(splits),
            args.training.metric_for_best_model,
        )
    keyed = fold(trainer.model) if fold_mode else trainer.model
    single = predict(trainer, keyed_test, keyed if fold_mode else None)
    tta = None
    if args.data.tta:
        orientations = Augment(rotate90=args.data.augment_orientation).orientations()
        views = [dataset["test"].with_transform(ImageTransform(processor, view)) for view in orientations[1:]]
        tta = tta_metrics(trainer, single, views, keyed if fold_mode else None)
    fold_check = check_fold(predict(trainer, trained_test), single) if fold_mode else None
    return TestResults(keyed, single.labels, single.logits, single.metrics, tta, fold_check, weight_average)


def tta_metrics(
    trainer: Trainer, single: Prediction, views: list[Dataset], model: PreTrainedModel | None = None
) -> dict[str, float]:
    """Test metrics (the Trainer's `compute_metrics`) of the class probabilities averaged over the identity view, whose
    prediction is `single`, and the other `views` of the test split (each made from the plain images, then
    encrypted)."""
    probabilities = torch.from_numpy(single.logits).double().softmax(-1)
    for view in views:
        probabilities += torch.from_numpy(predict(trainer, view, model).logits).double().softmax(-1)
    probabilities /= 1 + len(views)
    # log-probabilities are logits whose softmax is the averaged distribution
    metrics = trainer.compute_metrics(EvalPrediction(probabilities.log().numpy(), single.labels))
    return {**metrics, "views": 1 + len(views)}


def check_fold(plain: Prediction, keyed: Prediction) -> dict[str, Any]:
    """Compare the plain model on plain test images with the keyed model on the same images encrypted."""
    same = int((plain.logits.argmax(-1) == keyed.logits.argmax(-1)).sum())
    check = {
        "num_images": len(plain.logits),
        "identical_predictions": same,
        "all_identical": same == len(plain.logits),
        "max_abs_logit_diff": float(np.abs(plain.logits - keyed.logits).max()),
    }
    logger.info(
        "Fold check: the keyed model on encrypted test images predicts as the plain model on plain ones for %d/%d "
        "images (max |logit difference| %.2e)",
        same,
        len(plain.logits),
        check["max_abs_logit_diff"],
    )
    return check


def attack_on_test(
    test: TestResults,
    split: Dataset,
    processor: LCryptImageProcessor,
    cipher: BlockCipher | None,
    setup: Setup,
    args: RunArguments,
    description: dict | None = None,
) -> tuple[AttackSuite, dict[str, float]]:
    """The attack suite on (a sample of) the test `split`, resized by `processor`, with the final keyed model (without
    a `cipher`: on the ciphertexts, which `description` describes)."""
    images, labels = load_plain_images(split, processor, args.attack.attack_max_images, args.training.seed)
    suite = AttackSuite(
        images,
        labels,
        cipher,
        setup.image_mean,
        setup.image_std,
        batch_size=args.training.per_device_eval_batch_size,
        seed=args.training.seed,
        split="test",
        description=description,
    )
    return suite, suite.run(test.keyed)


def weights_only_on_test(keyed: LCryptViTForImageClassification, suite: AttackSuite, key: LCryptKey) -> dict[str, Any]:
    """The key guessed from the final model's weights alone, scored with the key on the test sample
    (`hf-lcrypt attack --weights-only`'s scores): what anyone holding the published weights could read."""
    config = keyed.config
    plain = Target(keyed.to_plain(key).eval(), config.folded_image_mean, config.folded_image_std)
    unseen = suite.images.permute(0, 2, 3, 1).contiguous().numpy()
    scores, _ = weights_only_experiment(keyed, suite.cipher, unseen, suite.labels, plain, suite.batch_size)
    return {**scores, "reference_model": False}
