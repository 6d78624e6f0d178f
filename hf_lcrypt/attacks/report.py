"""The attack report behind `hf-lcrypt attack`: run any subset of the attack suite on one image sample and write
`attack_report.json` (an `AttackReport`), `attack_report.md` (one Markdown table) and PNG figures.

Model attacks need a keyed model and its key; the cipher attacks (`jigsaw`, `known-plaintext`, `metrics`) need only
the key and a geometry. The strengths are fixed here, so that reports of different models compare.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForImageClassification
from transformers.image_processing_base import ImageProcessingMixin

from ..cipher import ALL_STEPS, BLOCK_SCRAMBLE, BlockCipher
from ..image_datasets import load_image_dataset
from ..image_processing_lcrypt import LCryptImageProcessor
from ..keys import LCryptKey
from ..modeling_lcrypt import LCryptViTForImageClassification
from . import ATTACK_NAMES, CIPHER_ATTACKS
from .cipher_attacks import (
    adjacent_correlation,
    differential_attack,
    flip_mask_from_ciphertext,
    histogram_entropy,
    jigsaw_attack,
    key_sensitivity,
    key_space_log10,
    known_plaintext_experiment,
    progress,
    repeated_blocks,
)
from .corruptions import FAMILIES
from .model_attacks import (
    Target,
    access_control,
    adversarial_accuracy,
    bit_flip_search,
    finetuning_defence,
    random_bit_flips,
    recover_key_from_weights,
    weight_recovery_experiment,
)
from .plots import plot_curves, plot_image_grid
from .record import AttackReport
from .suite import AttackSuite, load_plain_images

EPSILONS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)
PGD_STEPS = 10
FLIP_COUNTS = (0, 10, 100, 1000, 10000)
FLIP_TRIALS = 3
SEARCH_FLIPS = 20
SEARCH_BATCH = 64
FINETUNE_STEPS = (0, 10, 50, 100, 200, 400)
FINETUNE_LR = 1e-3
WRONG_KEYS = 5
CIPHER_IMAGES = 8  # images for the slower cipher attacks (jigsaw, key sensitivity) and for image grids
KNOWN_PAIRS = 10


@dataclass
class Sample:
    """What every attack works on: plain uint8 images (N,C,H,W), their labels, the key holder's cipher, and the keyed
    and plain targets (None for a cipher-only report)."""

    images: torch.Tensor
    labels: torch.Tensor | None
    cipher: BlockCipher
    keyed: Target | None = None
    plain: Target | None = None
    out: Path = Path(".")
    batch_size: int = 64
    seed: int = 0
    plain_is_unfolded: bool = False  # the plain target is the keyed model unfolded with the key, not another model

    @property
    def hwc(self) -> np.ndarray:
        """The images as numpy (N,H,W,C), the layout of the cipher attacks."""
        return self.images.permute(0, 2, 3, 1).numpy()

    def targets(self) -> dict[str, Target]:
        """The keyed model and the plain one: weight attacks compare the two."""
        return {"keyed": self.keyed, "plain": self.plain}


@dataclass
class Outcome:
    """One attack's numbers (for attack_report.json), table rows (measurement, value) and figures."""

    data: dict[str, Any]
    rows: list[tuple[str, str]] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def _rows(prefix: str, values: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f"{prefix}{name}", f"{value:.4g}" if isinstance(value, float) else str(value))
        for name, value in values.items()
    ]


# -- model attacks ------------------------------------------------------------------------------------------------
def _corruption(family: str) -> Callable[[Sample], Outcome]:
    def run(s: Sample) -> Outcome:
        strengths = {family: FAMILIES[family].strengths}
        suite = AttackSuite(
            s.images, s.labels, s.cipher, s.keyed.image_mean, s.keyed.image_std, strengths, s.batch_size
        )
        xs, ys = suite.curves(suite.run(s.keyed.model))[family]
        title, xlabel = FAMILIES[family].title, FAMILIES[family].xlabel
        series = {"keyed model, encrypted inputs": (xs, ys)}
        figure = plot_curves(series, xlabel, "accuracy", title, s.out / f"{family}.png")
        rows = [(f"strength {x:g}", f"{y:.4f}") for x, y in zip(xs, ys, strict=True)]
        return Outcome({"strength": xs, "accuracy": ys}, rows, [figure])

    return run


def _epsilon_curves(s: Sample, name: str, title: str, series: dict[str, list[float]]) -> Outcome:
    xs = [e * 255 for e in EPSILONS]
    curves = {label: (xs, ys) for label, ys in series.items()}
    figure = plot_curves(curves, "L-inf epsilon (x/255 of the pixel range)", "accuracy", title, s.out / f"{name}.png")
    rows = [
        (f"{label}, eps {x:g}/255", f"{y:.4f}") for label, ys in series.items() for x, y in zip(xs, ys, strict=True)
    ]
    return Outcome({"epsilon": list(EPSILONS), "accuracy": series}, rows, [figure])


def _white_box(name: str, steps: int) -> Callable[[Sample], Outcome]:
    def run(s: Sample) -> Outcome:
        series = {
            "keyed model, encrypted inputs": adversarial_accuracy(
                s.keyed, s.images, s.labels, EPSILONS, steps, batch_size=s.batch_size
            ),
            "plain model, plain inputs": adversarial_accuracy(
                s.plain, s.images, s.labels, EPSILONS, steps, batch_size=s.batch_size
            ),
        }
        return _epsilon_curves(s, name, f"{name.upper()} white-box ({steps} step(s))", series)

    return run


def _transfer(s: Sample) -> Outcome:
    series = {
        f"{label} crafted on the plain model": adversarial_accuracy(
            s.plain, s.images, s.labels, EPSILONS, steps, evaluate=s.keyed, batch_size=s.batch_size
        )
        for label, steps in (("FGSM", 1), (f"PGD-{PGD_STEPS}", PGD_STEPS))
    }
    return _epsilon_curves(s, "transfer", "Plain adversarial images, encrypted, into the keyed model", series)


def _weights_random(s: Sample) -> Outcome:
    data = {
        name: random_bit_flips(t, s.images, s.labels, FLIP_COUNTS, FLIP_TRIALS, s.seed, s.batch_size)
        for name, t in s.targets().items()
    }
    figure = plot_curves(
        {f"{name} model": (r["flips"], r["accuracy"]) for name, r in data.items()},
        "bit flips drawn uniformly over all int8 weight bits",
        "accuracy",
        f"Random weight bit flips (mean of {FLIP_TRIALS} draws)",
        s.out / "weights-random.png",
        xscale="symlog",
    )
    rows = [
        (f"{name} model, {x} flips", f"{y:.4f} ± {sd:.4f}")
        for name, r in data.items()
        for x, y, sd in zip(r["flips"], r["accuracy"], r["accuracy_std"], strict=True)
    ]
    return Outcome(data, rows, [figure])


def _weights_search(s: Sample) -> Outcome:
    n = min(SEARCH_BATCH, len(s.labels) // 2)
    data = {
        name: bit_flip_search(
            t, s.images[:n], s.labels[:n], s.images[n:], s.labels[n:], SEARCH_FLIPS, batch_size=s.batch_size
        )
        for name, t in s.targets().items()
    }
    figure = plot_curves(
        {f"{name} model": (r["flips"], r["accuracy"]) for name, r in data.items()},
        "bit flips chosen by the search",
        "accuracy",
        f"Progressive bit search (attack batch {n}, accuracy on {len(s.labels) - n} other images)",
        s.out / "weights-search.png",
    )
    shown = {0, 1, 2, 5, 10, SEARCH_FLIPS}
    rows = [
        (f"{name} model, {x} flips", f"{y:.4f}")
        for name, r in data.items()
        for x, y in zip(r["flips"], r["accuracy"], strict=True)
        if x in shown
    ]
    return Outcome(data, rows, [figure])


def _weights_recovery(s: Sample) -> Outcome:
    keyed, plain = s.keyed.model, s.plain.model
    fresh = weight_recovery_experiment(keyed, plain, s.cipher, s.hwc)
    shown = s.hwc[:CIPHER_IMAGES]
    encrypted = s.cipher.encrypt(shown)
    decrypted = recover_key_from_weights(keyed, plain).transform(s.cipher).decrypt(encrypted)
    grid = plot_image_grid(
        {"plain": list(shown), "encrypted": list(encrypted), "decrypted, key from weights": list(decrypted)},
        s.out / "weights-recovery.png",
        title="Key transform read off the keyed weights and the plain checkpoint",
    )
    tuned = finetuning_defence(keyed, plain, s.cipher.key, s.images, s.labels, FINETUNE_STEPS, FINETUNE_LR, seed=s.seed)
    curves = plot_curves(
        {
            name: (tuned["steps"], tuned[name])
            for name in ("positions_correct", "decrypted_ssim", "patch_weight_change")
        },
        f"AdamW steps (lr {FINETUNE_LR:g}) on encrypted images after folding",
        "share / SSIM / relative change",
        "Key recovery from weights after fine-tuning",
        s.out / "weights-recovery-finetuning.png",
    )
    rows = _rows("fresh fold, ", fresh) + [
        (f"after {n} fine-tuning steps: positions right / SSIM", f"{p:.4f} / {q:.4f}")
        for n, p, q in zip(tuned["steps"], tuned["positions_correct"], tuned["decrypted_ssim"], strict=True)
    ]
    return Outcome({"fresh_fold": fresh, "fine_tuning": tuned}, rows, [grid, curves])


def _weights_only(adaptive: bool) -> Callable[[Sample], Outcome]:
    """The key guessed from the keyed weights alone (no image, not the checkpoint they came from), scored against the
    key; the sample's ciphertexts decrypted with the guess. A plain model given with --plain-model serves as the
    attacker's reference for the jigsaws and as the recogniser. `adaptive`: the attacker who knows the key-hiding
    initialisation, with the stronger searches. Also writes weights_only_attack.json for the card."""

    def attack(s: Sample) -> Outcome:
        from .weights_only import weights_only_experiment

        reference = None if s.plain_is_unfolded else s.plain.model
        data, decrypted = weights_only_experiment(
            s.keyed.model, s.cipher, s.hwc, s.labels, s.plain, s.batch_size, reference, adaptive
        )
        data["reference_model"] = reference is not None
        shown = s.hwc[:CIPHER_IMAGES]
        name = "weights-only-adaptive" if adaptive else "weights-only"
        grid = plot_image_grid(
            {
                "plain": list(shown),
                "encrypted": list(s.cipher.encrypt(shown)),
                "decrypted, key from\nthe weights alone": list(decrypted[:CIPHER_IMAGES]),
            },
            s.out / f"{name}.png",
            title="Key transform guessed from the keyed weights alone (aligned modulo its symmetries)"
            + (", adaptive attacker" if adaptive else ""),
        )
        (s.out / "weights_only_attack.json").write_text(json.dumps(data, indent=2) + "\n")
        return Outcome(data, _rows("", data), [grid])

    return attack


def _access(s: Sample) -> Outcome:
    data = access_control(s.keyed, s.images, s.labels, WRONG_KEYS, s.seed, s.batch_size)
    shown = {k: v for k, v in data.items() if k != "wrong_keys"}
    return Outcome(data, _rows("", shown) + [("wrong keys", ", ".join(f"{v:.4f}" for v in data["wrong_keys"]))])


# -- cipher attacks ----------------------------------------------------------------------------------------------
def _blocks_only(cipher: BlockCipher) -> BlockCipher:
    return BlockCipher(cipher.key, (cipher.height, cipher.width), cipher.block_size, cipher.channels, [BLOCK_SCRAMBLE])


def _jigsaw(s: Sample) -> Outcome:
    images = s.hwc[:CIPHER_IMAGES]
    steps = "all steps" if s.cipher.steps == ALL_STEPS else "+".join(s.cipher.steps)
    runs = {
        ("blocks only", "mgc"): _blocks_only(s.cipher),
        ("blocks only", "prediction"): _blocks_only(s.cipher),
        (steps, "mgc"): s.cipher,
    }
    reports = {
        run: [jigsaw_attack(cipher, img, run[1]) for img in images] for run, cipher in progress(runs.items(), "jigsaw")
    }
    data = {
        f"{which}, {method}": {
            name: float(np.mean([r.scores()[name] for r in found])) for name in ("direct_comparison", "ssim")
        }
        for (which, method), found in reports.items()
    }
    rows = [(f"{name}: direct / SSIM", f"{v['direct_comparison']:.4f} / {v['ssim']:.4f}") for name, v in data.items()]
    shown = 4
    grid = {"plain": list(images[:shown])}
    for (which, method), found in reports.items():
        if method == "mgc":
            grid[f"encrypted\n{which}"] = list(runs[(which, method)].encrypt(images[:shown]))
            grid[f"jigsaw\n{which}"] = [r.reconstruction for r in found[:shown]]
    figure = plot_image_grid(grid, s.out / "jigsaw.png", title="Ciphertext-only jigsaw solver (MGC edge costs)")
    return Outcome({"num_images": len(images), **data}, rows, [figure])


def _known_plaintext(s: Sample) -> Outcome:
    k = min(KNOWN_PAIRS, len(s.images) // 2)
    known, unseen = s.hwc[:k], s.hwc[k : 2 * k]
    data = {
        name: known_plaintext_experiment(s.cipher, known, unseen, structured)
        for name, structured in (("structured", True), ("generic", False))
    }
    rows = [row for name, result in data.items() for row in _rows(f"{name} attack, ", result)]
    return Outcome({"known_pairs": k, "unseen_images": len(unseen), **data}, rows)


def _metrics(s: Sample) -> Outcome:
    plain, encrypted = s.hwc, s.cipher.encrypt(s.hwc)
    few = plain[:CIPHER_IMAGES]
    mask = flip_mask_from_ciphertext(encrypted, s.cipher.block_size)
    match = float((mask == s.cipher.flip_mask).mean())
    data = {
        "entropy_plain": float(np.mean([histogram_entropy(v)["overall"] for v in plain])),
        "entropy_encrypted": float(np.mean([histogram_entropy(v)["overall"] for v in encrypted])),
        **{
            f"correlation_{d}_{name}": float(np.mean([adjacent_correlation(v, d) for v in images]))
            for d in ("horizontal", "vertical", "diagonal")
            for name, images in (("plain", plain), ("encrypted", encrypted))
        },
        **{
            f"differential_{m}": float(np.mean([differential_attack(s.cipher, v)[m] for v in few]))
            for m in ("npcr", "uaci")
        },
        **{
            f"key_sensitivity_{m}": float(
                np.mean(
                    [
                        key_sensitivity(s.cipher.key, s.cipher.describe(), v, bit=37 * i % 256)[m]
                        for i, v in enumerate(few)
                    ]
                )
            )
            for m in ("npcr", "uaci")
        },
        **{
            f"key_space_{k}": v
            for k, v in key_space_log10(
                (s.cipher.height, s.cipher.width), s.cipher.block_size, s.cipher.channels, s.cipher.steps
            ).items()
        },
        "repeated_blocks": float(np.mean([repeated_blocks(v, s.cipher.block_size) for v in encrypted])),
        "flip_mask_from_ciphertext": match,
        "flip_mask_up_to_complement": max(match, 1 - match),
    }
    return Outcome({"num_images": len(plain), "few_images": len(few), **data}, _rows("", data))


_RUNNERS: dict[str, Callable[[Sample], Outcome]] = {
    **{family: _corruption(family) for family in FAMILIES},
    "fgsm": _white_box("fgsm", 1),
    "pgd": _white_box("pgd", PGD_STEPS),
    "transfer": _transfer,
    "weights-random": _weights_random,
    "weights-search": _weights_search,
    "weights-recovery": _weights_recovery,
    "weights-only": _weights_only(adaptive=False),
    "weights-only-adaptive": _weights_only(adaptive=True),
    "access": _access,
    "jigsaw": _jigsaw,
    "known-plaintext": _known_plaintext,
    "metrics": _metrics,
}
ATTACKS = {name: _RUNNERS[name] for name in ATTACK_NAMES}  # the catalogue's order; a name without a runner fails here


# -- loading and writing ------------------------------------------------------------------------------------------
def load_sample(
    data: str | os.PathLike,
    key: LCryptKey,
    model_dir: str | os.PathLike | None = None,
    plain_dir: str | os.PathLike | None = None,
    image_size: tuple[int, int] | None = None,
    block_size: int | None = None,
    steps: Sequence[str] = ALL_STEPS,
    split: str = "test",
    max_images: int | None = 128,
    seed: int = 0,
) -> tuple[Sample, dict[str, Any]]:
    """Images of one split of `data` (resized as the model's processor resizes them), the keyed model and a plain
    model: `plain_dir`, or else the keyed model unfolded with the key (the checkpoint it is equivalent to). Without
    a model, the cipher's geometry is `image_size` and `block_size`. Returns the sample and what it was made from."""
    keyed = plain = None
    if model_dir is not None:
        model = LCryptViTForImageClassification.from_pretrained(model_dir).eval()
        processor = LCryptImageProcessor.for_model(model, key=key)
        keyed = Target.keyed(model, key)
    elif image_size is None or block_size is None:
        raise ValueError("Without a model, give the cipher's geometry: image_size and block_size.")
    else:
        processor = LCryptImageProcessor(
            image_size=image_size, block_size=block_size, cipher_steps=list(steps), key=key
        )
    dataset = load_image_dataset(data, seed=seed)
    if split not in dataset:
        raise ValueError(f"{data} has no split {split!r}; it has {list(dataset)}.")
    images, labels = load_plain_images(dataset[split], processor, max_images, seed)
    height, width = images.shape[-2:]
    cipher = keyed.cipher if keyed is not None else processor.cipher(height, width, images.shape[1])
    if keyed is not None:
        labels = _model_labels(labels, dataset[split].features["label"].names, keyed.model.config.label2id)
        if plain_dir is not None:
            plain_model = AutoModelForImageClassification.from_pretrained(plain_dir).eval()  # ViT or MLP-patch ViT
            try:
                settings, _ = ImageProcessingMixin.get_image_processor_dict(plain_dir)
                mean, std = settings["image_mean"], settings["image_std"]
            except (OSError, KeyError):
                mean, std = keyed.image_mean, keyed.image_std
            plain = Target(plain_model, mean, std)
        else:
            plain = Target(keyed.model.to_plain(key).eval(), keyed.image_mean, keyed.image_std)
    sources = {
        "data": str(data),
        "split": split,
        "num_images": len(images),
        "model": None if model_dir is None else str(model_dir),
        "plain_model": str(plain_dir) if plain_dir else ("keyed model unfolded with the key" if keyed else None),
        "key_id": key.key_id,
        "cipher": cipher.describe(),
        "seed": seed,
    }
    unfolded = keyed is not None and plain_dir is None
    return Sample(images, labels, cipher, keyed, plain, seed=seed, plain_is_unfolded=unfolded), sources


def _model_labels(labels: torch.Tensor, names: Sequence[str], label2id: dict[str, int]) -> torch.Tensor:
    """Dataset label ids as the model numbers the classes (by name, when the model knows every name)."""
    if not set(names) <= set(label2id):
        return labels
    return torch.as_tensor([label2id[name] for name in names])[labels]


def run_report(
    sample: Sample, attacks: Sequence[str], out: str | os.PathLike, sources: dict[str, Any], command: str = ""
) -> dict[str, Path]:
    """Run `attacks` in order on `sample` and write attack_report.json, attack_report.md and the figures into `out`."""
    unknown = [name for name in attacks if name not in ATTACKS]
    if unknown:
        raise ValueError(f"Unknown attack(s) {unknown}; choose from {list(ATTACKS)}.")
    model_attacks = [name for name in attacks if name not in CIPHER_ATTACKS]
    if model_attacks and sample.keyed is None:
        raise ValueError(f"The attacks {model_attacks} need a keyed model (--model).")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sample.out = out
    results: dict[str, dict[str, Any]] = {}
    rows: list[tuple[str, str, str]] = []
    figures: list[Path] = []
    for name in progress(attacks, "attacks"):
        start = time.perf_counter()
        outcome = ATTACKS[name](sample)
        results[name] = {"seconds": time.perf_counter() - start, **outcome.data}
        rows += [(name, measurement, value) for measurement, value in outcome.rows]
        figures += outcome.figures
    report = AttackReport(
        key_id=sources["key_id"],
        cipher=sources["cipher"],
        split=sources["split"],
        num_images=sources["num_images"],
        attacks=results,
        sources={"command": command, **sources},
        **_accuracies(results),
    )
    paths = {"json": report.write(out), "md": out / "attack_report.md"}
    header = "\n".join(f"- {k}: `{v}`" for k, v in report.sources.items() if v not in (None, ""))
    table = "\n".join(f"| {a} | {m} | {v} |" for a, m, v in rows)
    timing = ", ".join(f"{name} {r['seconds']:.1f} s" for name, r in results.items())
    paths["md"].write_text(
        f"# hf-lcrypt attack report\n\n{header}\n- seconds: {timing}\n\n| attack | measurement | value |\n"
        f"|---|---|---|\n{table}\n\n" + "".join(f"![{p.stem}]({p.name})\n" for p in figures)
    )
    return paths | {p.stem: p for p in figures}


def _accuracies(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The report's accuracy table and curves, from the corruption and access-control results."""
    accuracy: dict[str, float] = {}
    curves = {}
    for family in FAMILIES:
        if family in results:
            xs, ys = results[family]["strength"], results[family]["accuracy"]
            curves[family] = {"strength": xs, "accuracy": ys}
            accuracy["clean"] = ys[0]
            accuracy.update({f"{family}_{x:g}": y for x, y in zip(xs[1:], ys[1:], strict=True)})
    majority = None
    if "access" in results:
        access = results["access"]
        accuracy.update(clean=access["right_key"], wrong_key=access["wrong_key_mean"], plain=access["plain_images"])
        majority = access["majority_class"]
    return {"accuracy": accuracy, "curves": curves, "majority_class_accuracy": majority}
