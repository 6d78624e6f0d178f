"""The `Trainer` of a run: datasets with the encrypting transform, the attack evaluation and the other callbacks, and
the distillation/mixup loss when asked for."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from datasets import DatasetDict
from transformers import EarlyStoppingCallback, PreTrainedModel, Trainer, TrainerCallback

from ..attacks.suite import AttackEvalCallback, AttackSuite, load_plain_images
from ..ciphertext_augment import CiphertextAugment
from ..encrypted_datasets import EncryptedSource
from ..image_datasets import label_maps
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification
from ..plain_augment import Augment
from .arguments import RunArguments
from .distillation import DistillationTrainer, load_teacher
from .evaluation import make_compute_metrics
from .models import Setup
from .transforms import ImageTransform, Mixup
from .weight_averaging import WeightAverage

logger = logging.getLogger(__name__)


@dataclass
class RunCallbacks:
    """The callbacks whose results the run reads after training."""

    attacks: AttackEvalCallback
    averager: WeightAverage | None


def build_trainer(
    args: RunArguments,
    model: PreTrainedModel,
    setup: Setup,
    key: LCryptKey | None,
    dataset: DatasetDict,
    fold: Callable[[PreTrainedModel], PreTrainedModel],
    resumed_from: str | None,
    encrypted: EncryptedSource | None = None,
) -> tuple[Trainer, RunCallbacks]:
    """A `Trainer` (a `DistillationTrainer` with a teacher or soft labels) whose training images are augmented while
    plain, then encrypted on the fly (plain in fold mode), and whose every evaluation also runs the attack suite.

    On an `encrypted` dataset the images are ciphertexts already: nothing is encrypted, only the ciphertext
    augmentations apply, and the attack suite runs the conditions that need no key."""
    mode, steps = args.cipher.mode, args.cipher.cipher_steps
    data = args.data
    id2label = label_maps(dataset)[0]
    if encrypted is not None:
        processor = setup.processor(None, steps, key_id=encrypted.key_id)
        saved_processor = LCryptImageProcessor.for_model(model)  # encrypts for the key holder, who has the key
        cipher = None
    else:
        keyed_processor = setup.processor(key, steps)
        processor = saved_processor = keyed_processor if mode != "fold" else setup.processor(None, steps)
        cipher = keyed_processor.cipher(setup.image_size, setup.image_size)
    augment = Augment(rotate90=data.augment_orientation) if data.augment and encrypted is None else None
    teacher, teacher_processor = None, None
    if args.distillation.teacher:
        teacher, teacher_processor = load_teacher(args.distillation.teacher, key, id2label)
    mixup = Mixup(data.mixup, len(id2label)) if data.mixup > 0 else None
    on_ciphertext = CiphertextAugment(
        setup.block_size,
        setup.image_mean,
        setup.image_std,
        len(id2label),
        cutmix=data.block_cutmix,
        erasing=data.block_erasing,
        contrast=data.contrast,
        noise=data.pixel_noise,
    )
    batch_augment = on_ciphertext if on_ciphertext.active else None
    train_transform = ImageTransform(processor, augment, teacher_processor, mixup, batch_augment)
    train_set = dataset["train"].with_transform(train_transform)
    eval_set = dataset["validation"].with_transform(ImageTransform(processor))

    training = args.training
    images, labels = load_plain_images(dataset["validation"], processor, args.attack.attack_max_images, training.seed)
    suite = AttackSuite(
        images,
        labels,
        cipher,
        setup.image_mean,
        setup.image_std,
        batch_size=training.per_device_eval_batch_size,
        seed=training.seed,
        description=encrypted and encrypted.describe(),
    )
    callbacks = RunCallbacks(
        attacks=AttackEvalCallback(suite, prepare_model=fold if mode == "fold" else None),
        averager=WeightAverage(training.ema_decay, resumed_from) if training.ema_decay is not None else None,
    )
    trainer_callbacks: list[TrainerCallback] = [callbacks.attacks]
    if callbacks.averager is not None:
        trainer_callbacks.append(callbacks.averager)
    if training.early_stopping_patience:
        trainer_callbacks.append(EarlyStoppingCallback(early_stopping_patience=training.early_stopping_patience))
    kwargs = dict(
        model=model,
        args=training.for_trainer(),
        train_dataset=train_set,
        eval_dataset=eval_set,
        processing_class=saved_processor,
        compute_metrics=make_compute_metrics(id2label),
        callbacks=trainer_callbacks,
    )
    if teacher is None and mixup is None and not on_ciphertext.mixes_labels:
        trainer = Trainer(**kwargs)
    else:
        distillation = args.distillation
        trainer = DistillationTrainer(
            **kwargs,
            teacher=teacher,
            alpha=distillation.distill_alpha,
            kind=distillation.distillation,
            temperature=distillation.distill_temperature,
            label_smoothing=training.label_smoothing_factor,
        )
    if args.model.embedding_weight_decay is not None:
        trainer.optimizer_cls_and_kwargs = embedding_decay_optimizer(trainer, args.model.embedding_weight_decay)
    return trainer, callbacks


def embedding_decay_optimizer(trainer: Trainer, weight_decay: float) -> tuple[type, dict[str, Any]]:
    """The Trainer's optimizer class and arguments with the key-bearing embeddings in a parameter group of their own
    `weight_decay`, for `Trainer.optimizer_cls_and_kwargs`: `create_optimizer` takes the groups from `params`, so the
    scheduler drives every group and a resumed run rebuilds the same groups before it loads the optimizer's state.
    The other parameters keep the Trainer's own split (`get_decay_parameter_names`)."""
    model = trainer.model
    optimizer_cls, kwargs = trainer.get_optimizer_cls_and_kwargs(trainer.args, model)
    decay = set(trainer.get_decay_parameter_names(model))
    embeddings = [p for p in LCryptViTForImageClassification.key_bearing_parameters(model) if p.requires_grad]
    chosen = {id(parameter) for parameter in embeddings}
    others = [(name, p) for name, p in model.named_parameters() if p.requires_grad and id(p) not in chosen]
    groups = [
        {"params": [p for name, p in others if name in decay], "weight_decay": trainer.args.weight_decay},
        {"params": [p for name, p in others if name not in decay], "weight_decay": 0.0},
        {"params": embeddings, "weight_decay": weight_decay},
    ]
    return optimizer_cls, {**kwargs, "params": [group for group in groups if group["params"]]}
