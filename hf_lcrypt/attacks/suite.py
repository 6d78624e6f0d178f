"""Robustness and privacy checks of a keyed classifier, during training (a `TrainerCallback`) and after it (a report).

Every check classifies the same fixed subset of plain uint8 images after encrypting them with the key, with a wrong
key, not at all, or with the key and then corrupting the ciphertext (Gaussian noise, random bit flips, MSB flips).
It runs as one direct batched loop: a nested `Trainer.evaluate` per condition would cost a dataloader, a gather and
a round of callbacks each, and would reset the Trainer's evaluation flags.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from transformers import PreTrainedModel, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from ..cipher import BlockCipher
from ..image_processing_lcrypt import LCryptImageProcessor
from .corruptions import DEFAULT_STRENGTHS, FAMILIES
from .model_attacks import Target, evaluating, with_key, wrong_keys
from .plots import plot_curves

logger = logging.getLogger(__name__)

Condition = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def sample_indices(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """Up to `limit` indices of range(n), chosen at random (seeded) and kept in order, so that a class-sorted split
    still yields every class."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def load_plain_images(
    dataset: Dataset, processor: LCryptImageProcessor, limit: int | None = None, seed: int = 0, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,C,H,W) uint8 images resized (RGB) exactly as the processor resizes them, and their labels (at most `limit`
    of them, chosen by `sample_indices`)."""
    if limit is not None and limit < len(dataset):
        dataset = dataset.select(sample_indices(len(dataset), limit, seed))
    images = []
    for start in range(0, len(dataset), chunk):
        batch = dataset[start : start + chunk]["image"]
        out = processor(batch, do_encrypt=False, do_rescale=False, do_normalize=False, return_tensors="pt")
        images.append(out["pixel_values"].round().to(torch.uint8))
    return torch.cat(images), torch.as_tensor(dataset["label"], dtype=torch.long)


@torch.no_grad()
def predict_logits(
    model: PreTrainedModel,
    images: torch.Tensor,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
    batch_size: int = 64,
) -> torch.Tensor:
    """Logits (CPU, float32) of `model` in eval mode on uint8 `images` passed through `transform`, then rescaled and
    normalised as `Target` does."""
    target = Target(model, image_mean, image_std)
    with evaluating(model):
        return torch.cat([target.logits(transform(chunk).float() / 255).cpu() for chunk in images.split(batch_size)])


# What an attack suite without the key leaves out, and why: the key holder runs these (`KEY_HOLDER_COMMAND`).
KEY_HOLDER_CONDITIONS = {
    "wrong_key": "accuracy on the same images encrypted with another key (needs the plain images)",
    "plain": "accuracy on the plain images (needs the plain images)",
    "weights_only": "how much of the key the trained weights alone give away (scoring it needs the key)",
}
# It completes the model folder's own report (`hf_lcrypt.attacks.key_holder`).
KEY_HOLDER_COMMAND = "hf-lcrypt attack --model {model} --key-file KEY --data PLAIN_IMAGES"


class AttackSuite:
    """Accuracy of a keyed model on one image subset under each attack condition.

    Conditions: `clean` (encrypted with the key), `wrong_key`, `plain` (not encrypted), and `<family>_<strength>` for
    the corruptions of `FAMILIES` applied to the encrypted images. Random corruptions draw from a generator seeded
    afresh on every run, so runs at different training steps see the same noise.

    Without a `cipher` the images are ciphertexts already (a trainer without the key, whose `description` is the
    dataset's `lcrypt.json`): `clean` and the corruptions run, `wrong_key` and `plain` are left to the key holder.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        cipher: BlockCipher | None,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        strengths: dict[str, Sequence[float]] | None = None,
        batch_size: int = 64,
        seed: int = 0,
        split: str = "validation",
        description: dict[str, Any] | None = None,
    ):
        if cipher is None and description is None:
            raise ValueError("An attack suite on ciphertexts needs the cipher's public description (lcrypt.json).")
        self.images, self.labels, self.cipher = images, labels, cipher
        self.description = cipher.describe() if cipher is not None else dict(description)
        self.key_id = self.description["key_id"]
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.strengths = strengths or DEFAULT_STRENGTHS
        self.batch_size, self.seed, self.split = batch_size, seed, split
        # A fixed, public wrong key: the wrong-key accuracy is reproducible and never depends on the secret.
        self.wrong_cipher = with_key(cipher, wrong_keys(1)[0]) if cipher is not None else None

    def conditions(self) -> dict[str, Condition]:
        if self.cipher is None:
            encrypt = lambda x: x  # noqa: E731 (the images are ciphertexts)
            conditions: dict[str, Condition] = {"clean": lambda x, g: x}
        else:
            encrypt = self.cipher.encrypt
            conditions = {
                "clean": lambda x, g: encrypt(x),
                "wrong_key": lambda x, g: self.wrong_cipher.encrypt(x),
                "plain": lambda x, g: x,
            }
        for family, values in self.strengths.items():
            corrupt = FAMILIES[family].corrupt
            for value in values:
                conditions[f"{family}_{value:g}"] = lambda x, g, c=corrupt, v=value: c(encrypt(x), v, g)
        return conditions

    def run(self, model: PreTrainedModel) -> dict[str, float]:
        """`{"attack_<condition>_accuracy": accuracy}` for every condition."""
        results = {}
        for name, condition in self.conditions().items():
            generator = torch.Generator().manual_seed(self.seed)
            logits = predict_logits(
                model,
                self.images,
                self.image_mean,
                self.image_std,
                lambda x, c=condition, g=generator: c(x, g),
                self.batch_size,
            )
            results[f"attack_{name}_accuracy"] = (logits.argmax(-1) == self.labels).float().mean().item()
        return results

    def curves(self, results: dict[str, float]) -> dict[str, tuple[list[float], list[float]]]:
        """Accuracy against strength per corruption family, starting from the clean accuracy at strength 0."""
        clean = results["attack_clean_accuracy"]
        return {
            family: ([0.0, *values], [clean, *(results[f"attack_{family}_{v:g}_accuracy"] for v in values)])
            for family, values in self.strengths.items()
        }


class AttackEvalCallback(TrainerCallback):
    """At every evaluation, adds the `AttackSuite` accuracies as `eval_attack_<condition>_accuracy`.

    They go into the metrics the evaluation returns (so `metric_for_best_model` and early stopping can use them) and
    into the evaluation's own `log_history` entry, next to `eval_accuracy`. The regular evaluation is left alone:
    the callback runs after it and changes no `TrainerControl` flag.

    `prepare_model` maps the model being trained to the keyed model to attack (in fold mode: fold a copy).
    """

    def __init__(self, suite: AttackSuite, prepare_model: Callable[[PreTrainedModel], PreTrainedModel] | None = None):
        self.suite = suite
        self.prepare_model = prepare_model or (lambda model: model)
        self.history: list[dict[str, float]] = []

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: PreTrainedModel | None = None,
        metrics: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if model is None or metrics is None or "eval_runtime" not in metrics:
            return  # not an evaluation on the validation set (e.g. a `test_` prefixed one)
        results = {f"eval_{name}": value for name, value in self.suite.run(self.prepare_model(model)).items()}
        metrics.update(results)
        entry = next((e for e in reversed(state.log_history) if e.get("eval_runtime") == metrics["eval_runtime"]), None)
        if entry is not None:
            entry.update(results)
        self.history.append({"step": state.global_step, "epoch": state.epoch, **results})
        if state.is_world_process_zero:
            summary = ", ".join(
                f"{k.removeprefix('eval_attack_').removesuffix('_accuracy')} {v:.3f}" for k, v in results.items()
            )
            logger.info("Attack accuracies at step %d: %s", state.global_step, summary)


def write_attack_report(
    suite: AttackSuite,
    results: dict[str, float],
    directory: str | os.PathLike,
    model_name: str = "keyed model",
    history: list[dict[str, float]] | None = None,
) -> dict[str, Path]:
    """Write `attack_report.md`, `attack_report.json` and one `robustness_<family>.png` per corruption family;
    returns their paths by file stem (`attack_report`, `attack_report_json`, `robustness_noise`...)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    curves = suite.curves(results)
    accuracy = {k.removeprefix("attack_").removesuffix("_accuracy"): v for k, v in results.items()}
    majority = suite.labels.bincount().max().item() / len(suite.labels)  # what always guessing the commonest scores
    key_holder = None
    if suite.cipher is None:
        command = KEY_HOLDER_COMMAND.format(model=directory.as_posix())
        key_holder = {"command": command, "conditions": KEY_HOLDER_CONDITIONS}
    report = {
        "split": suite.split,
        "num_images": len(suite.labels),
        "key_id": suite.key_id,
        "wrong_key_id": suite.wrong_cipher and suite.wrong_cipher.key_id,
        "cipher": suite.description,
        "accuracy": accuracy,
        "majority_class_accuracy": majority,
        "curves": {family: {"strength": xs, "accuracy": ys} for family, (xs, ys) in curves.items()},
        "history": history or [],
        "for_the_key_holder": key_holder,
    }
    paths = {"attack_report": directory / "attack_report.md", "attack_report_json": directory / "attack_report.json"}
    paths["attack_report_json"].write_text(json.dumps(report, indent=2) + "\n")
    names = {"wrong_key": "wrong key", "plain": "plain (unencrypted) input"}
    references = {title: accuracy[name] for name, title in names.items() if name in accuracy}
    for family, (xs, ys) in curves.items():
        title, xlabel = FAMILIES[family].title, FAMILIES[family].xlabel
        series = {f"{model_name}, key": (xs, ys), **{name: (xs, [v] * len(xs)) for name, v in references.items()}}
        paths[f"robustness_{family}"] = plot_curves(
            series, xlabel, "accuracy", title, directory / f"robustness_{family}.png"
        )
    rows = "\n".join(f"| `{name}` | {value:.4f} |" for name, value in accuracy.items())
    pending = ""
    if key_holder is not None:
        listed = "".join(f"- `{name}`: {why}\n" for name, why in KEY_HOLDER_CONDITIONS.items())
        pending = (
            "## For the key holder\n\nThis model was trained on ciphertexts without the key, so these checks were not "
            f"run; the key holder runs them on the plain images of the same split:\n\n{listed}\n"
            f"```bash\n{key_holder['command']}\n```\n\n"
        )
    paths["attack_report"].write_text(
        f"# Attack report\n\nAccuracy of the {model_name} (key id `{suite.key_id}`) on {len(suite.labels)} "
        f"{suite.split} images.\n\n"
        "- `clean`: encrypted with the right key; `wrong_key`: encrypted with another key; `plain`: not encrypted.\n"
        "- `noise_<sigma>`, `bitflip_<p>`, `msb_<p>`: the encrypted images corrupted by Gaussian noise, by flipping "
        "each bit with probability p, or by flipping the most significant bit of a fraction p of the values.\n\n"
        f"| condition | accuracy |\n|---|---|\n{rows}\n\n"
        f"Always predicting the most common class would score {majority:.4f}.\n\n"
        + pending
        + "".join(f"![{FAMILIES[f].title}](robustness_{f}.png)\n" for f in curves)
    )
    return paths
