"""The final model on the test split: its scores (single view and test-time augmentation), the fold check, the weight
average against the best checkpoint, and the attack suite."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from datasets import DatasetDict
from transformers import PreTrainedModel

from ..attacks.model_attacks import Target
from ..attacks.suite import AttackSuite, load_plain_images, predict_logits, sample_indices
from ..attacks.weights_only import weights_only_experiment
from ..cipher import BlockCipher
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification
from ..plain_augment import Augment
from .arguments import RunArguments
from .evaluation import compute_classification_metrics
from .models import Setup
from .weight_averaging import WeightAverage, score_weight_average

logger = logging.getLogger(__name__)


@dataclass
class TestResults:
    """The keyed model and what it scored on the (plain, uint8) test images, encrypted by the key holder."""

    keyed: PreTrainedModel
    images: torch.Tensor
    labels: torch.Tensor
    logits: torch.Tensor
    metrics: dict[str, float]
    tta: dict[str, float] | None
    fold_check: dict[str, Any] | None
    weight_average: dict[str, Any] | None


def evaluate_on_test(
    trained: PreTrainedModel,
    args: RunArguments,
    setup: Setup,
    dataset: DatasetDict,
    processor: LCryptImageProcessor,
    cipher: BlockCipher | None,
    fold: Callable[[PreTrainedModel], PreTrainedModel],
    averager: WeightAverage | None,
    id2label: dict[int, str],
) -> TestResults:
    """Score the final keyed model on the test split. With a weight average, first score it against the best
    checkpoint and make it the final model; in fold mode, fold the trained plain model and check the fold.
    `processor` resizes the test images; `cipher` encrypts them (None: the dataset holds ciphertexts already)."""
    on_ciphertext = args.cipher.mode != "fold"
    batch_size = args.training.per_device_eval_batch_size
    predict = partial(predict_logits, image_mean=setup.image_mean, image_std=setup.image_std, batch_size=batch_size)
    images, labels = load_plain_images(dataset["test"], processor)
    to_model = cipher.encrypt if cipher is not None else (lambda x: x)
    weight_average = None
    if averager is not None:
        splits = {"validation": load_plain_images(dataset["validation"], processor), "test": (images, labels)}
        encrypt = to_model if on_ciphertext else (lambda x: x)
        weight_average = score_weight_average(
            trained,
            averager,
            splits,
            partial(predict, transform=encrypt),
            id2label,
            args.training.metric_for_best_model,
        )
    keyed = trained if on_ciphertext else fold(trained)
    logits = predict(keyed, images, transform=to_model)
    metrics = compute_classification_metrics(logits.numpy(), labels.numpy(), id2label)
    tta = None
    if args.data.tta:
        augment = Augment(rotate90=args.data.augment_orientation)
        tta = tta_metrics(keyed, images, labels, logits, augment, partial(predict, transform=to_model), id2label)
    fold_check = None if on_ciphertext else check_fold(trained, images, logits, predict)
    return TestResults(keyed, images, labels, logits, metrics, tta, fold_check, weight_average)


def tta_metrics(
    keyed: PreTrainedModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    logits: torch.Tensor,
    augment: Augment,
    predict: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor],
    id2label: dict[int, str],
) -> dict[str, float]:
    """Test metrics of the class probabilities averaged over the orientations `augment` draws from, each view made
    from the plain image and then encrypted; `logits` are the identity view's."""
    views = augment.orientations()
    probabilities = logits.softmax(-1)  # views[0] is the identity
    for view in views[1:]:
        probabilities += predict(keyed, view(images)).softmax(-1)
    probabilities /= len(views)
    # log-probabilities are logits whose softmax is the averaged distribution
    metrics = compute_classification_metrics(probabilities.log().numpy(), labels.numpy(), id2label)
    return {**metrics, "views": len(views)}


def check_fold(
    plain: PreTrainedModel,
    images: torch.Tensor,
    keyed_logits: torch.Tensor,
    predict: Callable[[PreTrainedModel, torch.Tensor], torch.Tensor],
) -> dict[str, Any]:
    """Compare the plain model on plain `images` with the keyed model's logits on the same images encrypted."""
    plain_logits = predict(plain, images)
    same = int((plain_logits.argmax(-1) == keyed_logits.argmax(-1)).sum())
    check = {
        "num_images": len(images),
        "identical_predictions": same,
        "all_identical": same == len(images),
        "max_abs_logit_diff": float((plain_logits - keyed_logits).abs().max()),
    }
    logger.info(
        "Fold check: the keyed model on encrypted test images predicts as the plain model on plain ones for %d/%d "
        "images (max |logit difference| %.2e)",
        same,
        len(images),
        check["max_abs_logit_diff"],
    )
    return check


def attack_on_test(
    test: TestResults, cipher: BlockCipher | None, setup: Setup, args: RunArguments, description: dict | None = None
) -> tuple[AttackSuite, dict[str, float]]:
    """The attack suite on (a sample of) the test split, with the final keyed model (without a `cipher`: on the
    ciphertexts, which `description` describes)."""
    subset = sample_indices(len(test.labels), args.attack.attack_max_images, args.training.seed)
    suite = AttackSuite(
        test.images[subset],
        test.labels[subset],
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
