"""The settings of a training run, parsed the Hugging Face way.

`HfArgumentParser` reads five small dataclasses of hf-lcrypt's own settings (model, data, cipher, distillation,
attack evaluation) and `LCryptTrainingArguments`, which is `transformers.TrainingArguments` with a few defaults of
this project and two settings of its own. Every `TrainingArguments` flag works and means what it means in
`transformers`; both spellings (`--output_dir`, `--output-dir`) work. A YAML or JSON file sets any of them by name,
and flags given with it override it:

    python scripts/train.py configs/default.yaml --max_steps 100
"""

# No `from __future__ import annotations`: HfArgumentParser reads the field types at run time.
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from transformers import HfArgumentParser, TrainingArguments

from ..cipher import ALL_STEPS
from .distillation import DISTILLATION_TYPES
from .presets import MODEL_PRESETS, PATCH_EMBEDDINGS

# The key-hiding initialisation of the key-bearing embeddings: measured in docs/security.md (M3, M5 and the
# default rows), where it takes the flips and the pixel layout the weights give away down to chance.
SAFE_EMBEDDING_INIT_SCALE = 10.0
# Their weight decay by default: none, so the secret initialisation keeps its scale over long schedules (AdamW's
# decoupled decay of 0.05 under the brain MRI recipe would leave 0.6 of it); timm exempts position embeddings too.
SAFE_EMBEDDING_WEIGHT_DECAY = 0.0

Mode = Literal["encrypted", "fold", "plain"]
MODES: tuple[str, ...] = Mode.__args__


def _check_choice(flag: str, value: Any, choices: Sequence[str]) -> None:
    """argparse checks choices on the command line; this checks them for settings given as Python values too."""
    if value not in choices:
        raise ValueError(f"--{flag} must be one of {list(choices)}, got {value!r}.")


@dataclass
class ModelArguments:
    """The model to train: a preset from scratch, or a plain checkpoint."""

    _argument_group_name = "model"

    model: str = field(
        default="micro",
        metadata={
            "help": "preset trained from scratch: "
            + "; ".join(f"{name}: {preset.description}" for name, preset in MODEL_PRESETS.items())
        },
    )
    from_plain: str | None = field(
        default=None,
        metadata={"help": "plain ViTForImageClassification (Hub id or folder) to start from instead of a preset"},
    )
    patch_embedding: Literal["linear", "mlp"] = field(
        default="linear",
        metadata={"help": "linear: the ViT's; mlp: a two-layer MLP on each patch, which the key folds into too"},
    )
    dropout: float = field(
        default=0.0, metadata={"help": "dropout of preset ViTs (keep 0 for encrypted training to track plain)"}
    )
    patch_dropout: float = field(
        default=0.0,
        metadata={
            "help": "while training, drop this share of the patch tokens (the CLS token stays), as timm's "
            "PatchDropout does; a mitigation of the weights-only key attack, docs/security.md"
        },
    )
    embedding_weight_decay: float | None = field(
        default=None,
        metadata={
            "help": f"weight decay of the patch-embedding weights and the position embeddings (default "
            f"{SAFE_EMBEDDING_WEIGHT_DECAY:g} for ViT presets, so that their secret initialisation keeps its scale; "
            "--weight_decay otherwise)"
        },
    )
    embedding_init_scale: float | None = field(
        default=None,
        metadata={
            "help": f"multiply the preset's initial patch-embedding weights and position embeddings by this, so that "
            f"the secret initialisation hides the key in the trained weights (default {SAFE_EMBEDDING_INIT_SCALE:g} "
            "for ViT presets; 1 gives the plain preset's initialisation, which lets the weights give the key's "
            "flips away, docs/security.md); not with --from_plain"
        },
    )
    position_init_scale: float | None = field(
        default=None,
        metadata={"help": "the same for the position embeddings alone (default: --embedding_init_scale)"},
    )
    freeze_position_embeddings: bool = field(
        default=False,
        metadata={
            "help": "keep the position embeddings at their secret initialisation (the fold stays exact); a "
            "measured choice against the weights-only block-layout attack, docs/security.md"
        },
    )

    def __post_init__(self) -> None:
        _check_choice("patch_embedding", self.patch_embedding, PATCH_EMBEDDINGS)
        if self.from_plain is None and self.model not in MODEL_PRESETS:
            raise ValueError(f"Unknown model preset {self.model!r}; choose from {sorted(MODEL_PRESETS)}.")
        vit = self.from_plain is not None or MODEL_PRESETS[self.model].foldable
        if not 0.0 <= self.patch_dropout < 1.0:
            raise ValueError(f"--patch_dropout is a share of tokens to drop, in [0, 1), got {self.patch_dropout}.")
        for flag, scale in (
            ("embedding_init_scale", self.embedding_init_scale),
            ("position_init_scale", self.position_init_scale),
        ):
            if scale is not None and scale <= 0:
                raise ValueError(f"--{flag} must be positive, got {scale}.")
        if self.embedding_weight_decay is not None and self.embedding_weight_decay < 0:
            raise ValueError(f"--embedding_weight_decay must be >= 0, got {self.embedding_weight_decay}.")
        embedding_flags = {
            "--patch_dropout": self.patch_dropout != 0.0,
            "--embedding_weight_decay": self.embedding_weight_decay is not None,
            "--embedding_init_scale": self.embedding_init_scale not in (None, 1.0),
            "--position_init_scale": self.position_init_scale is not None,
            "--freeze_position_embeddings": self.freeze_position_embeddings,
        }
        if not vit and any(embedding_flags.values()):
            used = [flag for flag, given in embedding_flags.items() if given]
            raise ValueError(f"{', '.join(used)} act on a ViT's embeddings; {self.model!r} has none. Leave them out.")
        for flag in ("--embedding_init_scale", "--position_init_scale"):
            if self.from_plain is not None and embedding_flags[flag]:
                raise ValueError(f"{flag} scales a preset's fresh initialisation, not --from_plain weights.")
        fresh_vit = vit and self.from_plain is None  # safe by default where there is a secret initialisation to keep
        if self.embedding_init_scale is None:
            self.embedding_init_scale = SAFE_EMBEDDING_INIT_SCALE if fresh_vit else 1.0
        if self.position_init_scale is None:
            self.position_init_scale = self.embedding_init_scale
        if self.embedding_weight_decay is None and fresh_vit:
            self.embedding_weight_decay = SAFE_EMBEDDING_WEIGHT_DECAY
        if self.patch_embedding != "linear" and (self.from_plain is not None or not vit):
            raise ValueError(
                f"--patch_embedding {self.patch_embedding} applies to the ViT presets trained from scratch, not to "
                f"{self.from_plain or repr(self.model)}; leave it out or pick a ViT preset such as micro."
            )


@dataclass
class DataArguments:
    """The images: where they come from, how they are split, resized and augmented."""

    _argument_group_name = "data"

    data: str = field(
        default="default",
        metadata={"help": "image folder, MedMNIST .npz, Hub dataset id, or 'default' (the embedded BreastMNIST)"},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "side images are resized to (default: 32, or the --from_plain model's)"}
    )
    split_seed: int = field(
        default=0,
        metadata={"help": "seed of the train/validation/test split and of --max_per_class (not --seed)"},
    )
    max_per_class: int | None = field(
        default=None, metadata={"help": "keep at most this many images of each class in each split (quick runs)"}
    )
    augment: bool = field(
        default=True, metadata={"help": "random shifts and horizontal flips of the plain images, before encryption"}
    )
    augment_orientation: bool = field(
        default=False,
        metadata={"help": "also rotate by random multiples of 90 degrees (histology; not for MRI)"},
    )
    mixup: float = field(
        default=0.0, metadata={"help": "mixup's Beta(alpha, alpha) parameter, e.g. 0.2 (0: off); works on ciphertext"}
    )
    tta: bool = field(
        default=False,
        metadata={"help": "also report test metrics averaged over the orientations --augment draws from"},
    )
    block_cutmix: float = field(
        default=0.0,
        metadata={
            "help": "CutMix of whole blocks, on ciphertext: Beta(alpha, alpha) parameter of the share of blocks an "
            "image keeps, the rest taken from another image of the batch, labels mixed alike (0: off)"
        },
    )
    block_erasing: float = field(
        default=0.0,
        metadata={
            "help": "probability that an image gets 2-25 %% of its blocks set to mid-grey, on ciphertext (0: off)"
        },
    )
    contrast: float = field(
        default=0.0,
        metadata={"help": "contrast about mid-grey by a random factor in [1 - c, 1 + c], on ciphertext (0: off)"},
    )
    pixel_noise: float = field(
        default=0.0,
        metadata={"help": "Gaussian noise of this standard deviation (pixel values in [0, 1]), on ciphertext (0: off)"},
    )

    def __post_init__(self) -> None:
        for name in ("block_cutmix", "block_erasing", "contrast", "pixel_noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name} must be 0 (off) or positive, got {getattr(self, name)}.")
        if self.block_erasing > 1 or self.contrast >= 1:
            raise ValueError("--block_erasing is a probability (at most 1) and --contrast must stay below 1.")
        for flag, value in (("image_size", self.image_size), ("max_per_class", self.max_per_class)):
            if value is not None and value < 1:
                raise ValueError(f"--{flag} must be a positive integer, got {value}.")
        if self.tta and not self.augment:
            raise ValueError("--tta averages over the flips (and rotations) of --augment; it needs --augment.")


@dataclass
class CipherArguments:
    """The key and the cipher: what the model sees."""

    _argument_group_name = "cipher"

    mode: Mode = field(
        default="encrypted",
        metadata={
            "help": "encrypted: train on encrypted images; fold: train plain, then fold the key in; plain: the "
            "baseline without encryption (an identity cipher)"
        },
    )
    key_file: str | None = field(
        default=None,
        metadata={"help": "secret key file; created (mode 0600) if absent (default: <output_dir>.key)"},
    )
    block_size: int | None = field(
        default=None,
        metadata={"help": "cipher block side = ViT patch size (default: largest <= 16 leaving >= 7 blocks a side)"},
    )
    cipher_steps: list[str] = field(
        default_factory=lambda: list(ALL_STEPS), metadata={"help": "cipher steps to apply", "choices": ALL_STEPS}
    )

    def __post_init__(self) -> None:
        _check_choice("mode", self.mode, MODES)
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"--block_size must be a positive integer, got {self.block_size}.")
        if self.mode == "plain":
            self.cipher_steps = []
        unknown = sorted(set(self.cipher_steps) - set(ALL_STEPS))
        if unknown:
            raise ValueError(f"Unknown cipher step(s) {unknown}; choose from {list(ALL_STEPS)}.")


@dataclass
class DistillationArguments:
    """A teacher run by the key holder (docs/training.md, distillation)."""

    _argument_group_name = "distillation"

    teacher: str | None = field(
        default=None, metadata={"help": "`model` folder of a finished run whose predictions the model learns from"}
    )
    distillation: Literal["hard", "soft"] = field(
        default="hard", metadata={"help": "hard: the teacher's predicted class (DeiT); soft: its distribution"}
    )
    distill_alpha: float = field(default=0.5, metadata={"help": "weight of the teacher's term in the loss"})
    distill_temperature: float = field(default=1.0, metadata={"help": "temperature of soft distillation"})

    def __post_init__(self) -> None:
        _check_choice("distillation", self.distillation, DISTILLATION_TYPES)


@dataclass
class AttackArguments:
    """The attack evaluation after every evaluation and on the test split."""

    _argument_group_name = "attack evaluation"

    attack_max_images: int = field(default=256, metadata={"help": "images the attack evaluation uses per split"})
    attack_weights_only: bool = field(
        default=False,
        metadata={
            "help": "also guess the key from the final model's weights alone and score the guess (docs/security.md): "
            "weights_only_attack.json in the model folder, which its card quotes (seconds at 48 values a block, "
            "minutes at 768)"
        },
    )
    allow_leaky_weights: bool = field(
        default=False,
        metadata={
            "help": "with --push_to_hub: publish even if the final weights alone give the key's flips or pixel layout "
            "away above chance (hf-lcrypt publish's check, docs/security.md); the model card then says so"
        },
    )


def _default(name: str, value: Any) -> Any:
    """A new default for a `TrainingArguments` field, keeping transformers' help text."""
    original = TrainingArguments.__dataclass_fields__[name]
    metadata = dict(original.metadata)
    metadata["help"] = f"{metadata.get('help', '')} (transformers' default: {original.default})".strip()
    return field(default=value, metadata=metadata)


@dataclass
class LCryptTrainingArguments(TrainingArguments):
    """`TrainingArguments` with this project's defaults (a recipe for small ViTs from scratch: AdamW at 5e-4, cosine
    decay after 10 % warm-up, an evaluation and a checkpoint each epoch, the best one by accuracy kept and reloaded at
    the end, no tracker) and two settings the Trainer lacks. Every default can be overridden."""

    output_dir: str | None = _default("output_dir", "outputs/lcrypt-vit")
    per_device_train_batch_size: int = _default("per_device_train_batch_size", 32)
    num_train_epochs: float = _default("num_train_epochs", 30.0)
    learning_rate: float = _default("learning_rate", 5e-4)
    lr_scheduler_type: str = _default("lr_scheduler_type", "cosine")
    warmup_steps: float = _default("warmup_steps", 0.1)
    weight_decay: float = _default("weight_decay", 0.05)
    logging_steps: float = _default("logging_steps", 10)
    report_to: None | str | list[str] = _default("report_to", "none")
    eval_strategy: str = _default("eval_strategy", "epoch")
    per_device_eval_batch_size: int = _default("per_device_eval_batch_size", 32)
    save_strategy: str = _default("save_strategy", "epoch")
    save_total_limit: int | None = _default("save_total_limit", 2)
    load_best_model_at_end: bool = _default("load_best_model_at_end", True)
    metric_for_best_model: str | None = _default("metric_for_best_model", "accuracy")
    remove_unused_columns: bool = _default("remove_unused_columns", False)
    ddp_find_unused_parameters: bool | None = _default("ddp_find_unused_parameters", False)
    dataloader_pin_memory: bool = _default("dataloader_pin_memory", torch.cuda.is_available())  # no use on CPUs
    seed: int = _default("seed", 0)  # the seed of every recorded result (docs/results.md)

    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "stop after this many evaluations without improvement (default: off)"}
    )
    ema_decay: float | None = field(
        default=None,
        metadata={"help": "keep an exponential moving average of the weights (e.g. 0.999), the final model"},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "train again from scratch in an --output_dir that holds a run (its checkpoints are removed, its "
            "model folder replaced at the end); without it such a folder is refused unless --resume_from_checkpoint "
            "continues it (transformers 4's flag, which transformers 5 dropped)"
        },
    )

    def __post_init__(self) -> None:
        if self.remove_unused_columns:
            raise ValueError(
                "--remove_unused_columns must stay False: the encrypting transform reads the dataset's image column, "
                "which the model's forward does not name."
            )
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema_decay must lie strictly between 0 and 1 (e.g. 0.999), got {self.ema_decay}.")
        if self.bf16_full_eval or self.fp16_full_eval:
            flag = "--bf16_full_eval" if self.bf16_full_eval else "--fp16_full_eval"
            raise ValueError(
                f"{flag} casts the model's own weights to half precision when the test split is scored, which comes "
                "before the final model is saved; use --bf16 (or --fp16), under which evaluation runs in mixed "
                "precision and the weights stay in float32."
            )
        if not torch.cuda.is_available():
            # Several processes but no CUDA (`accelerate launch --multi_gpu` on CPUs): accelerate sets up data
            # parallelism over gloo only when told to use the CPU; otherwise every process would train alone.
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                self.use_cpu = True
            if self.bf16 and not self.use_cpu:
                raise ValueError(
                    "--bf16 needs a GPU with bfloat16 support, and this machine has no CUDA device. Add --use_cpu to "
                    "train in bfloat16 on the CPU (slow unless the CPU has bfloat16 instructions), or leave --bf16 out."
                )
        super().__post_init__()

    def for_trainer(self) -> "LCryptTrainingArguments":
        """These arguments as the Trainer gets them: without its own Hub uploads (of every checkpoint), which the run
        replaces by one checked upload of the final model folder (`hf_lcrypt.hub.publish.publish_model`)."""
        return replace(self, push_to_hub=False) if self.push_to_hub else self


ARGUMENT_CLASSES = (
    ModelArguments,
    DataArguments,
    CipherArguments,
    DistillationArguments,
    AttackArguments,
    LCryptTrainingArguments,
)


@dataclass
class RunArguments:
    """Every setting of one run, one dataclass per concern."""

    model: ModelArguments
    data: DataArguments
    cipher: CipherArguments
    distillation: DistillationArguments
    attack: AttackArguments
    training: LCryptTrainingArguments
    given: frozenset[str] = frozenset()  # the settings named by a flag or the config file, not left at their default

    @property
    def key_path(self) -> Path:
        """The key file; by default next to (not inside) the output folder, so that uploading the folder is safe."""
        if self.cipher.key_file:
            return Path(self.cipher.key_file)
        return Path(f"{str(self.training.output_dir).rstrip('/')}.key")

    def settings(self) -> dict[str, Any]:
        """hf-lcrypt's own settings by flag name, without local secrets' locations (metrics.json's `config`)."""
        parts = (self.model, self.data, self.cipher, self.distillation, self.attack)
        return {name: value for part in parts for name, value in asdict(part).items() if name != "key_file"}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "RunArguments":
        """Settings by flag name (e.g. from Python); the rest keep their defaults."""
        return cls(*build_parser().parse_dict(values), given=frozenset(values))


def build_parser() -> HfArgumentParser:
    parser = HfArgumentParser(
        ARGUMENT_CLASSES,
        usage="%(prog)s [CONFIG.yaml|CONFIG.json] [--flag VALUE ...]",
        description="Train and evaluate a keyed image classifier (hf-lcrypt); see docs/training.md. A CONFIG file "
        "sets any flag by name; flags given with it override it. Every transformers TrainingArguments flag works.",
    )
    parser.add_argument("--config", metavar="FILE", help="a YAML or JSON settings file (the same as a positional one)")
    return parser


def read_config_file(path: str | os.PathLike, parser: HfArgumentParser) -> dict[str, Any]:
    """The settings of a YAML or JSON file, by destination name (`batch-size` and `batch_size` alike), checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No config file {path}.")
    try:
        loaded = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
    except (yaml.YAMLError, json.JSONDecodeError) as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {problem}{where}."
        ) from None
    if not isinstance(loaded or {}, dict):
        raise ValueError(f"{path} must hold a mapping of settings, got {type(loaded).__name__}.")
    values = {str(name).replace("-", "_"): value for name, value in (loaded or {}).items()}
    actions = {action.dest: action for action in parser._actions}
    unknown = sorted(name for name in values if name not in actions)
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} in {path}; `--help` lists them.")
    for name, value in values.items():  # a single value where the flag takes several
        if actions[name].nargs == "+" and not isinstance(value, list):
            values[name] = [value]
    return values


def parse_args(argv: Sequence[str] | None = None) -> RunArguments:
    """Defaults, then a config file (first positional argument or `--config FILE`), then the flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    config_file = argv.pop(0) if argv and not argv[0].startswith("-") else None
    argv = [part for token in argv for part in (token.split("=", 1) if token.startswith("--config=") else [token])]
    if "--config" in argv:
        position = argv.index("--config")
        if config_file is not None or position + 1 >= len(argv):
            raise ValueError("Give one config file: as the first argument, or after --config.")
        config_file = argv[position + 1]
        del argv[position : position + 2]
    given = {token.split("=", 1)[0].lstrip("-").replace("-", "_") for token in argv if token.startswith("--")}
    given |= {name.removeprefix("no_") for name in given}
    if config_file is not None:
        values = read_config_file(config_file, parser)
        given |= set(values)
        parser.set_defaults(**values)
    parsed = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    return RunArguments(*parsed[: len(ARGUMENT_CLASSES)], given=frozenset(given))


__all__ = [
    "ARGUMENT_CLASSES",
    "MODES",
    "AttackArguments",
    "CipherArguments",
    "DataArguments",
    "DistillationArguments",
    "LCryptTrainingArguments",
    "ModelArguments",
    "RunArguments",
    "build_parser",
    "parse_args",
]
