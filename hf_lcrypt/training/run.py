"""One training run, from settings to a Hub-ready folder: `scripts/train.py` and `hf-lcrypt train` call `main`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict
from transformers import PreTrainedModel, Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..attacks.suite import write_attack_report
from ..cipher import BlockCipher
from ..encrypted_datasets import EncryptedSource, check_image_metadata, read_encrypted_source
from ..image_datasets import label_maps
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import KEY_ENV_VAR, LCryptKey
from ..signals import describe, exit_status, stop_on_sigterm
from .arguments import RunArguments, parse_args
from .data import DataSummary, load_training_data
from .distillation import check_teacher, check_teacher_split
from .evaluation import plot_confusion_matrix
from .keyless import prepare_ciphertext_run
from .models import (
    build_setup,
    check_checkpoint_key,
    check_foldable,
    check_geometry,
    check_output_dir,
    checkpoint_key_id,
    checkpoints_keep_parameter_names,
    find_checkpoint,
    fresh_init_seed,
    load_or_create_key,
    model_to_train,
    secret_init_seed,
)
from .presets import MODEL_PRESETS
from .record import (
    BestValidation,
    ModelSummary,
    RunMetrics,
    Timings,
    TrainingProgress,
    hardware_info,
    json_safe,
    write_rank_file,
)
from .scoring import attack_on_test, evaluate_on_test, weights_only_on_test
from .trainer import build_trainer
from .weight_averaging import check_score_metric

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: the final metrics (as in metrics.json; empty on processes other than the first) and
    where its files are."""

    metrics: dict[str, Any]
    paths: dict[str, Path]
    log_history: list[dict[str, Any]]


def run(args: RunArguments) -> TrainResult:
    """Train, evaluate on the test split, attack, write the Hub-ready folder `<output_dir>/model`, and with
    `--push_to_hub` publish it through hf-lcrypt's checks."""
    start = time.perf_counter()
    training, mode = args.training, args.cipher.mode
    output_dir = Path(training.output_dir)
    model_dir = output_dir / "model"

    resumed_from, dataset, data_summary, encrypted, key = prepare(args)
    id2label, label2id = label_maps(dataset)
    if encrypted is None:  # plain images: the key holder's run
        with training.main_process_first(local=False, desc="key file"):  # one process creates it, the others read it
            key = load_or_create_key(args.key_path)
        check_checkpoint_key(resumed_from, key.key_id)
        if training.dataloader_num_workers > 0:
            os.environ[KEY_ENV_VAR] = str(args.key_path.resolve())  # for DataLoader workers started by spawn
    key_id = encrypted.key_id if encrypted is not None else key.key_id

    set_seed(secret_init_seed(key, training.seed) if key is not None else fresh_init_seed())
    setup = build_setup(args, id2label, label2id)
    set_seed(training.seed)
    steps = args.cipher.cipher_steps
    fold = setup.folder(key, steps) if key is not None else setup.binder(key_id, steps)
    model = model_to_train(setup, mode, fold, args.model.patch_dropout, args.model.freeze_position_embeddings)
    trainer, callbacks = build_trainer(args, model, setup, key, dataset, fold, resumed_from, encrypted)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info(
        "Mode %s, key %s%s, %s (%.2fM parameters), images %dx%d in blocks of %d, world size %d",
        *(mode, key_id, " (not held: ciphertexts only)" if key is None else ""),
        *(args.model.from_plain or f"preset {args.model.model!r}", n_params / 1e6),
        *(setup.image_size, setup.image_size, setup.block_size, training.world_size),
    )

    train_seconds = 0.0
    if training.max_steps > 0 or training.num_train_epochs > 0:
        train_seconds = trainer.train(resume_from_checkpoint=resumed_from).metrics["train_runtime"]
    if training.world_size > 1:
        write_rank_file(training, output_dir, trainer.state.global_step)

    # The test split and the attacks, every process alike (sharded models need all of them for a forward).
    eval_start = time.perf_counter()
    cipher = None if encrypted is not None else BlockCipher(key, setup.image_size, setup.block_size, steps=steps)
    plain = setup.processor(None, steps)
    key_holder = setup.processor(None if encrypted is not None else key, steps, key_id=key_id)  # ciphertexts: resizes
    test = evaluate_on_test(trainer, args, dataset, key_holder, plain, fold, callbacks.averager)
    eval_seconds = time.perf_counter() - eval_start
    description = encrypted and encrypted.describe()
    suite, attack_results = attack_on_test(test, dataset["test"], plain, cipher, setup, args, description)
    attack_seconds = time.perf_counter() - eval_start - eval_seconds
    save_model_folder(trainer, test.keyed, mode, model_dir)

    paths: dict[str, Path] = {"model_folder": model_dir, "metrics": model_dir / "metrics.json"}
    metrics = RunMetrics(
        mode=mode,
        key_id=key_id,
        dataset=args.data.data,
        base_model=args.model.from_plain,
        folded_from_public=args.model.from_plain is not None and not Path(args.model.from_plain).exists(),
        model=ModelSummary(
            preset=None if args.model.from_plain else args.model.model,
            patch_embedding=args.model.patch_embedding,
            parameters=n_params,
            image_size=setup.image_size,
            block_size=setup.block_size,
            cipher_steps=list(args.cipher.cipher_steps),
        ),
        test={**test.metrics, "num_images": len(test.labels)},
        per_class_f1={name: test.metrics[f"f1_{name}"] for name in id2label.values()},
        test_tta=test.tta,
        weight_average=test.weight_average,
        fold_check=test.fold_check,
        best_validation=BestValidation(
            metric=training.metric_for_best_model,
            value=trainer.state.best_metric,
            checkpoint=Path(trainer.state.best_model_checkpoint or "").name or None,
        ),
        data=data_summary,
        training=TrainingProgress(
            global_step=trainer.state.global_step,
            epoch=trainer.state.epoch,
            resumed_from=Path(resumed_from).name if resumed_from else None,
        ),
        timings=Timings(train_seconds, eval_seconds, attack_seconds, time.perf_counter() - start),
        hardware=hardware_info(training),
        config=args.settings(),
        training_args=training.to_dict(),
        trained_without_key=encrypted is not None and key is None,
        dataset_encryption=encrypted and {**encrypted.describe(), "dataset": encrypted.dataset_info},
    )
    if training.process_index == 0:
        paths.update(write_attack_report(suite, attack_results, model_dir, history=callbacks.attacks.history))
        if args.attack.attack_weights_only:
            paths["weights_only_attack"] = model_dir / "weights_only_attack.json"
            scores = weights_only_on_test(test.keyed, suite, key)
            paths["weights_only_attack"].write_text(json.dumps(json_safe(scores), indent=2) + "\n")
        paths["confusion_matrix"] = plot_confusion_matrix(
            test.labels,
            test.logits.argmax(-1),
            [id2label[i] for i in sorted(id2label)],
            model_dir / "confusion_matrix.png",
            title=f"Test set ({len(test.labels)} images), keyed model",
        )
        metrics.write(paths["metrics"])
        paths["log_history"] = output_dir / "log_history.json"
        paths["log_history"].write_text(json.dumps(json_safe(trainer.state.log_history), indent=2) + "\n")
        if training.push_to_hub:
            paths["hub"] = Path(push_to_hub(args, model_dir, key, metrics.folded_from_public))
    trainer.accelerator.wait_for_everyone()
    return TrainResult(metrics.to_dict() if training.process_index == 0 else {}, paths, trainer.state.log_history)


class InvalidRun(ValueError):
    """A setting found wrong before anything was written (the data, the sizes, the output folder, a checkpoint)."""


def prepare(
    args: RunArguments,
) -> tuple[str | None, DatasetDict, DataSummary, EncryptedSource | None, LCryptKey | None]:
    """Check every setting that can be checked before the run writes anything, a new key file included, so that a
    failed run leaves nothing behind; returns the checkpoint to resume from, the data, and for an encrypted dataset
    its `lcrypt.json` and the key file given for it (None: trained without the key)."""
    training = args.training
    output_dir = Path(training.output_dir)
    encrypted, key = None, None
    try:
        encrypted = read_encrypted_source(args.data.data)  # the dataset holds ciphertexts: no key needed
        if encrypted is not None:
            key = prepare_ciphertext_run(args, encrypted)  # its geometry into args, refusals, a matching key file
        with training.main_process_first(local=False, desc="output folder"):
            main_process = training.process_index == 0
            check_output_dir(output_dir, training.resume_from_checkpoint, training.overwrite_output_dir, main_process)
        resumed_from = find_checkpoint(training.resume_from_checkpoint, output_dir)
        if encrypted is not None:
            check_checkpoint_key(resumed_from, encrypted.key_id, f"The key of {args.data.data}'s ciphertexts")
        if encrypted is None and checkpoint_key_id(resumed_from) and not args.key_path.is_file():
            raise ValueError(
                f"{resumed_from} is folded with key {checkpoint_key_id(resumed_from)}, and there is no key file at "
                f"{args.key_path}; pass --key_file with the key the run was trained with."
            )
        foldable = args.model.from_plain is not None or MODEL_PRESETS[args.model.model].foldable
        check_foldable(args.cipher.mode, foldable)
        model = repr(args.model.model)
        if args.attack.attack_weights_only and not foldable:
            raise ValueError(f"--attack_weights_only reads a ViT's embeddings; {model} has none. Leave it out.")
        if training.push_to_hub and not foldable:
            raise ValueError(f"--push_to_hub publishes keyed ViTs; {model} is not one. Upload its folder yourself.")
        if encrypted is not None and not foldable:
            raise ValueError(
                f"{model} cannot be bound to a key; on an encrypted dataset train a ViT preset, whose config names the "
                "dataset's key_id so that the key holder can use it."
            )
        check_geometry(args)
        with training.main_process_first(desc="dataset loading"):
            dataset, data_summary = load_training_data(args.data.data, args.data.split_seed, args.data.max_per_class)
            if encrypted is not None:
                check_image_metadata(dataset, encrypted, args.data.data)
        if training.ema_decay is not None:
            check_score_metric(training.metric_for_best_model, label_maps(dataset)[0])
        if args.distillation.teacher:
            teacher, data = Path(args.distillation.teacher), args.data
            check_teacher(teacher, label_maps(dataset)[0])
            check_teacher_split(teacher, data.split_seed, data.max_per_class, data_summary.split_fingerprints)
    except (ValueError, FileNotFoundError) as err:
        raise InvalidRun(str(err)) from err
    return resumed_from, dataset, data_summary, encrypted, key


def save_model_folder(trainer: Trainer, keyed: PreTrainedModel, mode: str, model_dir: Path) -> None:
    """The keyed model and its processor in the standard layout (no secret, no pickle), in a fresh folder: nothing of
    a model it replaces (`--overwrite_output_dir`, a resumed run), such as an attack report, outlives it."""
    if trainer.args.process_index == 0 and model_dir.exists():
        shutil.rmtree(model_dir)
    trainer.accelerator.wait_for_everyone()
    if mode != "fold":
        checkpoints_keep_parameter_names(trainer.model, False)  # the standard layout, as in fold mode
        trainer.save_model(str(model_dir))  # every process: gathers sharded weights; writes model and processor
    elif trainer.args.process_index == 0:
        keyed.save_pretrained(model_dir)
        LCryptImageProcessor.for_model(keyed).save_pretrained(model_dir)
    if trainer.args.process_index == 0:
        (model_dir / "training_args.bin").unlink(missing_ok=True)  # a pickle save_model adds; not for the Hub


@contextlib.contextmanager
def _hub_token(token: str | None) -> Iterator[None]:
    """`--hub_token` for the upload: huggingface_hub reads HF_TOKEN when it needs a token."""
    previous = os.environ.get("HF_TOKEN")
    if token:
        os.environ["HF_TOKEN"] = token
    try:
        yield
    finally:
        if token:
            os.environ.pop("HF_TOKEN") if previous is None else os.environ.update(HF_TOKEN=previous)


def push_to_hub(args: RunArguments, model_dir: Path, key: LCryptKey | None, folded_from_public: bool) -> str:
    """`--push_to_hub`: the final folder through `publish_model`'s checks (a fresh process loads it with transformers
    alone, no file holds the key, the card's model-index reads back), then one upload to `--hub_model_id` (default:
    the output folder's name). The key and the checkpoints stay behind. Without the key (a run on ciphertexts) the
    logits are compared on ciphertexts, and the weights check reads the key holder's `weights_only_attack.json`."""
    from ..hub.publish import publish_model

    training = args.training
    repo_id = training.hub_model_id or Path(training.output_dir).name
    base_model = args.model.from_plain if folded_from_public else None
    with _hub_token(training.hub_token):
        result = publish_model(
            model_dir,
            repo_id,
            key,
            private=bool(training.hub_private_repo),
            folded_from_public=folded_from_public,
            dataset=args.data.data,
            base_model=base_model,
            allow_leaky_weights=args.attack.allow_leaky_weights,
        )
    logger.info("Published %s (%d files) to %s", model_dir, len(result.files), result.url)
    return str(result.url)


def _score(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"  # None: e.g. the AUROC of a one-class test split


def print_summary(result: TrainResult) -> None:
    """The test scores and where every file is, for the console."""
    metrics = result.metrics
    test = metrics["test"]
    kind = "encrypted" if metrics["model"]["cipher_steps"] else "plain"
    print(
        f"\nTest accuracy {_score(test['accuracy'])}, macro F1 {_score(test['f1'])}, AUROC {_score(test['roc_auc'])} "
        f"on {test['num_images']} {kind} test images (key {metrics['key_id']})."
    )
    if tta := metrics["test_tta"]:
        print(
            f"Averaged over {tta['views']} orientations: accuracy {_score(tta['accuracy'])}, macro F1 "
            f"{_score(tta['f1'])}."
        )
    for name, path in result.paths.items():
        print(f"  {name.replace('_', ' '):>22}: {path}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the settings (a config file and/or flags), run, and print where the results are."""
    try:
        args = parse_args(argv)
    except (ValueError, FileNotFoundError) as err:  # a bad flag or file: one line, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.training.process_index == 0:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    try:
        with stop_on_sigterm():
            result = run(args)
    except KeyboardInterrupt as err:
        output_dir = Path(args.training.output_dir)
        last = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        where = (
            f"the last checkpoint is {last}: continue with --resume_from_checkpoint last"
            if last
            else "no checkpoint was saved yet"
        )
        print(f"error: training {describe(err)}; {where}.", file=sys.stderr)
        return exit_status(err)
    except InvalidRun as err:  # a setting found wrong once read (data, sizes, output folder, checkpoint)
        print(f"error: {err}", file=sys.stderr)
        return 2
    if result.metrics:
        print_summary(result)
    return 0
